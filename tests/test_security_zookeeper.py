"""ZooKeeper over TLS (its Netty secure client port) and digest ACLs per namespace."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

import dfdb
from dfdb.certs import make_local_ca
from dfdb.models import LogicalSwitch
from dfdb.testing.servers import ZooKeeperServer, require_servers

SECRET = "p/a#s?s@w:o%rd"


@pytest.fixture(scope="module")
def tls_zookeeper() -> Iterator[ZooKeeperServer]:
    if not ZooKeeperServer.available():
        if require_servers():
            pytest.fail("zookeeper is not installed")
        pytest.skip("zookeeper is not installed")
    server = ZooKeeperServer(tls=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _url(server: ZooKeeperServer, ns: str, user: str = "alice", *, client_cert: bool = False) -> str:
    """A URL without the client certificate by default: ZooKeeper adds the certificate's
    identity to the session's, so nodes created with it are open to anyone presenting it."""
    assert server.ca is not None
    hosts = server.url.split("://", 1)[1].split("?", 1)[0]
    return (
        f"zk://{user}:{quote(SECRET, safe='')}@{hosts}/{ns}?tls=true&{server.ca.url_options(client=client_cert)}"
        "&timeout=5"
    )


async def test_tls_with_digest_auth_serves_writes_and_events(tls_zookeeper: ZooKeeperServer) -> None:
    async with dfdb.connect(_url(tls_zookeeper, "ns-a", client_cert=True)) as nb:
        listing = await nb.list(LogicalSwitch)
        async with nb.watch(LogicalSwitch, since=listing.cursor) as stream:
            await nb.create(LogicalSwitch(id="s1", name="one"))
            event = await asyncio.wait_for(anext(stream), 10)
        assert (event.action, event.id, event.obj) == (dfdb.Action.CREATE, "s1", await nb.get(LogicalSwitch, "s1"))
        calls = nb.driver._calls  # type: ignore[attr-defined]
        for held in (calls, calls._repair):  # the credentials are kept masked
            assert SECRET.encode() not in repr(vars(held)).encode() and SECRET not in repr(vars(held))


async def test_another_user_cannot_read_a_namespace(tls_zookeeper: ZooKeeperServer) -> None:
    async with dfdb.connect(_url(tls_zookeeper, "ns-b", user="bob")) as nb:
        await nb.create(LogicalSwitch(id="b1"))
    with pytest.raises(dfdb.AuthenticationError, match="not allowed") as info:
        async with dfdb.connect(_url(tls_zookeeper, "ns-b")) as nb:
            await nb.get(LogicalSwitch, "b1")
    assert SECRET not in str(info.value)


async def test_another_user_cannot_write_into_a_namespace(tls_zookeeper: ZooKeeperServer) -> None:
    async with dfdb.connect(_url(tls_zookeeper, "ns-b", user="bob")) as nb:
        await nb.create(LogicalSwitch(id="b2", name="bob's"))
    with pytest.raises(dfdb.AuthenticationError, match="not allowed") as info:
        async with dfdb.connect(_url(tls_zookeeper, "ns-b")) as nb:
            await nb.create(LogicalSwitch(id="b2", name="alice's"))
    assert SECRET not in str(info.value)
    async with dfdb.connect(_url(tls_zookeeper, "ns-b", user="bob")) as nb:
        assert (await nb.get(LogicalSwitch, "b2")).name == "bob's"


async def test_a_wrong_ca_is_refused(tls_zookeeper: ZooKeeperServer, tmp_path: Path) -> None:
    assert tls_zookeeper.ca is not None
    other = make_local_ca(tmp_path / "other")
    url = _url(tls_zookeeper, "ns-a").replace(str(tls_zookeeper.ca.ca_file), str(other.ca_file))
    started = asyncio.get_running_loop().time()
    with pytest.raises(dfdb.AuthenticationError, match="certificate was not accepted") as info:
        async with dfdb.connect(url.replace("timeout=5", "timeout=1"), timeout=10):
            pass
    # the handshake fails in milliseconds; closing the session that never connected
    # does not wait for a server to say goodbye (that took 2 s)
    assert asyncio.get_running_loop().time() - started < 1.8
    assert SECRET not in str(info.value)


async def test_a_plain_url_with_a_short_timeout_at_a_tls_port_is_one_clear_line(tls_zookeeper: ZooKeeperServer) -> None:
    """The URL's time-out (1 s) is shorter than the wait before the port is probed for
    TLS: still the clear refusal, at once, not ``BackendUnavailableError`` retried until
    the caller's time-out."""
    hosts = tls_zookeeper.url.split("://", 1)[1].split("?", 1)[0]
    started = asyncio.get_running_loop().time()
    with pytest.raises(dfdb.AuthenticationError, match="speaks TLS only on this port") as info:
        async with dfdb.connect(f"zk://alice:{quote(SECRET, safe='')}@{hosts}/ns-a?timeout=1", timeout=30):
            pass
    assert asyncio.get_running_loop().time() - started < 10  # not retried until the caller's time-out
    assert SECRET not in str(info.value)
