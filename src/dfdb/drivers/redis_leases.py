"""Leases, locks and guarded writes of the Redis driver (a part of :class:`RedisDriver`).

Redis keys with a TTL expire silently, so dfdb does not use them: a lease is a member of
the sorted set ``P/leases`` scored by its deadline in milliseconds of the server's own
clock (``TIME``, read inside the scripts, so clients' clocks never matter). Objects bound to
it are recorded in ``P/lk/LEASE`` with the revision they were bound at (a later write
without the lease changes the revision, and so unbinds the object). Reaping runs inside the
same Lua code as every write: the leases whose deadline passed are ended by the ordinary
write path — each bound object deleted at a new revision and appended to the change streams
with the field ``x`` = ``1`` (read back as a delete marked ``expired``) — and their locks
(``P/lock/NAME``: holder lease and last fencing token) released, all in one script, so a
lease is reaped once whichever clients race for it. Every watcher runs the reaping script at
least every ``block`` seconds (default 1), and every lease call and bound or guarded write
runs it first; guards are checked in the write's own script.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

import anyio
from redis import exceptions as rexc

from dfdb.drivers.base import ABSENT, ANY, Entry, Expect, Guard
from dfdb.drivers.redis_scripts import LEASE
from dfdb.drivers.redis_tls import CONNECTION_ERRORS, connection_error
from dfdb.errors import AuthenticationError, DriverError, LeaseLostError

if TYPE_CHECKING:
    from dfdb.url import DatabaseURL

__all__ = ["RedisLeases"]

log = logging.getLogger(__name__)

_REAP_EVERY = 0.25
"""Seconds between two reaping rounds of one watcher (it reaps at most this often)."""


class RedisLeases:
    """The lease methods of :class:`~dfdb.drivers.redis.RedisDriver`; see the module documentation."""

    _lease_script: tuple[Any, Any] = (None, None)  # (client, the script registered on it)
    _reaped_at = -1e9

    if TYPE_CHECKING:
        url: DatabaseURL
        prefix: str
        maxlen: int

        def _open_client(self) -> Any: ...
        async def _run_write(
            self, table: str, id: str, op: str, expect: str, topic: str, value: bytes, extra: tuple[str, ...] = ()
        ) -> tuple[int, str | None, bytes]: ...

    async def _lease_call(self, op: str, lease: str, arg: str = "", token: int = 0) -> list[Any]:
        client = self._open_client()
        if self._lease_script[0] is not client:
            self._lease_script = (client, client.register_script(LEASE))
        try:
            reply = await self._lease_script[1](args=[self.prefix, op, lease, arg, self.maxlen, str(token)])
        except CONNECTION_ERRORS as exc:
            raise connection_error(self.url, exc) from None
        except rexc.RedisError as exc:
            if "can't run this command" in str(exc):  # TIME refused inside the script
                raise AuthenticationError(f"{self.url}: not allowed: {exc} (leases need +time)") from None
            raise DriverError(f"{self.url}: {exc}") from None
        if reply[0] == b"LOST":
            raise LeaseLostError(f"lease {lease} ended")
        return list(reply)

    async def reap(self) -> int:
        return int((await self._lease_call("reap", ""))[1])

    async def reap_due(self) -> None:
        """Reap, unless this driver did within the last quarter second (a watcher's round)."""
        now = anyio.current_time()
        if now - self._reaped_at >= _REAP_EVERY:
            self._reaped_at = now
            try:
                await self.reap()
            except AuthenticationError as exc:  # a user without the lease commands: others reap
                self._reaped_at = float("inf")
                log.warning("not reaping expired leases: %s", exc)

    async def lease_grant(self, ttl: float) -> str:
        lease = uuid.uuid4().hex
        await self._lease_call("grant", lease, str(max(1, round(ttl * 1000))))
        return lease

    async def lease_keepalive(self, lease: str) -> None:
        await self._lease_call("keepalive", lease)

    async def lease_revoke(self, lease: str) -> None:
        await self._lease_call("revoke", lease)

    async def lock_acquire(self, name: str, lease: str) -> int | None:
        reply = await self._lease_call("acquire", lease, name)
        return int(reply[2]) if reply[0] == b"OK" else None

    async def lock_release(self, name: str, lease: str, token: int) -> None:
        try:
            await self._lease_call("release", lease, name, token)
        except LeaseLostError:
            pass  # released with the lease

    async def put_bound(
        self,
        table: str,
        id: str,
        topic: str | None,
        value: bytes,
        expect: Expect,
        lease: str | None,
        guard: Guard | None,
    ) -> int:
        exp = "absent" if expect is ABSENT else "any" if expect is ANY else str(expect)
        return (await self._run_write(table, id, "put", exp, topic or "", value, _extra(lease, guard)))[0]

    async def delete_guarded(self, table: str, id: str, guard: Guard) -> Entry:
        revision, topic, value = await self._run_write(table, id, "delete", "any", "", b"", _extra(None, guard))
        return Entry(table, id, topic, value, revision)


def _extra(lease: str | None, guard: Guard | None) -> tuple[str, ...]:
    """The write script's lease and guard arguments."""
    if guard is None:
        return (lease or "", "", "", "")
    return (lease or "", guard.lease, guard.lock or "", str(guard.token))
