"""The pytest plugin behind the conformance suite: URLs, the ``nb`` fixture, leak checks.

Options: ``--dfdb-url URL`` (repeatable) or the ini setting ``dfdb_urls`` (one URL
a line). ``{name}`` in a URL becomes a fresh name per test, ``{tmp}`` the test's
own temporary folder, ``{redis}`` the address of a Redis server started for the
session, ``{etcd}`` that of an etcd member, ``{zookeeper}`` that of a ZooKeeper
server (skipped when the server is missing, failed when ``DFDB_REQUIRE_SERVERS=1``).
``{redis_tls}``, ``{etcd_tls}`` and ``{zookeeper_tls}`` are TLS-only servers, and
``{redis_tls_options}`` (…) the URL options that trust their CA and present a client
certificate, e.g. ``etcd://{etcd_tls}/{name}?{etcd_tls_options}``.

A test that takes ``dfdb_backend`` (every conformance test does) runs once per URL
under asyncio and, for the schemes in :data:`TRIO_SCHEMES`, once more under trio.
The async fixtures (``nb``, ``dfdb_leak_check``) are pytest-asyncio's, so that a
project's own async tests may use them in its strict mode as in auto mode.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

import dfdb
from dfdb.servers import EtcdServer, LocalServer, RedisServer, ZooKeeperServer
from dfdb.testing.leaks import ResourceSnapshot
from dfdb.testing.servers import install_command, missing_backend, skip_missing_server

DEFAULT_URLS = ["memory://{name}"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dfdb")
    group.addoption(
        "--dfdb-url",
        action="append",
        default=[],
        help="database URL to run the dfdb conformance suite against ({name}: a fresh name per test)",
    )
    parser.addini("dfdb_urls", "database URLs for the dfdb conformance suite", type="linelist", default=[])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "dfdb_exact: needs a driver that delivers every change (not polling)")
    import dfdb.testing.faults  # noqa: F401  (registers faulty://)


def _urls(config: pytest.Config) -> list[str]:
    urls: list[str] = config.getoption("dfdb_url") or config.getini("dfdb_urls") or DEFAULT_URLS
    return urls


TRIO_SCHEMES = frozenset({"memory", "sqlite"})
"""URL schemes whose conformance tests run under trio as well as asyncio."""


def _url_id(url: str) -> str:
    scheme = url.split("?", 1)[0].split("://", 1)[0]
    return scheme + ("-tls" if "_tls}" in url else "") + ("-poll" if "notifications=poll" in url else "")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dfdb_url" not in metafunc.fixturenames:
        return
    urls = _urls(metafunc.config)
    if "dfdb_backend" not in metafunc.fixturenames:
        metafunc.parametrize("dfdb_url", urls, ids=[_url_id(u) for u in urls])
        return
    pairs = [
        (url, backend)
        for url in urls
        for backend in ("asyncio", "trio")
        if backend == "asyncio" or url.split("://", 1)[0] in TRIO_SCHEMES
    ]
    metafunc.parametrize(("dfdb_url", "dfdb_backend"), pairs, ids=[f"{_url_id(u)}-{b}" for u, b in pairs])


@pytest_asyncio.fixture
async def dfdb_leak_check() -> AsyncIterator[None]:
    """Fails the test when tasks, threads or file descriptors outlive it."""
    baseline = ResourceSnapshot.take()
    yield
    leaks = await ResourceSnapshot.wait_clean(baseline)
    if leaks:
        pytest.fail("resources left behind: " + "; ".join(leaks))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Name the backends whose tests skipped for want of a server, and the command that installs them."""
    backends = sorted(
        {
            backend
            for report in terminalreporter.stats.get("skipped", [])
            if isinstance(report.longrepr, tuple) and (backend := missing_backend(str(report.longrepr[2])))
        }
    )
    if backends:
        terminalreporter.write_sep("=", "dfdb: backends not tested", yellow=True)
        terminalreporter.write_line(f"servers not installed: {', '.join(backends)}; their tests were skipped")
        terminalreporter.write_line(f"install them with: {install_command(backends, config.rootpath)}")


def _server_or_skip(factory: Callable[[], LocalServer], backend: str) -> Iterator[LocalServer]:
    server = factory()
    if not server.available():
        server.stop()
        skip_missing_server(backend)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dfdb_redis_server() -> Iterator[LocalServer]:
    """A ``redis-server`` on a free loopback port for the whole session (``{redis}`` in URLs)."""
    yield from _server_or_skip(lambda: RedisServer(appendonly=False), "redis")


@pytest.fixture(scope="session")
def dfdb_etcd_server() -> Iterator[LocalServer]:
    """A single ``etcd`` member on free loopback ports for the whole session (``{etcd}`` in URLs)."""
    yield from _server_or_skip(lambda: EtcdServer(), "etcd")


@pytest.fixture(scope="session")
def dfdb_zookeeper_server() -> Iterator[LocalServer]:
    """A standalone ZooKeeper on a free loopback port for the whole session (``{zookeeper}`` in URLs)."""
    yield from _server_or_skip(lambda: ZooKeeperServer(), "zookeeper")


@pytest.fixture(scope="session")
def dfdb_redis_tls_server() -> Iterator[LocalServer]:
    """A TLS-only ``redis-server`` for the whole session (``{redis_tls}`` in URLs)."""
    yield from _server_or_skip(lambda: RedisServer(appendonly=False, tls=True), "redis")


@pytest.fixture(scope="session")
def dfdb_etcd_tls_server() -> Iterator[LocalServer]:
    """A TLS-only etcd member with client-certificate auth for the whole session (``{etcd_tls}``)."""
    yield from _server_or_skip(lambda: EtcdServer(tls=True), "etcd")


@pytest.fixture(scope="session")
def dfdb_zookeeper_tls_server() -> Iterator[LocalServer]:
    """A ZooKeeper serving TLS for the whole session (``{zookeeper_tls}`` in URLs)."""
    yield from _server_or_skip(lambda: ZooKeeperServer(tls=True), "zookeeper")


@pytest.fixture(scope="session")
def dfdb_sentinel_server() -> Iterator[LocalServer]:
    """A Redis master, 2 replicas and 3 sentinels for the whole session (``{sentinel}``
    in URLs: the sentinels' addresses; the master is named ``mymaster``)."""
    from dfdb.sentinel_server import SentinelSetup

    yield from _server_or_skip(SentinelSetup, "redis")


SERVER_PLACEHOLDERS = {
    "{redis}": "dfdb_redis_server",
    "{sentinel}": "dfdb_sentinel_server",
    "{etcd}": "dfdb_etcd_server",
    "{zookeeper}": "dfdb_zookeeper_server",
    "{redis_tls}": "dfdb_redis_tls_server",
    "{etcd_tls}": "dfdb_etcd_tls_server",
    "{zookeeper_tls}": "dfdb_zookeeper_tls_server",
}


@pytest.fixture
def dfdb_fresh_url(dfdb_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """``dfdb_url`` with ``{name}`` replaced by a name unique to this test, ``{tmp}`` by a
    temporary folder of its own, and ``{redis}`` by the address of a test server."""
    return fill_url(dfdb_url, tmp_path, request)


def fill_url(template: str, tmp_path: Path, request: pytest.FixtureRequest, prefix: str = "t") -> str:
    """``template`` with ``{name}`` replaced by a fresh name (starting with ``prefix``),
    ``{tmp}`` by ``tmp_path``, and each server placeholder (``{redis}``…) by the address of
    that test server (started by its fixture)."""
    url = template.replace("{name}", prefix + uuid.uuid4().hex[:12]).replace("{tmp}", str(tmp_path))
    for placeholder, fixture in SERVER_PLACEHOLDERS.items():
        options = placeholder[:-1] + "_options}"
        if placeholder in url or options in url:
            server = request.getfixturevalue(fixture)
            url = url.replace(placeholder, server.url.split("://", 1)[1].split("?", 1)[0].split("/", 1)[0])
            if server.ca is not None:
                url = url.replace(options, "tls=true&" + server.ca.url_options())
    return url


@pytest_asyncio.fixture
async def nb(dfdb_leak_check: None, dfdb_fresh_url: str) -> AsyncIterator[dfdb.NbApi]:
    """An open :class:`dfdb.NbApi` on an empty namespace of the URL under test."""
    async with dfdb.connect(dfdb_fresh_url) as api:
        yield api


@pytest.fixture
def exact_nb(nb: dfdb.NbApi) -> dfdb.NbApi:
    """``nb``, skipping the test when its streams only converge (snapshot polling)."""
    if not nb.exact:
        pytest.skip("snapshot polling promises convergence, not every change")
    return nb
