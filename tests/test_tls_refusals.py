"""TLS refused at the edges, on every server backend: an expired client certificate, an
expired server certificate, a plain client at a TLS-only port and a TLS client at a plain
one. Each is one clear line, at once: never a retry loop until the time-out, never a hang.

Each case starts a server of its own with certificates made for it (a ZooKeeper takes
seconds): they run in ``nox -s tls`` (``DFDB_TLS=1``), not in the default suite.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

import dfdb
from dfdb.certs import LocalCA, make_local_ca
from dfdb.models import LogicalSwitch
from dfdb.servers import EtcdServer, LocalServer, RedisServer, ZooKeeperServer
from dfdb.testing.servers import require_servers

pytestmark = pytest.mark.skipif(not os.environ.get("DFDB_TLS"), reason="TLS refusals run in nox -s tls (DFDB_TLS=1)")

SECRET = "p/a#s?s@w:o%rd"
QUICK = 5.0
"""Seconds a refusal may take: well under the URL's time-out, so not retried until it."""

BACKENDS = {"redis": lambda: RedisServer(appendonly=False, tls=True), "etcd": lambda: EtcdServer(tls=True),
            "zookeeper": lambda: ZooKeeperServer(tls=True)}  # fmt: skip
PLAIN = {"redis": lambda: RedisServer(appendonly=False), "etcd": EtcdServer, "zookeeper": ZooKeeperServer}


def _started(server: LocalServer, ca: LocalCA | None = None) -> LocalServer:
    if not server.available():
        server.stop()
        if require_servers():
            pytest.fail(f"{type(server).__name__} is not installed")
        pytest.skip(f"{type(server).__name__} is not installed")
    if ca is not None:
        server.ca = ca  # instead of the certificates it made
    server.start()
    return server


@pytest.fixture
def serve(request: pytest.FixtureRequest) -> Iterator[list[LocalServer]]:
    """The servers a test starts, stopped at its end."""
    servers: list[LocalServer] = []
    yield servers
    for server in servers:
        server.stop()


def _tls_url(server: LocalServer, *, password: bool = True, timeout: float = 10) -> str:
    """The server's TLS URL (its CA, the client certificate), a user and a long time-out."""
    auth = f"someone:{quote(SECRET, safe='')}@" if password else ""
    scheme, rest = server.url.split("://", 1)
    hosts, options = rest.split("?", 1)
    hosts = hosts.removesuffix("/0")
    path = "/0?prefix=p&" if scheme == "rediss" else "/p?"
    return f"{scheme}://{auth}{hosts}{path}{options}&timeout={timeout:g}"


async def _refused(url: str, error: type[dfdb.DfdbError], match: str) -> str:
    """Connect and read: ``error`` matching ``match``, one line, no secret, at once."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(error, match=match) as info:
        async with dfdb.connect(url, timeout=30) as nb:
            await nb.get_all(LogicalSwitch)
    took = loop.time() - started
    message = str(info.value)
    assert took < QUICK, f"{took:.1f} s: {message}"
    assert "\n" not in message and SECRET not in message and quote(SECRET, safe="") not in message
    return message


@pytest.mark.parametrize("backend", sorted(BACKENDS))
async def test_an_expired_client_certificate_is_one_clear_line(
    backend: str, tmp_path: Path, serve: list[LocalServer]
) -> None:
    """The server refuses the certificate during the handshake: an AuthenticationError
    that names the client certificate, not a connection retried until the time-out."""
    server = BACKENDS[backend]()
    serve.append(server)
    _started(server, make_local_ca(tmp_path / "ca", expired_client=True))
    # etcd takes its user from the certificate; the others need a password besides
    await _refused(_tls_url(server, password=backend != "etcd"), dfdb.AuthenticationError, "client certificate")


async def test_an_expired_zookeeper_server_certificate_is_refused(tmp_path: Path, serve: list[LocalServer]) -> None:
    server = ZooKeeperServer(tls=True)
    serve.append(server)
    _started(server, make_local_ca(tmp_path / "ca", expired=True))
    await _refused(_tls_url(server), dfdb.AuthenticationError, r"not accepted \(certificate has expired\)")


@pytest.mark.parametrize("backend", sorted(BACKENDS))
async def test_a_tls_client_at_a_plain_port_is_one_clear_line(
    backend: str, tmp_path: Path, serve: list[LocalServer]
) -> None:
    server = PLAIN[backend]()
    serve.append(server)
    _started(server)
    ca = make_local_ca(tmp_path / "ca")
    scheme, rest = server.url.split("://", 1)
    hosts = rest.split("?", 1)[0].split("/", 1)[0]
    scheme = "rediss" if scheme == "redis" else scheme
    url = f"{scheme}://someone:{quote(SECRET, safe='')}@{hosts}/{'0?prefix=p' if scheme == 'rediss' else 'p?tls=true'}"
    await _refused(f"{url}&{ca.url_options()}&timeout=10", dfdb.AuthenticationError, "does not speak TLS")


@pytest.mark.parametrize("backend", sorted(BACKENDS))
async def test_a_plain_client_at_a_tls_port_is_one_clear_line(backend: str, serve: list[LocalServer]) -> None:
    server = BACKENDS[backend]()
    serve.append(server)
    _started(server)
    url = _tls_url(server).replace("rediss://", "redis://").replace("tls=true&", "")
    url = url.split("&ca_file=", 1)[0] if "prefix=" in url else url.split("?", 1)[0] + "?timeout=10"
    await _refused(url, dfdb.AuthenticationError, "speaks TLS only on this port")
