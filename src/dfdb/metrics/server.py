"""A small HTTP endpoint for Prometheus scrapes, run by the event loop itself."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

__all__ = ["MetricsServer", "run_server"]

_log = logging.getLogger(__name__)

_MAX_REQUEST = 16 * 1024
_READ_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """Where :func:`dfdb.metrics.serve` listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """The address to scrape."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8", head: bool = False) -> bytes:
    header = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return header.encode("latin-1") + (b"" if head else body)


def _answer(request: bytes, registry: Any) -> bytes:
    head, _, _ = request.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response("400 Bad Request", b"bad request\n")
    method, target = parts[0], parts[1]
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"only GET\n")
    if target.partition("?")[0] not in ("/", "/metrics"):
        return _response("404 Not Found", b"not found: scrape /metrics\n")
    accept = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    encoder, content_type = choose_encoder(accept)
    return _response("200 OK", encoder(registry), content_type, head=method == "HEAD")


async def _handle(stream: SocketStream, registry: Any) -> None:
    async with stream:
        request = b""
        try:
            with anyio.fail_after(_READ_TIMEOUT):
                while b"\r\n\r\n" not in request and len(request) < _MAX_REQUEST:
                    request += await stream.receive()
            try:
                answer = _answer(request, registry)
            except Exception as exc:  # a collector that fails: this scrape fails, not the application
                _log.warning("metrics scrape failed: %s: %s", type(exc).__name__, exc)
                answer = _response("500 Internal Server Error", f"scrape failed: {type(exc).__name__}\n".encode())
            await stream.send(answer)
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError, TimeoutError):
            return  # the scraper went away or sent nothing


@asynccontextmanager
async def run_server(host: str, port: int, registry: Any) -> AsyncIterator[MetricsServer]:
    """Serve ``registry`` at ``http://host:port/metrics`` until the block ends."""
    registry = REGISTRY if registry is None else registry
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: {reason}") from None
    server = MetricsServer(host, int(listener.extra(SocketAttribute.local_port)))

    async def handle(stream: SocketStream) -> None:
        await _handle(stream, registry)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()
