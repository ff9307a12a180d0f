"""The etcd driver's digests: keys-only range reads of the scope, every page at the first
page's revision. etcd returns each key with its ``mod_revision`` and no value; the bucket
sums are made here (etcd has no server-side hash of a range)."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from dfdb.drivers.digest import Digest, KeyListing, bucket_of, digest_of
from dfdb.drivers.etcd_watchers import _range_end
from dfdb.errors import BackendUnavailableError, DriverError

if TYPE_CHECKING:
    from dfdb.drivers.etcd import EtcdDriver

__all__ = ["digest", "digest_keys"]

_PAGE = 10
"""A keys-only page holds this many times the driver's ``page`` keys."""


async def _keys(driver: EtcdDriver, table: str, topics: Collection[str | None] | None) -> tuple[KeyListing, int]:
    """Every id of the scope with its revision, read at one revision; and the keys read."""
    if topics is None:
        prefixes = [driver._key("i", table) + b"/"]
    else:
        prefixes = [driver._key("d", "n" if t is None else f"t/{t}", table) + b"/" for t in topics]
    for _ in range(5):
        revisions: dict[str, int] = {}
        revision = size = trips = 0
        try:
            for prefix in prefixes:
                key, end = prefix, _range_end(prefix)
                while True:
                    reply = await driver._range(key, end, limit=driver.page * _PAGE, revision=revision, keys_only=True)
                    revision, trips, size = revision or int(reply.header.revision), trips + 1, size + reply.ByteSize()
                    for kv in reply.kvs:
                        revisions[bytes(kv.key)[len(prefix) :].decode(errors="replace")] = int(kv.mod_revision)
                    if not reply.more or not reply.kvs:
                        break
                    key = bytes(reply.kvs[-1].key) + b"\x00"
        except DriverError as exc:
            if "compacted" not in str(exc):
                raise
            continue  # compacted between two pages: read again at a newer revision
        return KeyListing(revisions, revision, bytes_read=size, round_trips=trips), len(revisions)
    raise BackendUnavailableError(f"{driver.url}: the digest of {table} kept being compacted")


async def digest(driver: EtcdDriver, table: str, topics: Collection[str | None] | None, buckets: int) -> Digest:
    """:meth:`Driver.digest` from the scope's keys."""
    keys, count = await _keys(driver, table, topics)
    sums = digest_of(keys.revisions.items(), buckets)
    return Digest(sums, keys.revision, count, bytes_read=keys.bytes_read, round_trips=keys.round_trips)


async def digest_keys(
    driver: EtcdDriver, table: str, topics: Collection[str | None] | None, buckets: int, wanted: Collection[int]
) -> KeyListing:
    """:meth:`Driver.digest_keys` from the scope's keys."""
    keys, _ = await _keys(driver, table, topics)
    chosen = set(wanted)
    kept = {id: rev for id, rev in keys.revisions.items() if bucket_of(id, buckets) in chosen}
    return KeyListing(kept, keys.revision, bytes_read=keys.bytes_read, round_trips=keys.round_trips)
