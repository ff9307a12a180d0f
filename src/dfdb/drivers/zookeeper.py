"""``zk://host:port[,host:port…][/chroot]``: ZooKeeper with a change log in the same multi.

Layout under the chroot ``/P`` (the URL path, default ``/dfdb``), ``LOC`` being
``t/TOPIC`` or ``n`` (topic-less) and ``SS`` a shard of the id (two hex digits of its
hash, so no parent has more children than one ``getChildren`` reply carries)::

    /P/identity                   this dataset's identity
    /P/i/TABLE/SS/ID              the index: LOC (ids are unique across topics)
    /P/d/TABLE/LOC/SS/ID          the value
    /P/l/TABLE/LOC                a change log: {"b": current bucket, "trim": highest pruned revision}
    /P/l/TABLE/LOC/bK/cSEQ        one change: action, id, value; its czxid is its revision
    /P/k/TABLE                    allocate_unique_key: its version counts the keys given

Every write is one ``multi``: a version check of its log (which changes only when
the log moves to a new bucket or is pruned), the data and index writes with their
own checks (create-if-absent, the data node's version for compare-and-swap) and the
change node. Its revision is the transaction's zxid. A bucket holds ``bucket_size``
changes (sequence counters are per parent); a writer that fills one moves the log to
the next, and logs keep ``keep`` buckets: older ones are pruned, the highest pruned
revision written in the same ``multi`` as the deletes.

A watch reads the logs of its topics (all topics of its tables when none are given):
each log from the first change after its position, then an ``exists`` watch on the
next change's path and a data watch on the log wake it. ZooKeeper delivers a watch
event before any reply to a later request, so a log whose watches have not fired is
complete up to the latest reply: that is how far the stream has read.

Options: ``session_timeout`` (seconds, default 10), ``timeout`` (seconds per call,
default 10), ``bucket_size`` (default 10,000), ``keep`` (buckets kept per log, default
10), ``idle`` (seconds between safety re-reads of every log, default 5). Digest
authentication comes from the URL's user and password.

aiozk 0.32 bugs worked around here, each marked ``aiozk:`` below: a failed ``multi``
is read from the raw reply (``Transaction.commit`` hides which operation failed);
version-checked deletes and sets go through the raw requests (the client otherwise
uses versions from its own cache); requests carry our own time-outs (a connection the
server closed while idle is noticed only after the session time-out); the reply's
zxid is read from the connection (the client keeps only the latest); a ``multi`` is
never re-sent after a lost reply (aiozk marks it as not writing); a connection that
ends is noticed at once, and the session is repaired by our own loop (aiozk's can
stall for good when the connection drops while it re-sets the watches).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import hashlib
import heapq
import itertools
import json
import logging
import random
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiozk import ZKClient, exc, protocol
from aiozk.states import States

from dfdb.drivers.base import (
    ABSENT,
    ANY,
    Capability,
    Driver,
    Entry,
    EventSource,
    Expect,
    Listing,
    PutRequest,
    RawAction,
    RawEvent,
)
from dfdb.errors import (
    AlreadyExistsError,
    BackendUnavailableError,
    ConflictError,
    CorruptObjectError,
    DriverError,
    InvalidURL,
    NotFoundError,
)
from dfdb.retry import Backoff, checkpoint, raise_if_cancelling
from dfdb.url import DatabaseURL

__all__ = ["ZooKeeperDriver", "ZooKeeperSource"]

log = logging.getLogger(__name__)

_ACTIONS = {b"c": "create", b"u": "update", b"d": "delete"}
_CODES = {v: k for k, v in _ACTIONS.items()}
_MULTI_BYTES = 512 * 1024  # well under jute.maxbuffer (1 MB)
_MULTI_OPS = 1000
_LIST_BATCH = 2000
_CHUNKS_IN_FLIGHT = 4
_READ_AHEAD = 32
_CONNECTION_LOST = (exc.ConnectError, exc.TimeoutError, exc.ConnectionLoss, exc.SessionExpired, exc.SessionLost,
                    exc.UnfinishedRead)  # fmt: skip
_UNAVAILABLE = (exc.ConnectError, exc.SessionLost, exc.TimeoutError, exc.ConnectionLoss, exc.OperationTimeout,
                exc.SessionExpired, exc.UnfinishedRead, exc.NoServersError, ConnectionError, TimeoutError)  # fmt: skip


def _shard(id: str) -> str:
    return hashlib.blake2s(id.encode(), digest_size=1).hexdigest()


def _location(topic: str | None) -> str:
    return "n" if topic is None else f"t/{topic}"


class _Retry(Exception):
    """The log moved to another bucket (or a parent was missing): write again."""


class ZooKeeperDriver(Driver):
    """The ZooKeeper driver; see the module documentation."""

    capabilities = Capability.NATIVE_STREAM | Capability.CHANGE_LOG | Capability.TOPIC_FILTER

    def __init__(self, url: DatabaseURL) -> None:
        super().__init__(url)
        known = {"session_timeout", "timeout", "bucket_size", "keep", "idle", "window"}
        unknown = set(url.options) - known
        if unknown:
            raise InvalidURL(f"unknown zk:// option(s): {', '.join(sorted(unknown))}")
        if (url.username is None) != (url.password is None):
            raise InvalidURL("zk:// needs both a user name and a password, or neither")
        self.root = "/" + (url.path.strip("/") or "dfdb")
        self.session_timeout = url.float_option("session_timeout", 10.0, minimum=1)
        self.timeout = url.float_option("timeout", 10.0, minimum=0.1)
        self.bucket_size = url.int_option("bucket_size", 10_000, minimum=2)
        self.keep = url.int_option("keep", 10, minimum=1)
        self.idle = url.float_option("idle", 5.0, minimum=0.05)
        self.window = url.int_option("window", 64, minimum=1)
        self.servers = ",".join(f"{host or '127.0.0.1'}:{port or 2181}" for host, port in url.hosts) or "127.0.0.1:2181"
        # with credentials, dfdb's nodes are for that user alone ("auth": whoever created them)
        self._acl = [protocol.UNRESTRICTED_ACCESS if url.username is None else protocol.AUTHED_UNRESTRICTED]
        self._zk: Any = None
        self._ensured: set[str] = set()
        self._logs: dict[str, tuple[int, int, int]] = {}  # log path -> (bucket, trim, version)
        self._identity: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------ paths
    def _p(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _index(self, table: str, id: str) -> str:
        return self._p("i", table, _shard(id), id)

    def _data(self, table: str, loc: str, id: str) -> str:
        return self._p("d", table, loc, _shard(id), id)

    def _log(self, table: str, loc: str) -> str:
        return self._p("l", table, loc)

    @staticmethod
    def _bucket(log_path: str, bucket: int) -> str:
        return f"{log_path}/b{bucket:010d}"

    def _create(self, path: str, data: bytes) -> Any:
        request = protocol.CreateRequest(path=path, data=data, acl=self._acl)
        request.set_flags(False, False, False)
        return request

    # ------------------------------------------------------------ calls
    def _client(self) -> Any:
        self._check_open()
        if self._zk is None:
            raise RuntimeError("the driver is not open; use 'async with' or 'await open()'")
        return self._zk

    async def _send(self, request: Any) -> tuple[int, Any]:
        """One request with a time-out; returns the reply's zxid and the reply.

        aiozk: ``ZKClient.send`` keeps only the latest zxid and retries forever; this
        sends on the session's connection directly, under dfdb's time-out.
        """
        zk = self._client()
        session = zk.session
        # aiozk: a TransactionRequest says it writes nothing (writes_data False); a multi
        # whose reply was lost must not be sent again
        writing = bool(request.writes_data) or isinstance(request, protocol.TransactionRequest)
        conn = None
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    _keep_repairing(session)
                    await session.ensure_safe_state(writing=writing)
                    conn = session.conn
                    if conn.read_loop_task is None or conn.read_loop_task.done():
                        _repair(session, lost=False)  # nothing reads its replies any more
                        await asyncio.sleep(0.05)
                        continue
                    session.xid = session.xid + 1 if session.xid < 0x7FFFFFFF else 1
                    try:
                        zxid, response = await conn.send(request, xid=session.xid)
                    except _CONNECTION_LOST as error:
                        _repair(session, lost=isinstance(error, exc.SessionExpired | exc.SessionLost))
                        if writing:  # it may or may not have been applied
                            raise BackendUnavailableError(f"{self.url}: connection lost during a write") from None
                        await asyncio.sleep(0.05)
                        continue
                    session.last_zxid = max(session.last_zxid or 0, zxid)
                    session.set_heartbeat()
                    return int(zxid), response
        except (exc.NoNode, exc.NodeExists, exc.BadVersion, exc.NotEmpty):
            raise
        except _UNAVAILABLE as error:
            raise_if_cancelling(error)
            if isinstance(error, TimeoutError) and conn is not None and conn is session.conn:
                _repair(session, lost=False)  # no reply within the time-out: a new connection for the next call
            raise BackendUnavailableError(f"{self.url}: {type(error).__name__}: {error or 'no reply'}") from None
        except exc.NoAuth:
            raise DriverError(f"{self.url}: not allowed (check the user and password)") from None
        except exc.ZKError as error:
            raise DriverError(f"{self.url}: {type(error).__name__}: {error}") from None

    async def _get(self, path: str, watch: bool = False) -> tuple[bytes, Any] | None:
        try:
            _, reply = await self._send(protocol.GetDataRequest(path=path, watch=watch))
        except exc.NoNode:
            return None
        return bytes(reply.data or b""), reply.stat

    async def _children(self, path: str, watch: bool = False) -> builtins.list[str]:
        try:
            _, reply = await self._send(protocol.GetChildrenRequest(path=path, watch=watch))
        except exc.NoNode:
            return []
        return sorted(reply.children)

    async def _ensure(self, path: str) -> None:
        """Create ``path`` and its parents as plain persistent nodes where missing."""
        if path in self._ensured:
            return
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            sub = "/" + "/".join(parts[:i])
            if sub in self._ensured:
                continue
            try:
                await self._send(protocol.CreateRequest(path=sub, data=b"", acl=self._acl, flags=0))
            except exc.NodeExists:
                pass
            self._ensured.add(sub)

    async def _multi(self, ops: builtins.list[Any]) -> builtins.list[Any]:
        """One transaction; returns each operation's reply or error.

        aiozk: ``Transaction.commit`` reports only success or failure; the raw reply
        names the operation that failed.
        """
        request = protocol.TransactionRequest()
        for op in ops:
            request.add(op)
        _, reply = await self._send(request)
        return builtins.list(reply.responses)

    # ------------------------------------------------------------ connection
    async def open(self) -> None:
        await super().open()
        if self._zk is not None:
            return
        self._zk = ZKClient(self.servers, session_timeout=self.session_timeout, read_timeout=self.session_timeout)
        session = self._zk.session
        session.find_server = functools.partial(_find_server, session, self._tasks)
        auth = None if self.url.username is None else f"{self.url.username}:{self.url.password}".encode()
        session.repair_loop = functools.partial(_repair_loop, session, self._tasks, auth)
        try:
            async with asyncio.timeout(self.timeout):
                await self._zk.session.start()
            if auth is not None:
                await self._send(protocol.AuthRequest(type=0, scheme="digest", auth=auth))
            await self.identity()
        except BaseException as error:
            await self._release()
            if isinstance(error, TimeoutError | OSError | exc.ZKError):
                raise BackendUnavailableError(f"{self.url}: cannot connect to {self.servers}") from None
            raise

    async def _release(self) -> None:
        zk, self._zk = self._zk, None
        if zk is not None:
            try:
                async with asyncio.timeout(2):
                    await zk.close()
            except (TimeoutError, exc.ZKError, OSError):
                session = zk.session
                if session.repair_loop_task is not None:
                    session.repair_loop_task.cancel()
                if session.heartbeat_handle is not None:
                    session.heartbeat_handle.cancel()
                if session.conn is not None:
                    session.conn.abort()
                    with contextlib.suppress(Exception):
                        await session.conn.close(0.1)

    async def identity(self) -> str:
        path = self._p("identity")
        found = await self._get(path)
        if found is None:
            await self._ensure(self.root)
            fresh = f"zk-{uuid.uuid4().hex[:16]}".encode()
            try:
                await self._send(protocol.CreateRequest(path=path, data=fresh, acl=self._acl, flags=0))
            except exc.NodeExists:
                pass
            found = await self._get(path)
            if found is None:
                raise BackendUnavailableError(f"{self.url}: the identity node keeps disappearing")
        self._identity = found[0].decode()
        return self._identity

    async def current_revision(self) -> int:
        """The zxid of the last transaction the server has applied."""
        zxid, _ = await self._send(protocol.ExistsRequest(path=self.root, watch=False))
        return zxid

    # ------------------------------------------------------------ logs
    async def _log_state(self, log_path: str, *, fresh: bool = False) -> tuple[int, int, int]:
        """(bucket, trim, version) of a log, creating the log when absent."""
        if not fresh and log_path in self._logs:
            return self._logs[log_path]
        for _ in range(10):
            found = await self._get(log_path)
            if found is not None:
                meta = json.loads(found[0] or b"{}")
                state = (int(meta.get("b", 0)), int(meta.get("trim", 0)), int(found[1].version))
                self._logs[log_path] = state
                return state
            await self._ensure(log_path.rsplit("/", 1)[0])
            await self._multi(  # fails as a whole when another writer made it first
                [
                    self._create(log_path, json.dumps({"b": 0, "trim": 0}).encode()),
                    self._create(self._bucket(log_path, 0), b""),
                ]
            )
        raise BackendUnavailableError(f"{self.url}: cannot create the change log {log_path}")

    async def _after_append(self, log_path: str, entry_path: str) -> None:
        """Move a full log to its next bucket, and prune the buckets it no longer keeps."""
        seq = int(entry_path.rsplit("/c", 1)[1])
        if seq + 1 < self.bucket_size:
            return
        bucket, trim, version = await self._log_state(log_path, fresh=True)
        if f"/b{bucket:010d}/" not in entry_path:
            return  # someone else moved it already
        await self._rotate(log_path, bucket, trim, version)

    async def _rotate(self, log_path: str, bucket: int, trim: int, version: int) -> None:
        replies = await self._multi(
            [
                _set(log_path, json.dumps({"b": bucket + 1, "trim": trim}).encode(), version),
                self._create(self._bucket(log_path, bucket + 1), b""),
            ]
        )
        if any(isinstance(r, Exception) for r in replies):
            return  # another writer moved it
        self._logs.pop(log_path, None)
        await self._prune(log_path, bucket + 2 - self.keep)  # the new bucket and keep - 1 before it

    async def _prune(self, log_path: str, below: int) -> None:
        """Delete every bucket numbered below ``below``, recording the highest revision deleted."""
        for name in await self._children(log_path):
            number = int(name[1:])
            if number >= below:
                continue
            bucket_path = f"{log_path}/{name}"
            children = await self._children(bucket_path)
            for start in range(0, len(children) + 1, _MULTI_OPS):
                chunk = children[start : start + _MULTI_OPS]
                last = await self._get(f"{bucket_path}/{chunk[-1]}") if chunk else None
                for _ in range(20):
                    _bucket, trim, version = await self._log_state(log_path, fresh=True)
                    if last is not None:
                        trim = max(trim, int(last[1].created_zxid))
                    ops = [_set(log_path, json.dumps({"b": _bucket, "trim": trim}).encode(), version)]
                    ops += [protocol.DeleteRequest(path=f"{bucket_path}/{c}", version=-1) for c in chunk]
                    if start + _MULTI_OPS >= len(children):
                        ops.append(protocol.DeleteRequest(path=bucket_path, version=-1))
                    replies = await self._multi(ops)
                    if not any(isinstance(r, Exception) for r in replies):
                        break
                    if not isinstance(replies[0], Exception):
                        break  # pruned by someone else meanwhile
                self._logs.pop(log_path, None)

    # ------------------------------------------------------------ contract
    async def get(self, table: str, id: str) -> Entry | None:
        index = await self._get(self._index(table, id))
        if index is None:
            return None
        loc = index[0].decode(errors="replace")
        if not (loc == "n" or loc.startswith("t/")):
            raise CorruptObjectError(table, id, "not a dfdb index node")
        data = await self._get(self._data(table, loc, id))
        if data is None:
            return None
        return Entry(table, id, None if loc == "n" else loc[2:], data[0], int(data[1].last_modified_zxid))

    async def _write(
        self, table: str, id: str, loc: str, body: builtins.list[Any], action: str, value: bytes, zxid_at: int
    ) -> int:
        """Append the change to its log in the same multi as ``body``; returns the zxid."""
        log_path = self._log(table, loc)
        bucket, _trim, version = await self._log_state(log_path)
        entry = self._create(
            f"{self._bucket(log_path, bucket)}/c", _CODES[action] + b"\n" + id.encode() + b"\n" + value
        )
        entry.set_flags(False, True, False)
        ops = [protocol.CheckVersionRequest(path=log_path, version=version), *body, entry]
        replies = await self._multi(ops)
        failed = [
            (i, r)
            for i, r in enumerate(replies)
            if isinstance(r, Exception) and not isinstance(r, exc.RolledBack | exc.RuntimeInconsistency)
        ]
        if failed:
            i, error = failed[0]
            if i == 0 or i == len(ops) - 1:  # the log moved (or is gone): read it again
                self._logs.pop(log_path, None)
                raise _Retry()
            raise error
        await self._after_append(log_path, replies[-1].path)
        return int(replies[zxid_at].stat.last_modified_zxid)

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        loc = _location(topic)
        index, data = self._index(table, id), self._data(table, loc, id)
        for _ in range(50):
            try:
                current = None if expect is ABSENT else await self._current(table, id, loc, topic)
                if current is None:
                    if expect is not ABSENT and expect is not ANY:
                        raise NotFoundError(f"{table}/{id} not found")
                    body = [self._create(index, loc.encode()), _set(index, loc.encode(), -1), self._create(data, value)]
                    try:
                        return await self._write(table, id, loc, body, "create", value, 2)
                    except exc.NodeExists:
                        if expect is ABSENT:
                            raise AlreadyExistsError(f"{table}/{id} already exists") from None
                        continue  # created meanwhile: update it (ANY)
                    except exc.NoNode:
                        await self._ensure(index.rsplit("/", 1)[0])
                        await self._ensure(data.rsplit("/", 1)[0])
                        continue
                revision, version = current
                if expect is not ANY and revision != expect:
                    raise ConflictError(f"{table}/{id} is at revision {revision}, not {expect}")
                try:
                    return await self._write(table, id, loc, [_set(data, value, version)], "update", value, 1)
                except (exc.BadVersion, exc.NoNode):
                    if expect is ANY:
                        continue
                    now = await self._current(table, id, loc, topic)
                    if now is None:
                        raise NotFoundError(f"{table}/{id} not found") from None
                    raise ConflictError(f"{table}/{id} is at revision {now[0]}, not {expect}") from None
            except _Retry:
                continue
        raise BackendUnavailableError(f"{self.url}: {table}/{id}: the write kept meeting concurrent changes")

    async def _current(self, table: str, id: str, loc: str, topic: str | None) -> tuple[int, int] | None:
        """(revision, data version) of the key under ``loc``; ``None`` when absent.

        Raises:
            ValueError: the key exists under another topic.
        """
        index, data = await asyncio.gather(self._get(self._index(table, id)), self._get(self._data(table, loc, id)))
        if index is None:
            return None
        if index[0].decode(errors="replace") != loc:
            stored = index[0].decode(errors="replace")
            raise ValueError(f"{table}/{id} belongs to topic {None if stored == 'n' else stored[2:]!r}, not {topic!r}")
        if data is None:
            return None
        return int(data[1].last_modified_zxid), int(data[1].version)

    async def put_many(self, writes: Sequence[PutRequest]) -> builtins.list[int | Exception]:
        """Creates go in chunked multis (each under half of ZooKeeper's 1 MB buffer); a chunk
        that fails, and every other write, is written one by one, ``window`` at a time."""
        results: builtins.list[int | Exception | None] = [None] * len(writes)
        creates = [i for i, w in enumerate(writes) if w.expect is ABSENT]
        chunks: builtins.list[builtins.list[int]] = [[]]
        size = 0
        for i in creates:
            cost = 2 * len(writes[i].value) + 200  # the value is in the data node and in the change
            if chunks[-1] and (size + cost > _MULTI_BYTES or len(chunks[-1]) * 5 >= _MULTI_OPS):
                chunks.append([])
                size = 0
            chunks[-1].append(i)
            size += cost
        queue = iter(c for c in chunks if c)

        async def chunk_worker() -> None:
            for chunk in queue:
                outcome = await self._create_chunk([writes[j] for j in chunk])
                if outcome is not None:
                    for j, revision in zip(chunk, outcome, strict=True):
                        results[j] = revision

        await asyncio.gather(*(chunk_worker() for _ in range(_CHUNKS_IN_FLIGHT)))
        done: builtins.list[int | Exception] = [r if r is not None else 0 for r in results]
        await self._put_windowed(writes, [i for i, r in enumerate(results) if r is None], self.window, done)
        return done

    async def _create_chunk(self, writes: builtins.list[PutRequest], attempts: int = 5) -> builtins.list[int] | None:
        """Create ``writes`` in one multi; ``None`` when it failed (write them one by one)."""
        ops: builtins.list[Any] = []
        logs: dict[str, tuple[int, int, int]] = {}
        for w in writes:
            loc = _location(w.topic)
            log_path = self._log(w.table, loc)
            if log_path not in logs:
                logs[log_path] = await self._log_state(log_path)
                ops.append(protocol.CheckVersionRequest(path=log_path, version=logs[log_path][2]))
            await self._ensure(self._index(w.table, w.id).rsplit("/", 1)[0])
            await self._ensure(self._data(w.table, loc, w.id).rsplit("/", 1)[0])
        zxid_at = -1
        entries: builtins.list[tuple[str, int]] = []
        for w in writes:
            loc = _location(w.topic)
            log_path = self._log(w.table, loc)
            index = self._index(w.table, w.id)
            ops += [
                self._create(index, loc.encode()),
                _set(index, loc.encode(), -1),
                self._create(self._data(w.table, loc, w.id), w.value),
            ]
            zxid_at = len(ops) - 2
            entry = self._create(
                f"{self._bucket(log_path, logs[log_path][0])}/c", b"c\n" + w.id.encode() + b"\n" + w.value
            )
            entry.set_flags(False, True, False)
            ops.append(entry)
            entries.append((log_path, len(ops) - 1))
        replies = await self._multi(ops)
        ignored = (exc.RolledBack, exc.RuntimeInconsistency)
        failed = [r for r in replies if isinstance(r, Exception) and not isinstance(r, ignored)]
        if failed:
            for log_path in logs:
                self._logs.pop(log_path, None)
            if all(isinstance(r, exc.BadVersion) for r in failed) and attempts > 0:
                return await self._create_chunk(writes, attempts - 1)  # a log moved on: again
            return None
        revision = int(replies[zxid_at].stat.last_modified_zxid)
        for log_path, at in entries:
            await self._after_append(log_path, replies[at].path)
        return [revision] * len(writes)

    async def delete(self, table: str, id: str, expect: int | None = None) -> Entry:
        index_path = self._index(table, id)
        for _ in range(50):
            index = await self._get(index_path)
            if index is None:
                raise NotFoundError(f"{table}/{id} not found")
            loc = index[0].decode(errors="replace")
            data_path = self._data(table, loc, id)
            data = await self._get(data_path)
            if data is None:
                continue
            revision = int(data[1].last_modified_zxid)
            if expect is not None and revision != expect:
                raise ConflictError(f"{table}/{id} is at revision {revision}, not {expect}")
            body = [
                _set(index_path, loc.encode(), int(index[1].version)),
                protocol.DeleteRequest(path=index_path, version=int(index[1].version) + 1),
                protocol.DeleteRequest(path=data_path, version=int(data[1].version)),
            ]
            try:
                zxid = await self._write(table, id, loc, body, "delete", data[0], 1)
            except (_Retry, exc.BadVersion, exc.NoNode):
                continue
            topic = None if loc == "n" else loc[2:]
            return Entry(table, id, topic, data[0], zxid)
        raise ConflictError(f"{table}/{id} keeps changing; delete gave up")

    async def list(self, table: str, topic: str | None = None) -> Listing:
        """The data nodes of the scope, brought to one revision: nodes are read one by one,
        so the changes logged while reading are applied on top (read from the logs)."""
        before = await self.current_revision()
        locs = [_location(topic)] if topic is not None else await self._locations(table)
        entries: dict[str, Entry] = {}
        for loc in locs:
            base = self._p("d", table, loc)
            shards = await self._children(base)
            per_shard = await asyncio.gather(*(self._children(f"{base}/{shard}") for shard in shards))
            paths = [f"{base}/{shard}/{id}" for shard, ids in zip(shards, per_shard, strict=True) for id in ids]
            for start in range(0, len(paths), _LIST_BATCH):
                batch = paths[start : start + _LIST_BATCH]
                for path, got in zip(batch, await asyncio.gather(*(self._get(p) for p in batch)), strict=True):
                    if got is not None:
                        id = path.rsplit("/", 1)[1]
                        t = None if loc == "n" else loc[2:]
                        entries[id] = Entry(table, id, t, got[0], int(got[1].last_modified_zxid))
        after = await self.current_revision()
        revision = before
        if after > before:
            source = ZooKeeperSource(self, [table], None if topic is None else [topic], before)
            try:
                await source.start()
                events, revision = await source.catch_up(after)
                for event in events:
                    held = entries.get(event.id)
                    if held is not None and held.revision >= event.revision:
                        continue
                    if event.action == "delete":
                        entries.pop(event.id, None)
                    elif event.action == "resync":
                        return await self.list(table, topic)
                    else:
                        entries[event.id] = Entry(table, event.id, event.topic, event.value or b"", event.revision)
            finally:
                await source.aclose()
        return Listing(builtins.list(entries.values()), revision, self._identity)

    async def _locations(self, table: str, watch: bool = False) -> builtins.list[str]:
        """Every LOC of ``table`` that has a change log."""
        topics = await self._children(self._p("l", table, "t"), watch=watch)
        locs = [f"t/{t}" for t in topics]
        if await self._get(self._p("l", table, "n")) is not None:
            locs.append("n")
        return locs

    async def watch(
        self,
        tables: Collection[str],
        topics: Collection[str | None] | None = None,
        since: int | None = None,
    ) -> EventSource:
        self._client()
        if since is None:
            since = await self.current_revision()
        source = ZooKeeperSource(self, sorted(set(tables)), topics, since)
        await source.start()
        return self._track(source)

    async def allocate_unique_key(self, table: str) -> int:
        """The new version of a counter node, set unconditionally: one round trip, no retries
        under contention (a node's version is a 32-bit counter: 2**31 keys per table)."""
        path = self._p("k", table)
        for _ in range(3):
            try:
                _, reply = await self._send(protocol.SetDataRequest(path=path, data=b"", version=-1))
                return int(reply.stat.version)
            except exc.NoNode:
                await self._ensure(path)
        raise BackendUnavailableError(f"{self.url}: cannot create the key counter {path}")

    async def compact(self) -> None:
        for table in await self._children(self._p("l")):
            for loc in await self._locations(table):
                log_path = self._log(table, loc)
                bucket, trim, version = await self._log_state(log_path, fresh=True)
                replies = await self._multi(
                    [
                        _set(log_path, json.dumps({"b": bucket + 1, "trim": trim}).encode(), version),
                        self._create(self._bucket(log_path, bucket + 1), b""),
                    ]
                )
                self._logs.pop(log_path, None)
                if not any(isinstance(r, Exception) for r in replies):
                    await self._prune(log_path, bucket + 1)


def _keep_repairing(session: Any) -> None:
    """Start the session's repair loop again if it ended (it never should: reported)."""
    task = session.repair_loop_task
    if task is None or not task.done() or session.closing or not session.started:
        return
    if not task.cancelled() and task.exception() is not None:
        log.error("ZooKeeper repair loop ended: %r; started again", task.exception())
    session.repair_loop_task = asyncio.create_task(session.repair_loop())


def _repair(session: Any, *, lost: bool) -> None:
    """aiozk: a connection the server closed (or a session it expired) is noticed only when
    a request fails, and the session stays "connected"; hand it to the repair loop."""
    if session.state in (States.CONNECTED, States.READ_ONLY):
        if session.conn is not None:
            session.conn.abort()
        session.state.transition_to(States.LOST if lost else States.SUSPENDED)


def _close_later(conn: Any, tasks: set[asyncio.Task[Any]], timeout: float) -> None:
    task = asyncio.create_task(conn.close(timeout))
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _repair_loop(session: Any, tasks: set[asyncio.Task[Any]], auth: bytes | None) -> None:
    """aiozk: its repair loop re-sets the watches through ``Session.send``, which waits for
    a connected state that only the repair loop itself can bring back, so a connection lost
    at that moment stalls the session for good (and any other error ends the loop). This
    one sends the session's own requests on the new connection under a time-out and starts
    over on any failure; it also re-sends the digest credentials, which ZooKeeper holds per
    connection."""
    while not session.closing:
        await session.state.wait_for(States.SUSPENDED, States.LOST)
        if session.closing:
            return
        log.info("ZooKeeper session %s: %s, reconnecting", hex(session.session_id or 0), session.state.current_state)
        await session.find_server(allow_read_only=session.allow_read_only)
        conn = session.conn
        try:
            await asyncio.wait_for(session.establish_session(), session.timeout)
        except (exc.ZKError, OSError, TimeoutError) as error:
            log.info("ZooKeeper session at %s:%s not re-established: %r", conn.host, conn.port, error)
            conn.abort(exc.SessionLost)
            _close_later(conn, tasks, 0.1)
            if isinstance(error, exc.SessionLost):  # expired or refused: the next one is new
                session.session_id, session.password = None, b"\x00"
            continue
        conn.start_read_loop()
        conn.read_loop_task.add_done_callback(functools.partial(_connection_ended, session, conn))
        try:
            async with asyncio.timeout(session.timeout):
                if auth is not None:
                    await conn.send(protocol.AuthRequest(type=0, scheme="digest", auth=auth))
                await _set_watches(session, conn)
        except (exc.ZKError, OSError, TimeoutError) as error:
            log.info("ZooKeeper connection to %s:%s lost while set up: %r", conn.host, conn.port, error)
            conn.abort()
            continue
        session.state.transition_to(States.READ_ONLY if conn.start_read_only else States.CONNECTED)
        log.info("ZooKeeper session %s connected to %s:%s", hex(session.session_id or 0), conn.host, conn.port)


def _connection_ended(session: Any, conn: Any, _task: object) -> None:
    """aiozk: a read loop that meets the end of the stream (a server killed or restarted)
    returns quietly, and requests sent afterwards wait for their time-out; fail them now
    and hand the session to the repair loop."""
    if conn.closing or session.closing:
        return
    conn.abort()
    if session.conn is conn:
        _repair(session, lost=False)


async def _set_watches(session: Any, conn: Any) -> None:
    """Re-register the session's watches after a reconnection (changes after the last zxid seen fire)."""
    request = protocol.SetWatchesRequest(
        relative_zxid=session.last_zxid or 0, data_watches=[], exist_watches=[], child_watches=[]
    )
    for event_type, path in session.watch_callbacks:
        if event_type == protocol.WatchEvent.CREATED:
            request.exist_watches.append(path)
        elif event_type == protocol.WatchEvent.DATA_CHANGED:
            request.data_watches.append(path)
        elif event_type == protocol.WatchEvent.CHILDREN_CHANGED:
            request.child_watches.append(path)
    if request.exist_watches or request.data_watches or request.child_watches:
        session.xid = session.xid + 1 if session.xid < 0x7FFFFFFF else 1
        await conn.send(request, xid=session.xid)


async def _find_server(session: Any, tasks: set[asyncio.Task[Any]], allow_read_only: bool) -> None:
    """aiozk: its own ``find_server`` backs off exponentially up to 60 s between rounds of
    connection attempts; a restarted server would wait that long. This one uses dfdb's
    backoff (at most 2 s)."""
    backoff = Backoff()
    attempt = 0
    while True:
        for host, port in random.sample(session.hosts, len(session.hosts)):
            conn = await session.make_connection(host, port)
            if conn is None:
                continue
            if conn.start_read_only and not allow_read_only:
                _close_later(conn, tasks, session.timeout)
                continue
            old, session.conn = session.conn, conn
            if old is not None:
                _close_later(old, tasks, session.timeout)
            return
        await asyncio.sleep(backoff.delay(attempt))
        attempt += 1


def _set(path: str, data: bytes, version: int) -> Any:
    return protocol.SetDataRequest(path=path, data=data, version=version)


@dataclass
class _Log:
    """The reading position in one change log."""

    path: str
    table: str
    topic: str | None
    bucket: int = 0
    seq: int = 0
    frontier: int = 0
    """Every change of this log up to here has been read."""
    dirty: bool = True
    armed: builtins.list[tuple[int, str]] = field(default_factory=builtins.list)


class ZooKeeperSource(EventSource):
    """Reads change logs after a position, woken by watches; see the module documentation."""

    def __init__(
        self,
        driver: ZooKeeperDriver,
        tables: builtins.list[str],
        topics: Collection[str | None] | None,
        since: int,
    ) -> None:
        self._driver = driver
        self._tables = tables
        self._topics = None if topics is None else set(topics)
        self._since = since
        self._logs: dict[str, _Log] = {}
        self._buffer: builtins.list[tuple[int, int, RawEvent]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._discover = topics is None
        self._closed = False
        self._backoff = Backoff()
        self._session: Any = None
        self._identity = driver._identity
        self._callbacks: dict[tuple[int, str], Any] = {}
        self._resync_at = 0
        self._idle_frontier = since
        """Change nodes read from the server."""

    @property
    def position(self) -> int:
        """Every change at or below this revision has been returned."""
        delivered = self._read_up_to()
        if self._buffer:
            delivered = min(delivered, self._buffer[0][0] - 1)
        return delivered

    def caught_up(self) -> int:
        return self.position

    def _push(self, event: RawEvent) -> None:
        heapq.heappush(self._buffer, (event.revision, next(self._seq), event))

    def _dirty(self, key: str) -> Any:
        def mark(_path: str) -> None:
            target = self._logs.get(key)
            if target is not None:
                target.dirty = True
            elif key == "":
                self._discover = True
            self._wake.set()

        return mark

    async def start(self) -> None:
        """Find every log's position after ``since``; subscribed when this returns."""
        if self._topics is not None:
            for table in self._tables:
                for topic in self._topics:
                    await self._add_log(table, topic, self._since)
        await self._round()

    async def _add_log(self, table: str, topic: str | None, since: int) -> None:
        path = self._driver._log(table, _location(topic))
        if path in self._logs:
            return
        entry = _Log(path, table, topic, frontier=since)
        self._logs[path] = entry
        await self._seek(entry, since)

    async def _seek(self, entry: _Log, since: int) -> None:
        """Place ``entry`` at its first change after ``since`` (binary search by czxid)."""
        driver = self._driver
        found = await driver._get(entry.path)
        if found is None:
            entry.bucket, entry.seq = 0, 0
            return
        meta = json.loads(found[0] or b"{}")
        current, trim = int(meta.get("b", 0)), int(meta.get("trim", 0))
        if since < trim:
            self._lost(entry, trim)
            return
        buckets = sorted(int(n[1:]) for n in await driver._children(entry.path))
        chosen = buckets[0] if buckets else current  # the last bucket made at or before `since`
        for number in buckets:
            stat = await driver._get(driver._bucket(entry.path, number))
            if stat is not None and int(stat[1].created_zxid) > since:
                break
            chosen = number
        bucket_path = driver._bucket(entry.path, chosen)
        stat = await driver._get(bucket_path)
        size = int(stat[1].child_version) if stat is not None else 0
        low, high = 0, size
        while low < high:  # the first sequence number whose change is after `since`
            mid = (low + high) // 2
            got = await driver._get(f"{bucket_path}/c{mid:010d}")
            if got is None or int(got[1].created_zxid) > since:
                high = mid
            else:
                low = mid + 1
        entry.bucket, entry.seq = chosen, low

    def _lost(self, entry: _Log, trim: int) -> None:
        log.info("change log %s was pruned past position %d", entry.path, entry.frontier)
        self._resync_at = max(self._resync_at, trim)

    def _read_up_to(self) -> int:
        """Every change at or below this revision has been read (returned or buffered)."""
        return min((lg.frontier for lg in self._logs.values()), default=self._idle_frontier)

    async def catch_up(self, revision: int) -> tuple[builtins.list[RawEvent], int]:
        """Read every log up to at least ``revision``. Returns the events up to the
        position reached (in revision order) and that position."""
        while self._read_up_to() < revision and not self._closed:
            for entry in self._logs.values():
                entry.dirty = True
            await self._round()
            if self._resync_at:  # pruned while listing: the caller starts again
                return [RawEvent.resync(self._resync_at)], 0
        reached = self._read_up_to()
        events = []
        while self._buffer and self._buffer[0][0] <= reached:
            events.append(heapq.heappop(self._buffer)[2])
        return events, reached

    async def _round(self) -> None:
        """Read every dirty log to its end and re-arm its watches; then every clean log is
        complete up to the last reply."""
        driver = self._driver
        zk = driver._client()
        session = (zk.session.session_id, id(zk.session.conn))
        if session != self._session:  # a new connection or session: watches may have been lost
            if self._session is not None and await driver.identity() != self._identity:
                self._resync_at = await driver.current_revision()  # a server that lost its data
                self._identity = driver._identity
                return
            self._session = session
            for entry in self._logs.values():
                entry.dirty = True
            self._discover = self._topics is None
        if self._discover:
            self._discover = False
            for table in self._tables:
                for key in [
                    (protocol.WatchEvent.CHILDREN_CHANGED, driver._p("l", table, "t")),
                    (protocol.WatchEvent.CREATED, driver._p("l", table, "n")),
                ]:
                    if key not in self._callbacks:
                        self._callbacks[key] = self._dirty("")
                        zk.session.add_watch_callback(key[0], key[1], self._callbacks[key])
                try:
                    await driver._send(protocol.ExistsRequest(path=driver._p("l", table, "n"), watch=True))
                except exc.NoNode:
                    pass
                await driver._ensure(driver._p("l", table, "t"))
                for loc in await driver._locations(table, watch=True):
                    topic = None if loc == "n" else loc[2:]
                    await self._add_log(table, topic, self._since)
        last = 0
        for entry in builtins.list(self._logs.values()):
            if entry.dirty:
                last = max(last, await self._read_log(entry))
        if self._resync_at:
            return
        last = max(last, await driver.current_revision())
        self._idle_frontier = max(self._idle_frontier, last)
        for entry in self._logs.values():
            if not entry.dirty:
                entry.frontier = max(entry.frontier, last)

    async def _read_log(self, entry: _Log) -> int:
        """Read ``entry`` from its position to its end and arm its watches; returns the
        zxid up to which it is complete."""
        driver = self._driver
        zk = driver._client()
        entry.dirty = False
        while True:
            bucket_path = driver._bucket(entry.path, entry.bucket)
            paths = [f"{bucket_path}/c{entry.seq + k:010d}" for k in range(_READ_AHEAD)]
            found = await asyncio.gather(*(driver._get(p) for p in paths))
            for got in found:
                if got is None:
                    break
                self._take(entry, got)
                entry.seq += 1
            if found[-1] is not None:
                continue  # more to read
            next_path = f"{bucket_path}/c{entry.seq:010d}"
            for key in entry.armed:
                with contextlib.suppress(Exception):
                    zk.session.remove_watch_callback(key[0], key[1], self._callbacks.pop(key))
            entry.armed = [(protocol.WatchEvent.CREATED, next_path), (protocol.WatchEvent.DATA_CHANGED, entry.path)]
            for key in entry.armed:
                callback = self._dirty(entry.path)
                self._callbacks[key] = callback
                zk.session.add_watch_callback(key[0], key[1], callback)
            try:
                zxid, _ = await driver._send(protocol.ExistsRequest(path=next_path, watch=True))
                continue  # it appeared meanwhile
            except exc.NoNode:
                pass
            meta = await driver._get(entry.path, watch=True)
            if meta is None:  # no log yet: it starts at bucket 0
                return await driver.current_revision()
            data = json.loads(meta[0] or b"{}")
            if int(data.get("b", 0)) > entry.bucket:  # the log moved on: this bucket is closed
                if await driver._get(next_path) is not None:
                    continue
                if await driver._get(bucket_path) is None and int(data.get("trim", 0)) > entry.frontier:
                    self._lost(entry, int(data["trim"]))  # pruned before this reader got to it
                    return 0
                entry.bucket, entry.seq = entry.bucket + 1, 0
                continue
            zxid = await driver.current_revision()
            if not entry.dirty:  # no watch fired before this reply: complete up to it
                entry.frontier = max(entry.frontier, zxid)
            return zxid

    def _take(self, entry: _Log, got: tuple[bytes, Any]) -> None:
        data, stat = got
        revision = int(stat.created_zxid)
        self.records_read += 1
        self.bytes_read += len(data)
        if revision <= entry.frontier:
            return
        entry.frontier = revision
        code, _, rest = data.partition(b"\n")
        raw_id, _, value = rest.partition(b"\n")
        action = _ACTIONS.get(code)
        if action is None:
            log.warning("skipping malformed change %s/c%010d of %s", entry.path, entry.seq, entry.table)
            return
        typed: RawAction = action  # type: ignore[assignment]
        self._push(RawEvent(typed, entry.table, raw_id.decode(errors="replace"), entry.topic, value, revision))

    async def __anext__(self) -> RawEvent:
        failures = 0
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._resync_at:
                return await self._restart(self._resync_at)
            if self._buffer:
                return heapq.heappop(self._buffer)[2]
            try:
                if not any(entry.dirty for entry in self._logs.values()) and not self._discover:
                    self._wake.clear()
                    try:
                        async with asyncio.timeout(self._driver.idle):
                            await self._wake.wait()
                    except TimeoutError:  # a safety re-read of every log
                        for entry in self._logs.values():
                            entry.dirty = True
                await self._round()
                checkpoint()
                failures = 0
                identity = self._driver._identity
                if identity != self._identity and identity is not None:
                    self._identity = identity
                    return await self._restart(await self._driver.current_revision(), identity)
            except (BackendUnavailableError, exc.ZKError, OSError) as error:
                raise_if_cancelling(error)
                if self._closed:
                    raise StopAsyncIteration from None
                await self._backoff.pause(failures, "reading the zookeeper change logs", error)
                failures += 1
                for entry in self._logs.values():
                    entry.dirty = True

    async def _restart(self, revision: int, identity: str | None = None) -> RawEvent:
        """History is gone: start every log after ``revision`` and say so."""
        self._resync_at = 0
        self._buffer.clear()
        now = max(revision, await self._driver.current_revision())
        for entry in self._logs.values():
            entry.frontier = now
            await self._seek(entry, now)
            entry.dirty = True
        self._since = now
        return RawEvent.resync(now, identity)

    async def add_topics(self, topics: Collection[str | None], since: int) -> None:
        if self._topics is None:
            return
        for topic in topics:
            if topic in self._topics:
                continue
            self._topics.add(topic)
            for table in self._tables:
                await self._add_log(table, topic, since)
        self._wake.set()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        zk = self._driver._zk
        if zk is not None:
            for (event_type, path), callback in self._callbacks.items():
                with contextlib.suppress(Exception):
                    zk.session.remove_watch_callback(event_type, path, callback)
        self._callbacks.clear()
        self._wake.set()
