"""The Redis driver's TLS connection: TLS from dfdb's own ``SSLContext`` on redis-py's TCP connection."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

__all__ = ["TlsConnection"]


class TlsConnection(aioredis.Connection):
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
            await writer.start_tls(self.tls_context, server_hostname=self.tls_server_name or self.host)
        except BaseException:
            writer.close()
            self._abort_raw()
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
