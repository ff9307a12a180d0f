"""The ZooKeeper driver's digests, from what ZooKeeper allows: the children of the scope's
data shards, then a stat (``exists``: no data) of each data node for its ``mzxid``, sent
in batches. ZooKeeper has no server-side hash or keys-with-versions listing, so a digest
costs one request per object plus one per shard; it still reads no value. The reads are not
one snapshot: the digest's revision is the server's after the last one, and a check waits
for it before comparing."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection
from typing import TYPE_CHECKING

from aiozk import exc, protocol

from dfdb.drivers.digest import Digest, KeyListing, bucket_of, digest_of
from dfdb.drivers.zookeeper.layout import location

if TYPE_CHECKING:
    from dfdb.drivers.zookeeper.driver import ZooKeeperDriver

__all__ = ["digest", "digest_keys"]

_BATCH = 500
"""Stat requests in flight at once."""


async def _keys(
    driver: ZooKeeperDriver, table: str, topics: Collection[str | None] | None, buckets: int, wanted: set[int] | None
) -> tuple[KeyListing, int]:
    """The ids of the scope (in ``wanted`` buckets when given) with their revisions; and the
    keys read."""
    calls, layout = driver._calls, driver._layout
    locs = [location(t) for t in topics] if topics is not None else await driver._logs.locations(table)
    paths: list[tuple[str, str]] = []
    trips = 1
    for loc in locs:
        base = layout.data_scope(table, loc)
        shards = await calls.children(base)
        per_shard = await asyncio.gather(*(calls.children(f"{base}/{shard}") for shard in shards))
        trips += 1 + len(shards)
        paths += [
            (id, f"{base}/{shard}/{id}")
            for shard, ids in zip(shards, per_shard, strict=True)
            for id in ids
            if wanted is None or bucket_of(id, buckets) in wanted
        ]

    async def stat(path: str) -> int | None:
        try:
            _, reply = await calls.send(protocol.ExistsRequest(path=path, watch=False))
        except exc.NoNode:
            return None
        return int(reply.stat.last_modified_zxid)

    revisions: dict[str, int] = {}
    for start in range(0, len(paths), _BATCH):
        batch = paths[start : start + _BATCH]
        for (id, _), rev in zip(batch, await asyncio.gather(*(stat(p) for _, p in batch)), strict=True):
            if rev is not None:
                revisions[id] = rev
    trips += len(paths)
    revision = await calls.current_revision()
    size = sum(len(id) + 80 for id, _ in paths)  # a name in a children list, and a stat (68 bytes) and header
    return KeyListing(revisions, revision, bytes_read=size, round_trips=trips), len(paths)


async def digest(driver: ZooKeeperDriver, table: str, topics: Collection[str | None] | None, buckets: int) -> Digest:
    """:meth:`Driver.digest` from the data nodes' stats."""
    keys, count = await _keys(driver, table, topics, buckets, None)
    sums = digest_of(keys.revisions.items(), buckets)
    return Digest(sums, keys.revision, count, bytes_read=keys.bytes_read, round_trips=keys.round_trips)


async def digest_keys(
    driver: ZooKeeperDriver, table: str, topics: Collection[str | None] | None, buckets: int, wanted: Collection[int]
) -> KeyListing:
    """:meth:`Driver.digest_keys` from the stats of the data nodes in ``wanted`` buckets, at
    the server's zxid before the first read: a change made while they run may be missing from
    the keys, so they reflect every change up to that one only (a relist by keys takes it as
    its listing's position, and the changes after it from the stream)."""
    before = await driver._calls.current_revision()
    keys, _ = await _keys(driver, table, topics, buckets, set(wanted))
    return dataclasses.replace(keys, revision=before, round_trips=keys.round_trips + 1)
