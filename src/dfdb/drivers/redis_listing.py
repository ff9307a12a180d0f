"""Several listings of the Redis driver in one round trip.

A selective Replica lists each of its models for each of its topics: dozens of small
scopes, each of which :meth:`~dfdb.drivers.redis.RedisDriver.list` reads in two round
trips (the counter, then the listing script). :func:`list_many` reads the counter and the
first round of every scope in one pipeline; a scope larger than a round goes on alone.
Each listing is what :meth:`~dfdb.drivers.redis.RedisDriver.list` would return: the
counter is read before any scope, so a watch from it misses nothing.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from redis import exceptions as rexc

from dfdb.drivers import redis_scripts as lua
from dfdb.drivers.base import Entry, Listing
from dfdb.drivers.redis_streams import NO_EPOCH
from dfdb.drivers.redis_tls import CONNECTION_ERRORS
from dfdb.drivers.redis_tls import connection_error as _unavailable
from dfdb.errors import CorruptObjectError

if TYPE_CHECKING:
    from dfdb.drivers.redis import RedisDriver

__all__ = ["entries_of", "list_many"]

log = logging.getLogger("dfdb.drivers.redis")


async def list_many(
    driver: RedisDriver, scopes: Sequence[tuple[str, str | None]], batch: int
) -> builtins.list[Listing]:
    """The listings of ``scopes`` ((table, topic or ``None``) each), in their order."""
    script = driver._list_round
    if driver._plain_reads or script is None or len(scopes) < 2:  # scripts refused, or nothing to batch
        return [await driver.list(table, topic) for table, topic in scopes]
    client = driver._open_client()
    indexes = [driver._key("i", t) if p is None else driver._key("i", t, "t", p) for t, p in scopes]
    prefixes = [driver._key("e", table, "") for table, _ in scopes]
    try:
        pipe = client.pipeline(transaction=False)
        pipe.mget([driver._key("epoch"), driver._key("rev")])  # one atomic read, before every scope
        for index, prefix in zip(indexes, prefixes, strict=True):
            pipe.evalsha(script.sha, 1, index, 0, batch, prefix)
        replies = await pipe.execute(raise_on_error=False)
        if any(isinstance(reply, rexc.ResponseError) for reply in replies):
            # the script is not loaded yet (a restarted server), or a user may not run
            # scripts: the listings one by one, which load it or read without it
            return [await driver.list(table, topic) for table, topic in scopes]
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        raw_epoch, raw_rev = replies[0]
        revision = int(raw_rev or 0)
        if (raw_epoch.decode() if raw_epoch else NO_EPOCH) != driver.epoch:
            await driver._adopt_epoch(raw_epoch, read=False)
            if raw_epoch is None:
                revision = 0
        listings = []
        for (table, _), index, prefix, (cursor, packed) in zip(scopes, indexes, prefixes, replies[1:], strict=True):
            entries = entries_of(table, lua.unpack_round(packed))
            while cursor not in (b"0", 0):
                cursor, rows = await driver._listing_round(index, cursor, prefix)
                entries += entries_of(table, rows)
            listings.append(Listing(entries, revision, driver.epoch))
    except CONNECTION_ERRORS as exc:
        raise _unavailable(driver.url, exc) from None
    return listings


def entries_of(table: str, rows: Iterable[tuple[str, builtins.list[bytes | None]]]) -> builtins.list[Entry]:
    """The entries of one listing round's ``rows``; a row that is no dfdb entry is logged and skipped."""
    entries = []
    for id, row in rows:
        try:
            if row[0] == b"!":
                raise CorruptObjectError(table, id, f"not a dfdb entry ({(row[2] or b'').decode()})")
            entry = lua.entry_of(table, id, row)
        except CorruptObjectError as exc:
            log.warning("skipping %s", exc)
            continue
        if entry is not None:
            entries.append(entry)
    return entries
