"""Leases, locks and guarded writes of the ZooKeeper driver (a part of :class:`ZooKeeperDriver`).

ZooKeeper's ephemeral nodes vanish with a session, silently and with no change record, and
a session's timeout is bounded by the server (2 to 20 ticks), so dfdb keeps leases of its own
with deadlines on the server's clock::

    /P/le/LEASE               a lease: its TTL in ms; its mtime (the server's clock at the last
                              keep-alive, a set of the node) plus the TTL is its deadline
    /P/le/LEASE/TABLE+ID      an object bound to it (table and id percent-encoded); the node's
                              mzxid is the revision the object was bound at: a later write
                              without the lease changes the object's revision, and unbinds it
    /P/lock/NAME              a lock (its name percent-encoded): "HOLDER-LEASE TOKEN" (holder
                              empty once released); a holder whose lease node is gone holds nothing
    /P/clock                  set by a reaper to read the server's clock (its mtime)

Any live client reaps: every lock acquisition, and every watching client once a deadline
may have passed, reads the server's clock and ends the leases whose deadline passed. A
watching client keeps a children watch on ``/P/le`` and, after each round, the time the
earliest lease it saw can be due (keep-alives only move deadlines later): it reads nothing
more until then or until the watch says a lease came or went (then at most every half
second), so reaping costs nothing while no lease exists or none is due (a safety round
every :data:`REAP_SAFETY` seconds, and one on every new connection, since a watch may be
lost with it). Its sources look every half second whether a round is due, so an expiry is
seen at most about half a second (plus the round's reads) after the deadline. Ending a
lease deletes each object still at the revision it was bound at with the driver's ordinary
delete (one ``multi`` with its change record, marked as an expiry), checked against that
revision, so racing reapers delete each object once; then the binding nodes and the lease
node go. A bound or guarded write checks, in its own ``multi``, that the lease node exists
and (for a lock) that the lock node is the version read with this holder and token.

A ``multi`` cannot compare a deadline with the server's clock, so a lease whose deadline
passed counts as held until a reaper ends it. A guarded write closes most of that gap on
the holder's side: it is sent only while the holder's own deadline (a TTL after it *sent*
its last confirmed keep-alive, so earlier than the server's) has not passed, checked right
before the request is written to the connection (:meth:`Calls.send`'s ``check``), after
every other call of the write. What is left is the write's own time in flight: a guarded
write reaches the server at most its transit time (network and server queue; about a
millisecond on a LAN) less the last keep-alive's after the server's deadline. A lock is
exact: a successor takes it only after ending the old lease, which changes the lock node
the old holder's ``multi`` checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from aiozk import exc, protocol

from dfdb.drivers.base import Entry, Guard
from dfdb.errors import ConflictError, LeaseLostError, NotFoundError

if TYPE_CHECKING:
    from dfdb.drivers.zookeeper.client import Calls
    from dfdb.drivers.zookeeper.layout import Layout

__all__ = ["REAP_SAFETY", "ZooKeeperLeases"]

REAP_SAFETY = 30.0
"""Seconds after which a watching client reads the leases again even when nothing said a
lease is due (a lost watch, a clock that jumped)."""
_REAP_SOONEST = 0.05
"""Seconds a watching client waits at least after a round before the next, for a lease due."""
_REAP_CHANGED = 0.5
"""Seconds a watching client waits at least after a round before the next when leases came
or went (however often they do; a lease is due no sooner than the shortest TTL after its
grant), or when the round failed."""


class ZooKeeperLeases:
    """The lease methods of :class:`~dfdb.drivers.zookeeper.driver.ZooKeeperDriver`; see the module documentation."""

    _reap_at = -math.inf
    """Event-loop time of the next reaping round of a watcher (``-inf``: at once)."""
    _reap_watched: tuple[int, int] | None = None
    """The connection the lease folder's children watch was set on."""
    _round_at = -math.inf
    """Event-loop time the last reaping round of a watcher started."""
    _leases_moved = False
    """Whether the lease folder's watch fired since that round started."""

    if TYPE_CHECKING:
        _calls: Calls
        _layout: Layout

        def _check_open(self) -> None: ...
        async def get(self, table: str, id: str) -> Entry | None: ...
        async def _delete(self, table: str, id: str, expect: int | None, expired: bool = False) -> Entry: ...
        async def _current_data(self, table: str, id: str) -> Any: ...

    def _lease_path(self, lease: str, *bound: str) -> str:
        return self._layout.path("le", lease, *bound)

    def _lock_path(self, name: str) -> str:
        """The lock's node: its name percent-encoded (ZooKeeper refuses some characters in paths)."""
        return self._layout.path("lock", quote(name, safe=""))

    async def _server_now(self) -> int:
        """The server's clock, in ms: the mtime of a node set now."""
        calls, path = self._calls, self._layout.path("clock")
        for _ in range(3):
            try:
                _, reply = await calls.send(calls.set(path, b"", -1))
                return int(reply.stat.modified)
            except exc.NoNode:
                await calls.ensure(path, gone=True)
        raise LeaseLostError("cannot read the server's clock")  # pragma: no cover

    async def lease_grant(self, ttl: float) -> str:
        self._check_open()
        lease = uuid.uuid4().hex
        await self._calls.ensure(self._layout.path("le"))
        await self._calls.send(self._calls.create(self._lease_path(lease), str(max(1, round(ttl * 1000))).encode()))
        return lease

    async def lease_keepalive(self, lease: str) -> None:
        self._check_open()
        calls, path = self._calls, self._lease_path(lease)
        for _ in range(5):
            got = await calls.get(path)
            if got is None:
                raise LeaseLostError(f"lease {lease} ended")
            ttl, stat = int(got[0] or b"0"), got[1]
            try:
                _, reply = await calls.send(calls.set(path, got[0], int(stat.version)))
            except exc.NoNode:
                raise LeaseLostError(f"lease {lease} ended") from None
            except exc.BadVersion:
                continue  # another keep-alive (a retried one) came first: read again
            if int(reply.stat.modified) - int(stat.modified) > ttl:  # it had expired already
                await self._end(lease)
                raise LeaseLostError(f"lease {lease} ended: not kept alive within its TTL")
            return
        raise LeaseLostError(f"lease {lease}: keep-alive kept meeting concurrent changes")

    async def lease_revoke(self, lease: str) -> None:
        self._check_open()
        await self._end(lease)

    async def reap(self) -> int:
        self._check_open()
        return (await self._reap())[0]

    async def _reap(self, *, watch: bool = False) -> tuple[int, float]:
        """End the leases that are due; returns how many, and the seconds until the
        earliest lease left can be due (``inf``: none left). ``watch``: set the lease
        folder's children watch with the read."""
        calls, folder = self._calls, self._layout.path("le")
        if watch:
            await calls.ensure(folder)  # a watch needs the node: it names the first lease granted
        leases = await calls.children(folder, watch=watch)
        if not leases:
            return 0, math.inf
        now = await self._server_now()
        ended, soonest = 0, math.inf
        for lease in leases:
            got = await calls.get(self._lease_path(lease))
            if got is None:
                continue
            left = int(got[1].modified) + int(got[0] or b"0") - now
            if left < 0:
                await self._end(lease)
                ended += 1
            else:
                soonest = min(soonest, left / 1000)
        return ended, soonest

    def _leases_changed(self, _path: str) -> None:
        self._leases_moved = True
        self._reap_at = min(self._reap_at, self._round_at + _REAP_CHANGED)

    async def reap_due(self) -> None:
        """A watcher's reaping: a round only when a lease may be due (see the module documentation)."""
        loop = asyncio.get_running_loop()
        connection = self._calls.connection()
        if connection != self._reap_watched:  # a new connection or session: the watch may be lost
            self._reap_at = -math.inf
        started = loop.time()
        if started < self._reap_at:
            return
        self._round_at, self._leases_moved = started, False
        self._reap_at = started + _REAP_CHANGED  # until this round says better (also when it fails)
        key = (protocol.WatchEvent.CHILDREN_CHANGED, self._layout.path("le"))
        self._calls.remove_watch(key, self._leases_changed)
        self._calls.add_watch(key, self._leases_changed)
        self._reap_watched = connection
        _, soonest = await self._reap(watch=True)
        if not self._leases_moved:  # else the next round comes as soon as allowed
            self._reap_at = started + min(max(soonest, _REAP_SOONEST), REAP_SAFETY)

    async def _end(self, lease: str) -> None:
        """Delete the lease's objects (as expiries, each once), then its nodes."""
        calls = self._calls
        for _ in range(10):
            bound = []
            for child in await calls.children(self._lease_path(lease)):
                got = await calls.get(self._lease_path(lease, child))
                if got is not None:
                    bound.append((int(got[1].last_modified_zxid), child))
            for revision, child in sorted(bound):
                table, _, id = child.partition("+")
                with contextlib.suppress(NotFoundError, ConflictError):
                    await self._delete(unquote(table), unquote(id), revision, expired=True)
                with contextlib.suppress(exc.NoNode):
                    await calls.send(calls.delete(self._lease_path(lease, child), -1))
            try:
                await calls.send(calls.delete(self._lease_path(lease), -1))
                return
            except exc.NoNode:
                return
            except exc.NotEmpty:
                continue  # an object was bound meanwhile: end it too

    async def lease_ops(self, table: str, id: str, lease: str | None, guard: Guard | None) -> list[Any]:
        """The checks and the binding a bound or guarded write adds to its ``multi``.

        Raises:
            LeaseLostError: the guard's lock has another holder or token already.
        """
        calls = self._calls
        held = {x for x in (lease, guard.lease if guard else None) if x is not None}
        ops: list[Any] = [protocol.CheckVersionRequest(path=self._lease_path(x), version=-1) for x in held]
        if guard is not None and guard.lock is not None:
            got = await calls.get(self._lock_path(guard.lock))
            if got is None or got[0].decode() != f"{guard.lease} {guard.token}":
                raise LeaseLostError(f"lock {guard.lock!r} is no longer held with token {guard.token}")
            ops.append(protocol.CheckVersionRequest(path=self._lock_path(guard.lock), version=got[1].version))
        if lease is not None:
            child = self._lease_path(lease, f"{quote(table, safe='')}+{quote(id, safe='')}")
            exists = await calls.exists(child) is not None
            ops.append(calls.set(child, b"", -1) if exists else calls.create(child, b""))
        return ops

    async def lock_acquire(self, name: str, lease: str) -> int | None:
        self._check_open()
        calls, path = self._calls, self._lock_path(name)
        await self.reap()  # a holder whose lease is due holds nothing any more
        await calls.ensure(self._layout.path("lock"))
        alive = protocol.CheckVersionRequest(path=self._lease_path(lease), version=-1)
        for _ in range(5):
            got = await calls.get(path)
            holder, token = ("", 0) if got is None else _holder(got[0])
            if holder == lease:
                return token
            if holder and await calls.exists(self._lease_path(holder)) is not None:
                return None
            value = f"{lease} {token + 1}".encode()
            write = calls.create(path, value) if got is None else calls.set(path, value, int(got[1].version))
            replies = await calls.multi([alive, write])
            if not isinstance(replies[0], Exception) and not isinstance(replies[1], Exception):
                return token + 1
            if isinstance(replies[0], exc.NoNode):
                raise LeaseLostError(f"lease {lease} ended")
        return None

    async def lock_release(self, name: str, lease: str, token: int) -> None:
        self._check_open()
        calls, path = self._calls, self._lock_path(name)
        got = await calls.get(path)
        if got is not None and _holder(got[0]) == (lease, token):
            with contextlib.suppress(exc.BadVersion, exc.NoNode):
                await calls.send(calls.set(path, f" {token}".encode(), int(got[1].version)))


def _holder(data: bytes) -> tuple[str, int]:
    holder, _, token = data.decode(errors="replace").partition(" ")
    return holder, int(token) if token.isdigit() else 0
