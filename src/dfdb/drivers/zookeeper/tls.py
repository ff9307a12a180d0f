"""TLS for aiozk, which has none of its own: its connection, opened with an ``SSLContext``.

ZooKeeper serves TLS on its ``secureClientPort`` (with the Netty connection factory).
aiozk's ``Connection.connect`` opens two plain TCP connections (one for the ``srvr``
handshake, one for the session); :class:`TlsConnection` opens both with TLS, and
:func:`use_tls` makes a session create such connections.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiozk.connection import Connection

__all__ = ["TlsConnection", "tls_failure_of", "use_tls"]

log = logging.getLogger(__name__)


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
    """aiozk's ``Session.make_connection`` with a :class:`TlsConnection` (``None`` on
    failure, as there); keeps the last TLS failure, for the error a time-out becomes."""

    def __init__(self, session: Any, context: ssl.SSLContext, server_name: str | None) -> None:
        self.session = session
        self.context = context
        self.server_name = server_name
        self.failure: ssl.SSLError | None = None

    async def __call__(self, host: str, port: int) -> Any:
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
            return None
        except (OSError, ConnectionError, TimeoutError) as exc:
            log.debug("ZooKeeper server %s:%s not reachable over TLS: %r", host, port, exc)
            return None
        self.failure = None
        return conn


def use_tls(session: Any, context: ssl.SSLContext, server_name: str | None) -> None:
    """Make aiozk ``session`` connect with TLS."""
    session.make_connection = _Dialer(session, context, server_name)


def tls_failure_of(session: Any) -> ssl.SSLError | None:
    """The last TLS handshake failure of ``session``'s connections, if it uses TLS."""
    dialer = getattr(session, "make_connection", None)
    return dialer.failure if isinstance(dialer, _Dialer) else None
