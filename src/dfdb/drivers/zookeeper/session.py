"""Session repair around aiozk: finding a server, re-establishing a session, noticing a
connection that ended.

aiozk 0.32 bugs worked around here: its ``find_server`` backs off up to 60 s; its repair
loop re-sets the watches through ``Session.send``, which waits for a state only the loop
itself brings back, so a connection lost at that moment stalls the session for good; a
read loop that meets the end of the stream returns quietly and requests sent afterwards
wait for their time-out; its handshake waits for the server's answer without a time-out;
ZooKeeper holds digest credentials per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
from typing import Any

from aiozk import ZKClient, exc, protocol
from aiozk.states import States

from dfdb.drivers.zookeeper.tls import use_tls
from dfdb.retry import Backoff
from dfdb.url import Secret

__all__ = ["SessionRepair"]

log = logging.getLogger(__name__)

_HANDSHAKE_TIMEOUT = 3.0
"""Seconds a server has to answer a new connection's handshake."""


class _ExpectedRefusals(logging.Filter):
    """Keeps out of the logs aiozk's error record, with its traceback, for every connection a
    server refused or did not answer: dfdb retries those and logs them itself (at debug level).
    Installed on aiozk's ``aiozk.session`` logger by the ZooKeeper driver; other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        refused = isinstance(error, OSError | TimeoutError | EOFError)
        return not (refused and str(record.msg).startswith("Couldn't connect to"))


def _quiet_refusals() -> None:
    """Install :class:`_ExpectedRefusals` on aiozk's session logger, once."""
    logger = logging.getLogger("aiozk.session")
    if not any(isinstance(f, _ExpectedRefusals) for f in logger.filters):
        logger.addFilter(_ExpectedRefusals())


class SessionRepair:
    """Installs dfdb's repair on an aiozk client's session and owns the tasks it starts.

    Args:
        zk: the client, not started yet.
        auth: digest credentials (``user:password``) sent on every new connection.
    """

    def __init__(self, zk: Any, auth: bytes | None) -> None:
        self.zk = zk
        self._auth = None if auth is None else Secret(auth.decode())
        self.tasks: set[asyncio.Task[Any]] = set()
        session = zk.session
        session.find_server = self._find_server
        session.repair_loop = self._repair_loop

    @property
    def auth(self) -> bytes | None:
        """The digest credentials (``user:password``), kept masked (a :class:`~dfdb.url.Secret`)."""
        return None if self._auth is None else self._auth.reveal().encode()

    @classmethod
    def client(
        cls,
        servers: str,
        session_timeout: float,
        auth: bytes | None,
        tls: tuple[ssl.SSLContext, str | None] | None = None,
        within: float | None = None,
    ) -> SessionRepair:
        """A new aiozk client for ``servers`` with dfdb's repair installed (and TLS: a
        context and the server name its certificate must carry); a refusal (a certificate,
        the other protocol) is said within ``within`` seconds when given."""
        _quiet_refusals()
        zk = ZKClient(servers, session_timeout=session_timeout, read_timeout=session_timeout)
        context, server_name = tls or (None, None)
        use_tls(zk.session, context, server_name, within)
        return cls(zk, auth)

    @property
    def session(self) -> Any:
        """The aiozk session."""
        return self.zk.session

    def keep_repairing(self) -> None:
        """Start the session's repair loop again if it ended (it never should: reported)."""
        session = self.session
        task = session.repair_loop_task
        if task is None or not task.done() or session.closing or not session.started:
            return
        if not task.cancelled() and task.exception() is not None:
            log.error("ZooKeeper repair loop ended: %r; started again", task.exception())
        session.repair_loop_task = asyncio.create_task(session.repair_loop())

    def repair(self, *, lost: bool) -> None:
        """aiozk: a connection the server closed (or a session it expired) is noticed only
        when a request fails, and the session stays "connected"; hand it to the repair loop."""
        session = self.session
        if session.state in (States.CONNECTED, States.READ_ONLY):
            log.debug("ZooKeeper session %s: connection %s, repairing", hex(session.session_id or 0),
                      "and session lost" if lost else "lost")  # fmt: skip
            if session.conn is not None:
                session.conn.abort()
            session.state.transition_to(States.LOST if lost else States.SUSPENDED)

    def _close_later(self, conn: Any, timeout: float) -> None:
        task = asyncio.create_task(conn.close(timeout))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _find_server(self, allow_read_only: bool) -> None:
        """aiozk: its own ``find_server`` backs off exponentially up to 60 s between rounds of
        connection attempts; a restarted server would wait that long. This one uses dfdb's
        backoff (at most 2 s)."""
        session = self.session
        backoff = Backoff()
        attempt = 0
        while True:
            for host, port in random.sample(session.hosts, len(session.hosts)):
                try:  # aiozk: its handshake reads the 'srvr' answer without a time-out
                    conn = await asyncio.wait_for(session.make_connection(host, port), _HANDSHAKE_TIMEOUT)
                except TimeoutError:
                    log.debug("ZooKeeper server %s:%s did not answer its handshake", host, port)
                    conn = None
                if conn is None:
                    log.debug("ZooKeeper server %s:%s not reachable", host, port)
                    continue
                if conn.start_read_only and not allow_read_only:
                    self._close_later(conn, session.timeout)
                    continue
                old, session.conn = session.conn, conn
                if old is not None:
                    self._close_later(old, session.timeout)
                return
            delay = backoff.delay(attempt)
            log.debug("no ZooKeeper server reachable; trying again in %.2fs", delay)
            await asyncio.sleep(delay)
            attempt += 1

    async def _repair_loop(self) -> None:
        """aiozk: its repair loop re-sets the watches through ``Session.send``, which waits for
        a connected state that only the repair loop itself can bring back, so a connection lost
        at that moment stalls the session for good (and any other error ends the loop). This
        one sends the session's own requests on the new connection under a time-out and starts
        over on any failure; it also re-sends the digest credentials, which ZooKeeper holds per
        connection."""
        session = self.session
        while not session.closing:
            await session.state.wait_for(States.SUSPENDED, States.LOST)
            if session.closing:
                return
            if session.session_id:
                log.info("ZooKeeper session %s: %s, reconnecting", hex(session.session_id), session.state.current_state)
            else:
                log.debug("ZooKeeper: connecting a new session")
            await session.find_server(allow_read_only=session.allow_read_only)
            conn = session.conn
            try:
                await asyncio.wait_for(session.establish_session(), session.timeout)
            except (exc.ZKError, OSError, TimeoutError) as error:
                log.info("ZooKeeper session at %s:%s not re-established: %r", conn.host, conn.port, error)
                conn.abort(exc.SessionLost)
                self._close_later(conn, 0.1)
                if isinstance(error, exc.SessionLost):  # expired or refused: the next one is new
                    session.session_id, session.password = None, b"\x00"
                continue
            conn.start_read_loop()
            conn.read_loop_task.add_done_callback(functools.partial(self._connection_ended, conn))
            try:
                async with asyncio.timeout(session.timeout):
                    if self.auth is not None:
                        await conn.send(protocol.AuthRequest(type=0, scheme="digest", auth=self.auth))
                    await _set_watches(session, conn)
            except (exc.ZKError, OSError, TimeoutError) as error:
                log.info("ZooKeeper connection to %s:%s lost while set up: %r", conn.host, conn.port, error)
                conn.abort()
                continue
            session.state.transition_to(States.READ_ONLY if conn.start_read_only else States.CONNECTED)
            log.debug("ZooKeeper session %s connected to %s:%s", hex(session.session_id or 0), conn.host, conn.port)

    def _connection_ended(self, conn: Any, task: asyncio.Task[Any]) -> None:
        """aiozk: a read loop that meets the end of the stream (a server killed or restarted)
        returns quietly, and requests sent afterwards wait for their time-out; fail them now
        and hand the session to the repair loop. A reply to a request the connection already
        failed ends its read loop with a ``KeyError``: read here, so asyncio does not report
        it as never retrieved."""
        if not task.cancelled() and task.exception() is not None:
            log.debug("ZooKeeper connection to %s:%s: read loop ended: %r", conn.host, conn.port, task.exception())
        session = self.session
        if conn.closing or session.closing:
            return
        conn.abort()
        if session.conn is conn:
            self.repair(lost=False)

    async def close(self) -> None:
        """Close the session (abort it when the server does not answer within 2 s, or
        when it never connected) and end the tasks closing old connections."""
        session = self.session
        try:
            if session.conn is None and not session.session_id:  # no server to wait for
                session.closing = True
                await self._abort(session)
                return
            try:
                async with asyncio.timeout(2):
                    await self.zk.close()
            except (TimeoutError, exc.ZKError, OSError):
                await self._abort(session)
        finally:
            closing = list(self.tasks)
            if closing:
                _, late = await asyncio.wait(closing, timeout=1)
                for task in late:
                    task.cancel()
                if late:
                    await asyncio.wait(late)

    @staticmethod
    async def _abort(session: Any) -> None:
        """End aiozk ``session`` without a word to the server."""
        if session.repair_loop_task is not None:
            session.repair_loop_task.cancel()
        if session.heartbeat_handle is not None:
            session.heartbeat_handle.cancel()
        if session.conn is not None:
            session.conn.abort()
            with contextlib.suppress(Exception):
                await session.conn.close(0.1)


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
