"""The Redis driver's digests: a Lua script over the scope's index sets, a slice at a time
(no key or value leaves the server for a digest; only the ids and revisions of the buckets
asked for, for a key listing)."""

from __future__ import annotations

import logging
import struct
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from redis import exceptions as rexc

from dfdb.drivers.base import Driver
from dfdb.drivers.digest import MOD, Digest, KeyListing
from dfdb.drivers.redis_tls import CONNECTION_ERRORS
from dfdb.drivers.redis_tls import connection_error as _unavailable
from dfdb.errors import DriverError

if TYPE_CHECKING:
    from dfdb.drivers.redis import RedisDriver

__all__ = ["RedisDigest"]

log = logging.getLogger("dfdb.drivers.redis")

_DIGEST_SLICE = 5000


class _ScriptsRefused(Exception):
    """The user's ACL refuses the digest script."""


class RedisDigest:
    """:meth:`Driver.digest` and :meth:`Driver.digest_keys` for :class:`RedisDriver`."""

    async def digest(self, table: str, topics: Collection[str | None] | None, buckets: int) -> Digest:
        """Computed by a Lua script over the scope's index sets, a slice at a time: no key or
        value leaves the server."""
        sums: dict[int, tuple[int, int]] = {}
        try:
            revision, size, trips, epoch = await self._run_digest(
                table, topics, buckets, "", 1, sums.__setitem__, sums.get
            )
        except _ScriptsRefused:  # a user who may not run scripts: from a listing
            return await Driver.digest(self, table, topics, buckets)  # type: ignore[arg-type]
        return Digest(sums, revision, bytes_read=size, round_trips=trips, identity=epoch)

    async def digest_keys(
        self, table: str, topics: Collection[str | None] | None, buckets: int, wanted: Collection[int]
    ) -> KeyListing:
        keys: dict[str, int] = {}
        chosen = "," + ",".join(str(b) for b in sorted(wanted)) + ","
        try:
            revision, size, trips, epoch = await self._run_digest(
                table, topics, buckets, chosen, 2, keys.__setitem__, keys.get
            )
        except _ScriptsRefused:
            return await Driver.digest_keys(self, table, topics, buckets, wanted)  # type: ignore[arg-type]
        return KeyListing(keys, revision, bytes_read=size, round_trips=trips, identity=epoch)

    async def _run_digest(
        self, table: str, topics: Collection[str | None] | None, buckets: int, wanted: str, width: int,
        put: Any, get: Any,
    ) -> tuple[int, int, int, str]:  # fmt: skip
        """Run the digest script over each index set of the scope, slice by slice; each bucket
        (``width`` 1: packed) or key (``width`` 2) of a reply goes to ``put``. Returns the revision
        of the first slice (the slices reflect every change up to it; one made while the others
        are read may be in none, or in one read later), the bytes received, the calls made and
        the dataset's epoch (one that names no dataset when it changed between slices)."""
        driver: RedisDriver = self  # type: ignore[assignment]
        driver._open_client()
        if driver._plain_reads:
            raise _ScriptsRefused
        sets = [""] if topics is None else sorted("/n" if t is None else f"/t/{t}" for t in topics)
        revision = size = trips = 0
        epochs: set[str] = set()
        for suffix in sets:
            cursor = "0"
            while True:
                try:
                    reply = await driver._digest(
                        keys=[driver._key("epoch"), driver._key("rev")],
                        args=[driver.prefix, table, buckets, wanted, suffix, cursor, _DIGEST_SLICE],
                    )
                except rexc.NoPermissionError:
                    driver._plain_reads = True
                    raise _ScriptsRefused from None
                except CONNECTION_ERRORS as exc:
                    raise _unavailable(driver.url, exc) from None
                except rexc.ResponseError as exc:
                    raise DriverError(f"{driver.url}: the digest of {table} failed: {exc}") from None
                if reply[0].decode() != driver.epoch:
                    await driver._adopt_epoch(reply[0] or None, read=False)
                epochs.add(reply[0].decode())
                if not trips:  # a change made while later slices are read may be in none
                    revision = int(reply[1])
                trips += 1
                size += sum(len(x) if isinstance(x, bytes) else 8 for x in reply)
                if width == 2:
                    for i in range(3, len(reply), 2):
                        try:  # another program's key or garbled revision: no key of the scope
                            put(reply[i].decode(), int(reply[i + 1]))
                        except (UnicodeDecodeError, ValueError):
                            log.warning("%s: the digest skips %s/%r: not a dfdb entry", driver.url, table, reply[i])
                else:  # a slice's sums add up (an id met twice by SSCAN only costs a closer look)
                    for b, count, total in struct.iter_unpack(">HII", reply[3]):
                        held, held_total = get(b, (0, 0))
                        put(b, (held + count, (held_total + total) % MOD))
                cursor = reply[2].decode()
                if cursor == "0":
                    break
        epoch = next(iter(epochs)) if len(epochs) == 1 else "<changed>"
        return revision, size, trips, epoch
