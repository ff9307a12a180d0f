"""Leases, locks and guarded writes of the etcd driver (a part of :class:`EtcdDriver`).

etcd's own leases: a dfdb lease is an etcd lease (its id in decimal), and an object bound
to it has both its index key and its data key attached, so etcd deletes both in the one
revision that ends the lease (expiry or revoke); a later write without the lease detaches
them. Extra keys attached to the lease:

    P/l/LEASE                 alive while the lease is: what guards compare
    P/d/LOCATION/../LEASE     a mark in every topic location the lease has objects in; its
                              delete, in the same revision as the objects', tells a watch that
                              those deletes are expiries (".." is never a table name)
    P/lk/NAME                 a lock: its fencing token, attached to the holder's lease
    P/ls/NAME                 the lock's sequence: its version is the last token given

etcd expires a lease by itself, without any client, once its TTL passed (the leader checks
every 500 ms; it takes TTLs of at least its minimum, 2 s with the default election timeout).
Guards are compares in the write's own transaction.
"""

from __future__ import annotations

import asyncio
import builtins
import math
from typing import TYPE_CHECKING, Any

import grpc
from aetcd import rpc

from dfdb.drivers.base import Entry, Expect, Guard
from dfdb.drivers.etcd_calls import exchange
from dfdb.errors import BackendUnavailableError, DriverError, LeaseLostError, NotFoundError
from dfdb.retry import raise_if_cancelling

if TYPE_CHECKING:
    from dfdb.url import DatabaseURL

__all__ = ["MARK", "EtcdLeases"]

MARK = ".."
"""The table part of a lease's mark key (never a table name)."""

_EQUAL = rpc.Compare.EQUAL
_GREATER = rpc.Compare.GREATER


def _op(**request: Any) -> Any:
    return rpc.RequestOp(**request)


class EtcdLeases:
    """The lease methods of :class:`~dfdb.drivers.etcd.EtcdDriver`; see the module documentation."""

    if TYPE_CHECKING:
        url: DatabaseURL
        timeout: float
        _conn: Any

        def _key(self, *parts: str) -> bytes: ...
        def _location(self, topic: str | None) -> str: ...
        def _data_key(self, table: str, topic: str | None, id: str) -> bytes: ...
        def _index_key(self, table: str, id: str) -> bytes: ...
        def _check_open(self) -> None: ...
        async def _call(self, method: str, request: Any, stub: str = "kv") -> Any: ...
        async def _txn(self, compare: list[Any], success: list[Any], failure: list[Any]) -> Any: ...
        async def _range(self, key: bytes, end: bytes | None = None, **fields: Any) -> Any: ...
        async def get(self, table: str, id: str) -> Entry | None: ...
        async def put_bound(
            self,
            table: str,
            id: str,
            topic: str | None,
            value: bytes,
            expect: Expect,
            lease: str | None,
            guard: Guard | None,
        ) -> int: ...

    def _mark_op(self, topic: str | None, lease: int) -> Any:
        """Attach the lease's mark in ``topic``'s location, once."""
        mark = self._key("d", self._location(topic), MARK, str(lease))
        return _op(
            request_txn=rpc.TxnRequest(
                compare=[rpc.Compare(key=mark, target=rpc.Compare.VERSION, result=_EQUAL, version=0)],
                success=[_op(request_put=rpc.PutRequest(key=mark, value=b"", lease=lease))],
                failure=[],
            )
        )

    def _guard_compares(self, lease: str | None, guard: Guard | None) -> builtins.list[Any]:
        held = {x for x in (lease, guard.lease if guard else None) if x is not None}
        compares = [
            rpc.Compare(key=self._key("l", x), target=rpc.Compare.VERSION, result=_GREATER, version=0) for x in held
        ]
        if guard is not None and guard.lock is not None:
            lock, token = self._key("lk", guard.lock), str(guard.token).encode()
            compares.append(rpc.Compare(key=lock, target=rpc.Compare.VALUE, result=_EQUAL, value=token))
            compares.append(rpc.Compare(key=lock, target=rpc.Compare.LEASE, result=_EQUAL, lease=int(guard.lease)))
        return compares

    async def _guarded_txn(
        self, lease: str | None, guard: Guard | None, compare: list[Any], success: list[Any], failure: list[Any]
    ) -> Any:
        """A transaction, run only while ``lease`` and ``guard`` hold (a transaction in one
        whose compares check them); its reply carries the outer header."""
        if lease is None and guard is None:
            return await self._txn(compare, success, failure)
        inner = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        if guard is not None:
            guard.check_held()  # etcd ends a lease up to half a second after its TTL (and TTLs are whole seconds)
        outer = await self._txn(self._guard_compares(lease, guard), [_op(request_txn=inner)], [])
        if not outer.succeeded:
            raise LeaseLostError(_refusal(lease, guard))
        reply = outer.responses[0].response_txn
        reply.header.CopyFrom(outer.header)
        return reply

    async def lease_grant(self, ttl: float) -> str:
        reply = await self._call("LeaseGrant", rpc.LeaseGrantRequest(TTL=max(1, math.ceil(ttl)), ID=0), "lease")
        if reply.error:
            raise DriverError(f"{self.url}: lease grant refused: {reply.error}")
        lease = int(reply.ID)
        alive = rpc.PutRequest(key=self._key("l", str(lease)), value=b"", lease=lease)
        await self._txn([], [_op(request_put=alive)], [])
        return str(lease)

    async def lease_keepalive(self, lease: str) -> None:
        self._check_open()
        conn = self._conn
        channel = call = None
        try:
            channel = await conn.connect()
            call = conn.lease.LeaseKeepAlive(metadata=conn.metadata())
            async with asyncio.timeout(self.timeout):
                reply = await exchange(call, rpc.LeaseKeepAliveRequest(ID=int(lease)))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # not this task's cancellation: gRPC's when another call closed the channel (a failover)
            raise BackendUnavailableError(f"{self.url}: lease keep-alive: the connection was replaced") from None
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            await conn.failover(channel)
            why = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else "no answer"
            raise BackendUnavailableError(f"{self.url}: lease keep-alive failed: {why}") from None
        finally:
            if call is not None:
                call.cancel()
        if reply is grpc.aio.EOF or reply.TTL <= 0:
            raise LeaseLostError(f"lease {lease} ended")

    async def lease_revoke(self, lease: str) -> None:
        try:
            await self._call("LeaseRevoke", rpc.LeaseRevokeRequest(ID=int(lease)), "lease")
        except DriverError as exc:
            if "NOT_FOUND" not in str(exc) and "not found" not in str(exc):
                raise

    async def reap(self) -> int:
        return 0  # etcd ends leases by itself

    async def lock_acquire(self, name: str, lease: str) -> int | None:
        lock, seq = self._key("lk", name), self._key("ls", name)
        for _ in range(3):
            reply = await self._txn(
                [],
                [_op(request_range=rpc.RangeRequest(key=lock)), _op(request_range=rpc.RangeRequest(key=seq))],
                [],
            )
            held, counted = reply.responses[0].response_range.kvs, reply.responses[1].response_range.kvs
            if held:
                return int(held[0].value) if int(held[0].lease) == int(lease) else None
            version = int(counted[0].version) if counted else 0
            token = version + 1
            done = await self._txn(
                [
                    rpc.Compare(key=lock, target=rpc.Compare.VERSION, result=_EQUAL, version=0),
                    rpc.Compare(key=seq, target=rpc.Compare.VERSION, result=_EQUAL, version=version),
                    *self._guard_compares(lease, None),
                ],
                [
                    _op(request_put=rpc.PutRequest(key=seq, value=b"")),
                    _op(request_put=rpc.PutRequest(key=lock, value=str(token).encode(), lease=int(lease))),
                ],
                [_op(request_range=rpc.RangeRequest(key=self._key("l", lease)))],
            )
            if done.succeeded:
                return token
            if not done.responses[0].response_range.kvs:
                raise LeaseLostError(f"lease {lease} ended")
        return None

    async def lock_release(self, name: str, lease: str, token: int) -> None:
        lock = self._key("lk", name)
        await self._txn(
            [
                rpc.Compare(key=lock, target=rpc.Compare.VALUE, result=_EQUAL, value=str(token).encode()),
                rpc.Compare(key=lock, target=rpc.Compare.LEASE, result=_EQUAL, lease=int(lease)),
            ],
            [_op(request_delete_range=rpc.DeleteRangeRequest(key=lock))],
            [],
        )

    async def delete_guarded(self, table: str, id: str, guard: Guard) -> Entry:
        for _ in range(100):
            current = await self.get(table, id)
            if current is None:
                raise NotFoundError(f"{table}/{id} not found")
            index = self._index_key(table, id)
            reply = await self._guarded_txn(
                None,
                guard,
                [rpc.Compare(key=index, target=rpc.Compare.MOD, result=_EQUAL, mod_revision=current.revision)],
                [
                    _op(request_delete_range=rpc.DeleteRangeRequest(key=index)),
                    _op(request_delete_range=rpc.DeleteRangeRequest(key=self._data_key(table, current.topic, id))),
                ],
                [],
            )
            if reply.succeeded:
                return Entry(table, id, current.topic, current.value, int(reply.header.revision))
        raise DriverError(f"{table}/{id} keeps changing; delete gave up")


def _refusal(lease: str | None, guard: Guard | None) -> str:
    if guard is not None and guard.lock is not None:
        return f"lock {guard.lock!r} is no longer held with token {guard.token} (or its lease ended)"
    return f"lease {lease or (guard.lease if guard else '')} ended"
