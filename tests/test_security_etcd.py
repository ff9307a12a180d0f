"""etcd over TLS with users, roles and client certificates, against a real TLS-only etcd."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

import dfdb
from dfdb.certs import make_local_ca
from dfdb.models import LogicalSwitch
from dfdb.testing.leaks import ResourceSnapshot
from dfdb.testing.servers import EtcdServer, require_servers

SECRET = "p/a#s?s@w:o%rd"


def _etcdctl(server: EtcdServer, *args: str) -> None:
    assert server.ca is not None
    subprocess.run(
        ["etcdctl", f"--endpoints=https://127.0.0.1:{server.client_ports[0]}", f"--cacert={server.ca.ca_file}",
         f"--cert={server.ca.client_cert}", f"--key={server.ca.client_key}", *args],
        check=True, capture_output=True, timeout=20,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls_etcd() -> Iterator[EtcdServer]:
    """A TLS-only etcd with client-certificate auth and RBAC: a role per namespace."""
    if not EtcdServer.available() or shutil.which("etcdctl") is None:
        if require_servers():
            pytest.fail("etcd or etcdctl is not installed")
        pytest.skip("etcd or etcdctl is not installed")
    server = EtcdServer(tls=True)
    server.start()
    try:
        _etcdctl(server, "user", "add", "root", "--new-user-password=root-pw")
        _etcdctl(server, "user", "grant-role", "root", "root")
        # least privilege for one namespace: read and write under its prefix, nothing else
        for user, ns in (("alice", "ns-a"), ("bob", "ns-b"), ("dfdb-client", "ns-c")):
            _etcdctl(server, "role", "add", ns)
            _etcdctl(server, "role", "grant-permission", ns, "--prefix=true", "readwrite", f"{ns}/")
            if user == "dfdb-client":  # the common name of the client certificate
                _etcdctl(server, "user", "add", user, "--no-password")
            else:
                _etcdctl(server, "user", "add", user, f"--new-user-password={SECRET}")
            _etcdctl(server, "user", "grant-role", user, ns)
        _etcdctl(server, "auth", "enable")
        yield server
    finally:
        server.stop()


def _url(server: EtcdServer, ns: str, *, user: str | None = "alice", password: str = SECRET) -> str:
    auth = "" if user is None else f"{user}:{quote(password, safe='')}@"
    return server.url.replace("etcd://", f"etcd://{auth}").replace("?", f"/{ns}?") + "&timeout=3"


async def test_a_user_with_a_role_works_over_tls(tls_etcd: EtcdServer) -> None:
    async with dfdb.connect(_url(tls_etcd, "ns-a")) as nb:
        listing = await nb.list(LogicalSwitch)
        async with nb.watch(LogicalSwitch, since=listing.cursor) as stream:
            await nb.create(LogicalSwitch(id="s1", name="one"))
            event = await asyncio.wait_for(anext(stream), 10)
        assert (event.action, event.id, event.obj) == (dfdb.Action.CREATE, "s1", await nb.get(LogicalSwitch, "s1"))


async def test_a_user_cannot_touch_another_namespace(tls_etcd: EtcdServer) -> None:
    async with dfdb.connect(_url(tls_etcd, "ns-b", user="bob")) as nb:
        await nb.create(LogicalSwitch(id="b1"))
    with pytest.raises(dfdb.AuthenticationError, match="not allowed") as info:
        async with dfdb.connect(_url(tls_etcd, "ns-b")) as nb:
            await nb.get(LogicalSwitch, "b1")
    assert SECRET not in str(info.value)


async def test_a_user_cannot_write_into_another_namespace(tls_etcd: EtcdServer) -> None:
    async with dfdb.connect(_url(tls_etcd, "ns-b", user="bob")) as nb:
        await nb.create(LogicalSwitch(id="b2", name="bob's"))
    with pytest.raises(dfdb.AuthenticationError, match="not allowed") as info:
        async with dfdb.connect(_url(tls_etcd, "ns-b")) as nb:
            await nb.create(LogicalSwitch(id="b2", name="alice's"))
    assert SECRET not in str(info.value)
    with pytest.raises(subprocess.CalledProcessError) as refused:  # nor by hand: the role covers ns-a/ only
        _etcdctl(tls_etcd, f"--user=alice:{SECRET}", "put", "ns-b/anything", "x")
    assert b"permission denied" in refused.value.stderr
    async with dfdb.connect(_url(tls_etcd, "ns-b", user="bob")) as nb:
        assert (await nb.get(LogicalSwitch, "b2")).name == "bob's"


async def test_the_client_certificate_is_the_user(tls_etcd: EtcdServer) -> None:
    async with dfdb.connect(_url(tls_etcd, "ns-c", user=None)) as nb:
        await nb.create(LogicalSwitch(id="c1"))
        assert (await nb.get(LogicalSwitch, "c1")).id == "c1"
    with pytest.raises(dfdb.AuthenticationError, match="not allowed"):
        async with dfdb.connect(_url(tls_etcd, "ns-a", user=None)):
            pass


async def test_a_wrong_password_is_one_clear_line_at_once(tls_etcd: EtcdServer) -> None:
    started = asyncio.get_running_loop().time()
    with pytest.raises(dfdb.AuthenticationError, match="authentication failed") as info:
        async with dfdb.connect(_url(tls_etcd, "ns-a", password=SECRET + "x"), timeout=10):
            pass
    assert asyncio.get_running_loop().time() - started < 5
    assert "\n" not in str(info.value) and SECRET not in str(info.value)


async def test_a_wrong_ca_or_no_client_certificate_is_refused(tls_etcd: EtcdServer, tmp_path: Path) -> None:
    assert tls_etcd.ca is not None
    other = make_local_ca(tmp_path / "other")
    wrong_ca = _url(tls_etcd, "ns-a").replace(str(tls_etcd.ca.ca_file), str(other.ca_file))
    no_cert = f"etcd://127.0.0.1:{tls_etcd.client_ports[0]}/ns-a?tls=true&ca_file={tls_etcd.ca.ca_file}&timeout=2"
    wrong_name = _url(tls_etcd, "ns-a") + "&server_name=db.example"
    for url in (wrong_ca, no_cert, wrong_name):
        started = asyncio.get_running_loop().time()
        with pytest.raises(dfdb.AuthenticationError, match="TLS: the server"):
            async with dfdb.connect(url, timeout=10):
                pass
        assert asyncio.get_running_loop().time() - started < 5, url


async def test_plain_etcd_to_a_tls_port_is_a_clear_error_at_once(tls_etcd: EtcdServer) -> None:
    url = f"etcd://alice:{quote(SECRET, safe='')}@127.0.0.1:{tls_etcd.client_ports[0]}/ns-a?timeout=10"
    started = asyncio.get_running_loop().time()
    with pytest.raises(dfdb.AuthenticationError, match="speaks TLS only on this port") as info:
        async with dfdb.connect(url, timeout=30):
            pass
    assert asyncio.get_running_loop().time() - started < 5  # not retried until the timeout
    assert SECRET not in str(info.value)


def test_verify_false_is_refused_for_etcd() -> None:
    with pytest.raises(dfdb.InvalidURL, match="verify=false"):
        dfdb.connect("etcd://127.0.0.1/p?tls=true&verify=false")


async def test_server_name_is_the_name_checked(tls_etcd: EtcdServer) -> None:
    async with dfdb.connect(_url(tls_etcd, "ns-a") + "&server_name=localhost") as nb:
        await nb.get_all(LogicalSwitch)


async def test_an_expired_server_certificate_is_refused_and_said(tmp_path: Path) -> None:
    if not EtcdServer.available():
        pytest.skip("etcd is not installed")
    expired = make_local_ca(tmp_path / "expired", expired=True)
    server = EtcdServer(tls=True)
    server.ca = expired  # instead of the certificates it would make
    server.start()  # serves TLS with the expired certificate
    try:
        url = f"etcd://127.0.0.1:{server.client_ports[0]}/p?tls=true&timeout=3&{expired.url_options()}"
        started = asyncio.get_running_loop().time()
        with pytest.raises(dfdb.AuthenticationError, match=r"not accepted \(certificate has expired\)"):
            async with dfdb.connect(url) as nb:
                await nb.get_all(LogicalSwitch)
        assert asyncio.get_running_loop().time() - started < 2.5  # not retried until the timeout
    finally:
        server.stop()


async def test_a_role_that_loses_its_prefix_ends_the_stream_with_one_error(tls_etcd: EtcdServer) -> None:
    """The permission is revoked while a stream reads, then the stream reconnects (the
    server restarts): etcd refuses to create the watch again; the stream raises one
    AuthenticationError at once instead of retrying until the caller gives up."""
    _etcdctl(tls_etcd, "--user=root:root-pw", "role", "add", "ns-d")
    _etcdctl(tls_etcd, "--user=root:root-pw", "role", "grant-permission", "ns-d", "--prefix=true", "readwrite", "ns-d/")
    _etcdctl(tls_etcd, "--user=root:root-pw", "user", "add", "dave", f"--new-user-password={SECRET}")
    _etcdctl(tls_etcd, "--user=root:root-pw", "user", "grant-role", "dave", "ns-d")
    async with dfdb.connect(_url(tls_etcd, "ns-d", user="dave")) as nb:
        async with nb.watch(LogicalSwitch) as stream:
            await nb.create(LogicalSwitch(id="d1"))
            assert (await asyncio.wait_for(anext(stream), 10)).id == "d1"
            _etcdctl(tls_etcd, "--user=root:root-pw", "role", "revoke-permission", "ns-d", "ns-d/", "--prefix=true")
            tls_etcd.kill()
            tls_etcd.start()
            with pytest.raises(dfdb.AuthenticationError, match="not allowed") as info:
                await asyncio.wait_for(anext(stream), 15)
    assert SECRET not in str(info.value)


async def test_a_user_whose_role_only_reads_reads_and_watches_and_cannot_write(tls_etcd: EtcdServer) -> None:
    """A read-only role on the prefix: the dataset opens (its identity is read, not
    written), lists and streams; a write is refused whole. Opening wrote the identity
    in a transaction, which etcd checks for writing: such a user could not even read."""
    root = "--user=root:root-pw"
    _etcdctl(tls_etcd, root, "role", "add", "ns-a-reader")
    _etcdctl(tls_etcd, root, "role", "grant-permission", "ns-a-reader", "--prefix=true", "read", "ns-a/")
    _etcdctl(tls_etcd, root, "user", "add", "reader", f"--new-user-password={SECRET}")
    _etcdctl(tls_etcd, root, "user", "grant-role", "reader", "ns-a-reader")
    async with dfdb.connect(_url(tls_etcd, "ns-a")) as nb:
        await nb.put(LogicalSwitch(id="r1", name="alice's"))
        async with dfdb.connect(_url(tls_etcd, "ns-a", user="reader")) as reader:
            listing = await reader.list(LogicalSwitch)
            assert "r1" in {obj.id for obj in listing.items}
            async with reader.watch(LogicalSwitch, since=listing.cursor) as stream:
                await nb.put(LogicalSwitch(id="r2"))
                assert (await asyncio.wait_for(anext(stream), 10)).id == "r2"
            with pytest.raises(dfdb.AuthenticationError, match="not allowed") as info:
                await reader.create(LogicalSwitch(id="r3"))
            assert SECRET not in str(info.value)
        with pytest.raises(dfdb.NotFoundError):
            await nb.get(LogicalSwitch, "r3")


async def test_a_close_while_a_call_authenticates_leaves_no_channel_open(tls_etcd: EtcdServer) -> None:
    """A call that authenticates its new channel when the NbApi closes does not keep that
    channel open in the closed driver: it is closed, and the call ends with a dfdb error."""
    async with dfdb.connect(_url(tls_etcd, "ns-a")) as warm:  # gRPC's own threads and descriptors
        await warm.list(LogicalSwitch)
    for turns in (0, 1, 2, 4):
        baseline = ResourceSnapshot.take()
        nb = await dfdb.connect(_url(tls_etcd, "ns-a"))
        await nb.driver._conn.close()  # type: ignore[attr-defined]  # as a failover does: the next call connects
        reads = [asyncio.create_task(nb.get(LogicalSwitch, "s")) for _ in range(5)]
        for _ in range(turns):
            await asyncio.sleep(0)
        await nb.aclose()
        for outcome in await asyncio.gather(*reads, return_exceptions=True):
            assert isinstance(outcome, dfdb.DfdbError), outcome
        assert await ResourceSnapshot.wait_clean(baseline, 3.0) == [], f"closed after {turns} turns"
