"""The client calls: one request at a time on the session's connection, under dfdb's
time-out, with ZooKeeper's errors mapped to dfdb's.

aiozk 0.32 bugs worked around here: ``ZKClient.send`` keeps only the latest zxid and
retries forever; version-checked deletes and sets are sent raw (the client otherwise uses
versions from its own cache); ``Transaction.commit`` hides which operation of a failed
``multi`` failed; a ``multi`` says it writes nothing, and must never be re-sent after a
lost reply.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import Callable
from typing import Any

from aiozk import exc, protocol

from dfdb.drivers.zookeeper.reads import MultiReadRequest, NodeRead, check_reply
from dfdb.drivers.zookeeper.session import SessionRepair
from dfdb.drivers.zookeeper.tls import RefusedError, start_session, tls_failure_of
from dfdb.errors import AuthenticationError, BackendUnavailableError, DfdbError, DriverError, StreamClosedError
from dfdb.retry import raise_if_cancelling
from dfdb.tls import describe_tls_failure
from dfdb.url import Secret

__all__ = ["Calls", "WatchKey"]

log = logging.getLogger(__name__)

_CONNECTION_LOST = (exc.ConnectError, exc.TimeoutError, exc.ConnectionLoss, exc.SessionExpired, exc.SessionLost,
                    exc.UnfinishedRead)  # fmt: skip
_UNAVAILABLE = (exc.ConnectError, exc.SessionLost, exc.TimeoutError, exc.ConnectionLoss, exc.OperationTimeout,
                exc.SessionExpired, exc.UnfinishedRead, exc.NoServersError, ConnectionError, TimeoutError)  # fmt: skip

WatchKey = tuple[int, str]
"""A watch: ``(protocol.WatchEvent type, path)``."""


class Calls:
    """The requests dfdb sends to ZooKeeper, on one session.

    Args:
        url: shown in errors (its password masked).
        servers: ``host:port,…``.
        session_timeout: the session's time-out, seconds.
        timeout: each call's time-out, seconds.
        auth: digest credentials (``user:password``), or ``None``.
        identity_path: the node naming this dataset.
    """

    def __init__(
        self, url: object, servers: str, session_timeout: float, timeout: float, auth: bytes | None, identity_path: str
    ) -> None:
        self.url = url
        self.servers = servers
        self.session_timeout = session_timeout
        self.timeout = timeout
        self._auth = None if auth is None else Secret(auth.decode())
        self.identity_path = identity_path
        self.tls: tuple[ssl.SSLContext, str | None] | None = None
        """TLS for every connection: a context and the server name, or ``None``."""
        # with credentials, dfdb's nodes are for that user alone ("auth": whoever created them)
        self.acl = [protocol.UNRESTRICTED_ACCESS if auth is None else protocol.AUTHED_UNRESTRICTED]
        self.known_identity: str | None = None
        """The dataset's identity as last read."""
        self._repair: SessionRepair | None = None
        self._ensured: set[str] = set()  # nodes made or found by ensure in the session below
        self._ensured_in: int | None = None
        self._closed = False
        self.multi_read: bool | None = None
        """Whether the server answers ``multiRead`` (``None``: not tried yet)."""

    @property
    def auth(self) -> bytes | None:
        """The digest credentials (``user:password``), kept masked (a :class:`~dfdb.url.Secret`)."""
        return None if self._auth is None else self._auth.reveal().encode()

    # ------------------------------------------------------------ connection
    async def open(self) -> None:
        """Start a session and read the identity.

        Raises:
            BackendUnavailableError: no server answered within the time-out.
            AuthenticationError: the servers' TLS certificates were not accepted, or a
                server speaks TLS and the URL does not (or the reverse).
        """
        if self._repair is not None:
            return
        self._repair = SessionRepair.client(self.servers, self.session_timeout, self.auth, self.tls, self.timeout)
        log.debug("ZooKeeper: connecting to %s", self.servers)
        try:
            async with asyncio.timeout(self.timeout):
                await start_session(self._repair.zk.session)
            if self.auth is not None:
                await self.send(protocol.AuthRequest(type=0, scheme="digest", auth=self.auth))
            await self.identity()
        except RefusedError as error:
            await self.close()
            raise AuthenticationError(f"{self.url}: {error}") from None
        except BaseException as error:
            failure = tls_failure_of(self._repair.zk.session) if self._repair is not None else None
            await self.close()
            if isinstance(error, TimeoutError | OSError | exc.ZKError) and not isinstance(error, DfdbError):
                if failure is not None:
                    raise AuthenticationError(f"{self.url}: {describe_tls_failure(failure)}") from None
                raise BackendUnavailableError(f"{self.url}: cannot connect to {self.servers}") from None
            raise
        log.debug("ZooKeeper: connected to %s, session %s", self.servers, hex(self.session_id or 0))

    async def close(self) -> None:
        """Close the session; idempotent."""
        self._closed = True
        repair, self._repair = self._repair, None
        if repair is not None:
            await repair.close()

    def _session(self) -> Any:
        if self._repair is None:
            if self._closed:
                raise StreamClosedError(f"the {self.url} driver is closed")
            raise RuntimeError("the driver is not open; use 'async with' or 'await open()'")
        return self._repair.session

    @property
    def session_id(self) -> int | None:
        """The current session's id (``None`` while none is established)."""
        return None if self._repair is None else (self._repair.session.session_id or None)

    def connection(self) -> tuple[int, int]:
        """Names the session and connection now in use: watches set on another may be lost."""
        session = self._session()
        return session.session_id, id(session.conn)

    def add_watch(self, key: WatchKey, callback: Callable[[str], None]) -> None:
        """Call ``callback(path)`` when the watch ``key`` fires (it is set by a request)."""
        self._session().add_watch_callback(key[0], key[1], callback)

    def remove_watch(self, key: WatchKey, callback: Callable[[str], None]) -> None:
        """Forget a callback of :meth:`add_watch`; nothing happens when it is not there."""
        if self._repair is None:
            return
        session = self._repair.session
        if callback in session.watch_callbacks.get(key, ()):
            session.remove_watch_callback(key[0], key[1], callback)

    # ------------------------------------------------------------ requests
    async def send(self, request: Any, check: Callable[[], None] | None = None) -> tuple[int, Any]:
        """One request with a time-out; returns the reply's zxid and the reply. ``check``
        runs right before the request is written to the connection (nothing is sent when
        it raises).

        Raises:
            exc.NoNode, exc.NodeExists, exc.BadVersion, exc.NotEmpty, exc.Unimplemented:
                as the server said.
            BackendUnavailableError: no reply within the time-out, or the connection was
                lost during a write (which may or may not have happened).
            DriverError: any other refusal.
        """
        repair = self._repair
        session = self._session()
        assert repair is not None
        # aiozk: a TransactionRequest says it writes nothing (writes_data False); a multi
        # whose reply was lost must not be sent again
        writing = bool(request.writes_data) or isinstance(request, protocol.TransactionRequest)
        conn = None
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    repair.keep_repairing()
                    await session.ensure_safe_state(writing=writing)
                    conn = session.conn
                    if conn.read_loop_task is None or conn.read_loop_task.done():
                        repair.repair(lost=False)  # nothing reads its replies any more
                        await asyncio.sleep(0.05)
                        continue
                    if check is not None:
                        check()
                    session.xid = session.xid + 1 if session.xid < 0x7FFFFFFF else 1
                    try:
                        zxid, response = await conn.send(request, xid=session.xid)
                    except _CONNECTION_LOST as error:
                        repair.repair(lost=isinstance(error, exc.SessionExpired | exc.SessionLost))
                        if writing:  # it may or may not have been applied
                            raise BackendUnavailableError(f"{self.url}: connection lost during a write") from None
                        log.debug("ZooKeeper: %s lost its connection (%r); sending it again", type(request).__name__,
                                  error)  # fmt: skip
                        await asyncio.sleep(0.05)
                        continue
                    session.last_zxid = max(session.last_zxid or 0, zxid)
                    session.set_heartbeat()
                    return int(zxid), response
        except (exc.NoNode, exc.NodeExists, exc.BadVersion, exc.NotEmpty, exc.Unimplemented):
            raise
        except _UNAVAILABLE as error:
            raise_if_cancelling(error)
            if isinstance(error, TimeoutError) and conn is not None and conn is session.conn:
                repair.repair(lost=False)  # no reply within the time-out: a new connection for the next call
            raise BackendUnavailableError(f"{self.url}: {type(error).__name__}: {error or 'no reply'}") from None
        except exc.NoAuth:
            raise AuthenticationError(f"{self.url}: not allowed (check the user and password)") from None
        except exc.ZKError as error:
            raise DriverError(f"{self.url}: {type(error).__name__}: {error}") from None

    async def get(self, path: str, watch: bool = False) -> tuple[bytes, Any] | None:
        """The node's data and stat, ``None`` when absent."""
        return (await self.get_at(path, watch))[1]

    async def get_at(self, path: str, watch: bool = False) -> tuple[int, tuple[bytes, Any] | None]:
        """The zxid the server had applied when it read the node (0 when the node is
        absent: an error reply does not say), and the node's data and stat (``None``: absent)."""
        try:
            zxid, reply = await self.send(protocol.GetDataRequest(path=path, watch=watch))
        except exc.NoNode:
            return 0, None
        return zxid, (bytes(reply.data or b""), reply.stat)

    async def get_many(self, paths: list[str]) -> list[NodeRead] | None:
        """The data and ``mzxid`` of each node of ``paths`` (``None``: absent), read in one
        request (``multiRead``); ``None`` when the server has no ``multiRead`` (before 3.6:
        remembered while the driver is open) or a read failed otherwise than by absence
        (:meth:`get` then tells why)."""
        return await self._multi_read(MultiReadRequest(paths))

    async def children_many(self, paths: list[str]) -> list[list[str]] | None:
        """The children of each node of ``paths``, sorted (``[]``: absent), read in one
        request (``multiRead``); ``None`` as for :meth:`get_many` (:meth:`children` then)."""
        nodes = await self._multi_read(MultiReadRequest(paths, children=True))
        return None if nodes is None else [[] if names is None else sorted(names) for names in nodes]

    async def _multi_read(self, request: MultiReadRequest) -> list[Any] | None:
        if self.multi_read is False:
            return None
        try:
            _, reply = await self.send(request)
            nodes = check_reply(reply, request.paths)
        except exc.Unimplemented:
            log.info("ZooKeeper: %s has no multiRead; nodes are read one by one", self.servers)
            self.multi_read = False
            return None
        self.multi_read = True
        return nodes

    async def exists(self, path: str, watch: bool = False) -> int | None:
        """The reply's zxid when the node exists, else ``None`` (an ``exists`` watch is set either way)."""
        try:
            zxid, _ = await self.send(protocol.ExistsRequest(path=path, watch=watch))
        except exc.NoNode:
            return None
        return zxid

    async def children(self, path: str, watch: bool = False) -> list[str]:
        """The node's children, sorted; ``[]`` when absent."""
        try:
            _, reply = await self.send(protocol.GetChildrenRequest(path=path, watch=watch))
        except exc.NoNode:
            return []
        return sorted(reply.children)

    async def ensure(self, path: str, *, gone: bool = False) -> None:
        """Create ``path`` and its parents as plain persistent nodes where missing. The nodes
        made or found are remembered for the session only: a server back without its data
        starts a new one. ``gone``: a request just missed one of them (another program removed
        it), so each is checked again."""
        if self.session_id != self._ensured_in:
            self._ensured.clear()
            self._ensured_in = self.session_id
        if gone:
            parts = path.strip("/").split("/")
            self._ensured.difference_update("/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1))
        if path in self._ensured:
            return
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            sub = "/" + "/".join(parts[:i])
            if sub in self._ensured:
                continue
            try:
                await self.send(self.create(sub, b""))
            except exc.NodeExists:
                pass
            self._ensured.add(sub)

    async def multi(self, ops: list[Any], check: Callable[[], None] | None = None) -> list[Any]:
        """One transaction; returns each operation's reply or error (``check``: see :meth:`send`).

        aiozk: ``Transaction.commit`` reports only success or failure; the raw reply
        names the operation that failed.
        """
        request = protocol.TransactionRequest()
        for op in ops:
            request.add(op)
        _, reply = await self.send(request, check)
        return list(reply.responses)

    def create(self, path: str, data: bytes, *, sequential: bool = False) -> Any:
        """A create request for a persistent node with dfdb's ACL."""
        request = protocol.CreateRequest(path=path, data=data, acl=self.acl)
        request.set_flags(False, sequential, False)
        return request

    @staticmethod
    def set(path: str, data: bytes, version: int) -> Any:
        """A set request checked against ``version`` (``-1``: any)."""
        return protocol.SetDataRequest(path=path, data=data, version=version)

    @staticmethod
    def delete(path: str, version: int) -> Any:
        """A delete request checked against ``version`` (``-1``: any)."""
        return protocol.DeleteRequest(path=path, version=version)

    async def current_revision(self) -> int:
        """The zxid of the last transaction the server has applied."""
        zxid, _ = await self.send(protocol.ExistsRequest(path="/", watch=False))
        return zxid

    async def identity(self) -> str:
        """The dataset's identity, created on first use."""
        path = self.identity_path
        found = await self.get(path)
        if found is None:
            await self.ensure(path.rsplit("/", 1)[0])
            fresh = f"zk-{uuid.uuid4().hex[:16]}".encode()
            try:
                await self.send(self.create(path, fresh))
            except exc.NodeExists:
                pass
            found = await self.get(path)
            if found is None:
                raise BackendUnavailableError(f"{self.url}: the identity node keeps disappearing")
        self.known_identity = found[0].decode()
        return self.known_identity
