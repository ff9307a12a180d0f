"""The Redis driver's connections: TLS from dfdb's own ``SSLContext`` on redis-py's TCP
connection, and the dfdb error of a failed call."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc

from dfdb.errors import AuthenticationError, BackendUnavailableError, DriverError
from dfdb.tls import describe_tls_failure, tls_failure
from dfdb.url import DatabaseURL

__all__ = [
    "CONNECTION_ERRORS",
    "ClosingPool",
    "PlainConnection",
    "TimedSend",
    "TlsConnection",
    "UnixConnection",
    "connection_error",
    "refused_by_acl",
]

_HANDSHAKE_WAIT = 3.0
"""Seconds at most for a TLS handshake (a plain Redis never answers one; a server that
does, answers at once)."""


class ClosingPool(aioredis.ConnectionPool):
    """A connection pool that stays closed once closed. redis-py's closes the connections it
    holds then, but a call in flight may be connecting one (or get one back) meanwhile: here
    such a connection is closed when the call releases it, and no call gets another."""

    closed = False

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self.closed:
            raise rexc.ConnectionError("the connection pool is closed")
        return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        if self.closed:
            await connection.disconnect()

    async def disconnect(self, inuse_connections: bool = True) -> None:
        # the client's close drops every connection; a Sentinel pool drops its idle ones
        # (inuse_connections=False) to move them to a new master, and stays open
        self.closed = self.closed or inuse_connections
        await super().disconnect(inuse_connections)


class TimedSend(aioredis.connection.AbstractConnection):
    """A connection whose sends are bounded by ``socket_timeout`` in the calling task.

    redis-py bounds a send with ``asyncio.wait_for``, which before Python 3.12 runs it in a
    task of its own: a task and two more event-loop rounds per command. Here the same bound
    is one ``asyncio.timeout`` around redis-py's untimed send; a send that times out drops the
    connection and raises redis-py's ``TimeoutError``, as redis-py's own does. A send that
    has to connect first is redis-py's own (its connect bounded as redis-py bounds it)."""

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        timeout = self.socket_timeout
        if not timeout or not self.is_connected:
            return await super().send_packed_command(command, check_health)
        writer = self._writer
        try:
            async with asyncio.timeout(timeout):
                self.socket_timeout = None  # redis-py's send without its wait_for
                try:
                    await super().send_packed_command(command, check_health)  # drops the connection when cut
                finally:
                    self.socket_timeout = timeout
        except TimeoutError:
            if writer is not None:  # a close waits to send what is buffered, which a stuck server never takes
                writer.transport.abort()
            raise rexc.TimeoutError("Timeout writing to socket") from None


class PlainConnection(TimedSend, aioredis.Connection):
    """A TCP connection (see :class:`TimedSend`)."""


class UnixConnection(TimedSend, aioredis.UnixDomainSocketConnection):
    """A Unix socket connection (see :class:`TimedSend`)."""


class TlsConnection(TimedSend, aioredis.Connection):
    """A TCP connection with TLS from dfdb's own ``SSLContext`` (and a server name)."""

    def __init__(self, *, tls_context: Any, tls_server_name: str | None, **kwargs: Any) -> None:
        self.tls_context = tls_context
        self.tls_server_name = tls_server_name
        self._raw: Any = None
        super().__init__(**kwargs)

    async def _connect(self) -> None:
        # TCP first, then TLS on it; the TCP transport is kept so that it is closed for
        # sure (an SSL transport closed while its shutdown is pending leaves it open)
        await super()._connect()  # type: ignore[no-untyped-call]
        writer: Any = self._writer
        self._raw = writer.transport
        try:
            await writer.start_tls(
                self.tls_context,
                server_hostname=self.tls_server_name or self.host,
                ssl_handshake_timeout=min(self.socket_connect_timeout or _HANDSHAKE_WAIT, _HANDSHAKE_WAIT),
            )
        except BaseException:
            writer.close()
            self._abort_raw()
            self._reader = self._writer = None  # closed: not waited for again (it never ends)
            raise

    def _abort_raw(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None and not raw.is_closing():
            raw.abort()

    async def disconnect(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().disconnect(*args, **kwargs)
        finally:
            self._abort_raw()

    def _close(self) -> None:
        super()._close()  # type: ignore[no-untyped-call]
        self._abort_raw()


def connection_error(url: DatabaseURL, exc: BaseException) -> DriverError:
    """The dfdb error of a redis-py error: a refusal (credentials, ACL, certificate) is
    an ``AuthenticationError``, never retried; anything else ``BackendUnavailableError``."""
    if isinstance(exc, rexc.AuthenticationError | rexc.AuthenticationWrongNumberOfArgsError):  # permanent: not retried
        reason = str(exc) if url.password else "the server requires a password and the URL gives none"
        return AuthenticationError(f"{url}: authentication failed: {reason}")
    if isinstance(exc, rexc.NoPermissionError):
        hint = "check the user's ACL: keys, channels and commands of the prefix"
        return AuthenticationError(f"{url}: not allowed: {exc} ({hint})")
    failure = tls_failure(exc)
    if failure is not None:  # a certificate is not going to change between retries
        return AuthenticationError(f"{url}: {describe_tls_failure(failure)}")
    return BackendUnavailableError(f"{url}: {type(exc).__name__}: {exc}")


def refused_by_acl(exc: BaseException) -> bool:
    """Whether ``exc`` is the server refusing the user a command by its ACL (sent directly,
    or called by a script)."""
    return isinstance(exc, rexc.NoPermissionError) or "can't run this command" in str(exc)


CONNECTION_ERRORS = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    OSError,
    rexc.AuthenticationWrongNumberOfArgsError,
    rexc.NoPermissionError,
)
"""What redis-py raises when the server cannot be reached or refuses the connection's user."""
