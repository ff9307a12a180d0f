"""The etcd driver's digests: keys-only range reads of the scope, every page at the first
page's revision. etcd returns each key with its ``mod_revision`` and no value; the bucket
sums are made here (etcd has no server-side hash of a range)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from dfdb.drivers.digest import Digest, KeyListing, bucket_of, digest_of
from dfdb.drivers.etcd_watchers import _range_end
from dfdb.errors import BackendUnavailableError, DriverError

if TYPE_CHECKING:
    from dfdb.drivers.etcd import EtcdDriver

__all__ = ["digest", "digest_keys", "digest_keys_many", "digest_many"]

_Pairs = list[tuple[bytes, int]]

_PAGE = 10
"""A keys-only page holds this many times the driver's ``page`` keys."""


async def _ranges(driver: EtcdDriver, prefixes: Sequence[bytes], what: str) -> tuple[list[_Pairs], int, int, int]:
    """The keys under each of ``prefixes`` (each without its prefix) and their revisions, all
    read at one revision: that revision, the bytes received and the requests made."""
    for _ in range(5):
        found: list[_Pairs] = []
        revision = size = trips = 0
        try:
            for prefix in prefixes:
                pairs: _Pairs = []
                key, end = prefix, _range_end(prefix)
                while True:
                    reply = await driver._range(key, end, limit=driver.page * _PAGE, revision=revision, keys_only=True)
                    revision, trips, size = revision or int(reply.header.revision), trips + 1, size + reply.ByteSize()
                    pairs += [(bytes(kv.key)[len(prefix) :], int(kv.mod_revision)) for kv in reply.kvs]
                    if not reply.more or not reply.kvs:
                        break
                    key = bytes(reply.kvs[-1].key) + b"\x00"
                found.append(pairs)
        except DriverError as exc:
            if "compacted" not in str(exc):
                raise
            continue  # compacted between two pages: read again at a newer revision
        return found, revision, size, trips
    raise BackendUnavailableError(f"{driver.url}: the keys of {what} kept being compacted")


def _prefix(driver: EtcdDriver, table: str, topic: str | None) -> bytes:
    return driver._key("d", driver._location(topic), table) + b"/"


async def _keys(driver: EtcdDriver, table: str, topics: Collection[str | None] | None) -> tuple[KeyListing, int]:
    """Every id of the scope with its revision, read at one revision; and the keys read."""
    keys = (await digest_keys_many(driver, {table: topics}))[table]
    return keys, len(keys.revisions)


async def digest_keys_many(
    driver: EtcdDriver, scopes: Mapping[str, Collection[str | None] | None]
) -> dict[str, KeyListing]:
    """:meth:`Driver.digest_keys_many`: at one revision, one keys-only range per topic that
    several tables' scopes name, over that topic's keys of every table (``P/d/t/TOPIC/``,
    split by table here), and one per table for the rest (a whole table's index, its
    topic-less keys, a topic only it names). A relist of a few topics of many tables so
    makes a few requests instead of one per table and topic."""
    wanting: dict[str, list[str]] = {}
    for table, topics in scopes.items():
        for topic in topics or ():
            if topic is not None:
                wanting.setdefault(topic, []).append(table)
    shared = {topic: set(tables) for topic, tables in wanting.items() if len(tables) > 1}
    plan: list[tuple[bytes, str | None, set[str] | None]] = []  # prefix, its one table or the tables sharing it
    for topic, tables in sorted(shared.items()):
        plan.append((driver._topic_prefix(topic), None, tables))
    for table, topics in scopes.items():
        if topics is None:
            plan.append((driver._key("i", table) + b"/", table, None))
        else:
            plan += [(_prefix(driver, table, t), table, None) for t in topics if t is None or t not in shared]
    found, revision, size, trips = await _ranges(driver, [prefix for prefix, _, _ in plan], ",".join(scopes))
    revisions: dict[str, dict[str, int]] = {table: {} for table in scopes}
    for (_, one, sharing), pairs in zip(plan, found, strict=True):
        if one is not None:
            revisions[one].update((key.decode(errors="replace"), rev) for key, rev in pairs)
            continue
        for key, rev in pairs:  # "TABLE/ID" of every table of the topic: those asked for
            name, _, id = key.decode(errors="replace").partition("/")
            if sharing is not None and name in sharing:
                revisions[name][id] = rev
    listings = {table: KeyListing(ids, revision, round_trips=0) for table, ids in revisions.items()}
    if listings:  # the cost once, with the first table
        first = next(iter(listings))
        listings[first] = KeyListing(revisions[first], revision, bytes_read=size, round_trips=trips)
    return listings


async def digest_many(
    driver: EtcdDriver, buckets: Mapping[str, int], topics: Collection[str | None] | None
) -> dict[str, Digest]:
    """:meth:`Driver.digest_many` from the keys of every table read at once
    (:func:`digest_keys_many`)."""
    every = await digest_keys_many(driver, dict.fromkeys(buckets, topics))
    return {
        table: Digest(
            digest_of(keys.revisions.items(), buckets[table]), keys.revision, len(keys.revisions),
            bytes_read=keys.bytes_read, round_trips=keys.round_trips,
        )
        for table, keys in every.items()
    }  # fmt: skip


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
