"""TLS for aiozk, which has none of its own: its connection, opened with an ``SSLContext``.

ZooKeeper serves TLS on its ``secureClientPort`` (with the Netty connection factory).
aiozk's ``Connection.connect`` opens two plain TCP connections (one for the ``srvr``
handshake, one for the session); :class:`TlsConnection` opens both with TLS, and
:func:`use_tls` makes a session create such connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

from aiozk.connection import Connection

from dfdb.tls import describe_tls_failure, permanent_tls_failure, protocol_mismatch

__all__ = ["RefusedError", "TlsConnection", "start_session", "tls_failure_of", "use_tls"]

log = logging.getLogger(__name__)

_FIRST_PLAIN_WAIT = 1.8
"""Seconds the first plain connection to a server may take: then it is probed for TLS
(within the 3 s a connection has); less when the caller's time-out is shorter."""

_PROBE_WAIT = 0.9
"""Seconds a probe of the other protocol may take; less when the time-out is shorter."""


class TlsConnection(Connection):  # type: ignore[misc]  # aiozk is untyped
    """An aiozk connection over TLS.

    Args:
        context: the client's ``SSLContext``.
        server_name: the name the server's certificate must carry (default: the host).
    """

    def __init__(self, *args: Any, context: ssl.SSLContext, server_name: str | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context = context
        self.server_name = server_name

    async def _open(self) -> None:
        opening = asyncio.open_connection(
            self.host, self.port, ssl=self.context, server_hostname=self.server_name or self.host
        )
        self.reader, self.writer = await asyncio.wait_for(opening, timeout=self.read_timeout)

    async def connect(self) -> None:
        await self._open()
        try:
            await self._make_handshake()
        finally:
            self.writer.close()
        await self._open()


class _Dialer:
    """aiozk's ``Session.make_connection`` (with a :class:`TlsConnection` when there is a
    context; ``None`` on failure, as there); keeps the last TLS failure, for the error a
    time-out becomes, and says when a failure is one retrying cannot mend."""

    def __init__(
        self, session: Any, context: ssl.SSLContext | None, server_name: str | None, within: float | None
    ) -> None:
        self.session = session
        # the first connection and the probe both fit in the caller's time-out ``within``,
        # or its end comes first and the refusal is never said
        self._plain_wait = _FIRST_PLAIN_WAIT if within is None else min(_FIRST_PLAIN_WAIT, within * 0.4)
        self._probe_wait = _PROBE_WAIT if within is None else min(_PROBE_WAIT, within * 0.5)
        self.plain = session.make_connection
        self.context = context
        self.server_name = server_name
        self.failure: ssl.SSLError | None = None
        self.refusal: str | None = None
        """Why the servers cannot be used as the URL says (a certificate refused, the port
        speaking TLS or not); set with ``refused``."""
        self.refused = asyncio.Event()
        self._probed: set[tuple[str, int]] = set()

    async def __call__(self, host: str, port: int) -> Any:
        if self.context is None:
            if (host, port) in self._probed:
                return await self.plain(host, port)
            conn = None
            with contextlib.suppress(TimeoutError):  # a TLS port never answers aiozk's handshake
                async with asyncio.timeout(self._plain_wait):  # leaving time to probe it
                    conn = await self.plain(host, port)
            if conn is None:
                await self._probe(host, port)
            return conn
        session = self.session
        conn = TlsConnection(
            host, port, watch_handler=session.event_dispatch, read_timeout=session.read_timeout,
            context=self.context, server_name=self.server_name,
        )  # fmt: skip
        try:
            await conn.connect()
        except ssl.SSLError as exc:
            self.failure = exc
            log.warning("ZooKeeper server %s:%s: TLS handshake failed: %s", host, port, exc.reason or exc)
            if permanent_tls_failure(exc):
                self._refuse(describe_tls_failure(exc))
            else:
                await self._probe(host, port)
            return None
        except (OSError, ConnectionError, TimeoutError) as exc:
            log.debug("ZooKeeper server %s:%s not reachable over TLS: %r", host, port, exc)
            await self._probe(host, port)
            return None
        self.failure = None
        return conn

    def _refuse(self, reason: str) -> None:
        self.refusal = reason
        self.refused.set()

    async def _probe(self, host: str, port: int) -> None:
        """Once per server: whether it failed because it speaks TLS and the URL does not
        (or the reverse)."""
        if (host, port) in self._probed:
            return
        self._probed.add((host, port))
        tls = self.context is not None
        reason = await protocol_mismatch([(host, port)], tls=tls, request=b"srvr", answers=(b"Zookeeper version",),
                                         within=self._probe_wait)  # fmt: skip
        if reason is not None:
            self._refuse(reason)


def use_tls(session: Any, context: ssl.SSLContext | None, server_name: str | None, within: float | None = None) -> None:
    """Make aiozk ``session`` connect with TLS (with ``context``; without, as aiozk does,
    only telling a server that speaks TLS only), saying a refusal within ``within``
    seconds (the caller's time-out) when given."""
    session.make_connection = _Dialer(session, context, server_name, within)


def tls_failure_of(session: Any) -> ssl.SSLError | None:
    """The last TLS handshake failure of ``session``'s connections, if it uses TLS."""
    dialer = getattr(session, "make_connection", None)
    return dialer.failure if isinstance(dialer, _Dialer) else None


class RefusedError(OSError):
    """The servers cannot be used as the URL says; the message says why."""


async def start_session(session: Any) -> None:
    """Start aiozk ``session``; a certificate refused by either side, or a server that
    speaks TLS when the URL does not (or the reverse), ends it at once with
    :class:`RefusedError` instead of connecting again until the time-out."""
    dialer = session.make_connection
    if not isinstance(dialer, _Dialer):
        await session.start()
        return
    starting = asyncio.ensure_future(session.start())
    refused = asyncio.ensure_future(dialer.refused.wait())
    try:
        await asyncio.wait((starting, refused), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (starting, refused):
            task.cancel()
        await asyncio.gather(starting, refused, return_exceptions=True)
    if not starting.cancelled() and starting.exception() is None:
        return
    if dialer.refusal is not None:
        raise RefusedError(dialer.refusal)
    starting.result()
