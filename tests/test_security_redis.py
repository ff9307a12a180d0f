"""Redis over TLS and with ACL users, against a real TLS-only ``redis-server``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis
import redis.exceptions

import dfdb
from dfdb.certs import make_local_ca
from dfdb.models import LogicalSwitch
from dfdb.testing.servers import RedisServer, require_servers

SECRET = "p/a#s?s@w:o%rd"
"""A password with every character a URL gives a meaning to."""


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[RedisServer]:
    """A TLS-only redis-server with two ACL users, one per namespace."""
    if not RedisServer.available():
        if require_servers():
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    server = RedisServer(appendonly=False, tls=True)
    server.start()
    try:
        asyncio.run(_add_users(server))
        yield server
    finally:
        server.stop()


async def _add_users(server: RedisServer) -> None:
    assert server.ca is not None
    admin = aioredis.Redis(
        host="127.0.0.1", port=server.port, ssl=True, ssl_ca_certs=str(server.ca.ca_file)
    )  # the default user, before a password is set on it
    try:
        for user in ("alice", "bob"):
            ns = f"ns-{user}"
            # least privilege for one namespace: its keys, its channels, the commands dfdb sends
            await admin.acl_setuser(
                user, enabled=True, passwords=[f"+{SECRET}"], keys=[f"{ns}/*"], channels=[f"{ns}/*"],
                commands=["+@read", "+@write", "+@stream", "+@scripting", "+@transaction", "+@connection", "+ping",
                          "+time"],
            )  # fmt: skip
    finally:
        await admin.aclose()


def _url(server: RedisServer, *, user: str = "alice", password: str | None = SECRET, ns: str = "ns-alice") -> str:
    assert server.ca is not None
    auth = f"{user}@" if password is None else f"{user}:{quote(password, safe='')}@"
    return f"rediss://{auth}127.0.0.1:{server.port}/0?prefix={ns}&{server.ca.url_options()}"


async def test_tls_with_an_acl_user_serves_writes_and_events(tls_redis: RedisServer) -> None:
    async with dfdb.connect(_url(tls_redis)) as nb:
        listing = await nb.list(LogicalSwitch)
        async with nb.watch(LogicalSwitch, since=listing.cursor) as stream:
            await nb.create(LogicalSwitch(id="s1", topic="t", name="one"))
            event = await asyncio.wait_for(anext(stream), 10)
        assert (event.action, event.id, event.obj) == (dfdb.Action.CREATE, "s1", await nb.get(LogicalSwitch, "s1"))


async def test_a_namespace_user_cannot_touch_another_namespace(tls_redis: RedisServer) -> None:
    async with dfdb.connect(_url(tls_redis, user="bob", ns="ns-bob")) as nb:
        await nb.create(LogicalSwitch(id="b1", name="bob's"))
    with pytest.raises(dfdb.AuthenticationError, match="not allowed") as info:
        async with dfdb.connect(_url(tls_redis, ns="ns-bob"), timeout=5) as nb:
            await nb.get(LogicalSwitch, "b1")
    assert SECRET not in str(info.value)


async def test_a_namespace_user_cannot_write_into_another_namespace(tls_redis: RedisServer) -> None:
    async with dfdb.connect(_url(tls_redis, user="bob", ns="ns-bob")) as nb:
        await nb.create(LogicalSwitch(id="b2", name="bob's"))
    with pytest.raises(dfdb.AuthenticationError, match="not allowed") as info:
        async with dfdb.connect(_url(tls_redis, ns="ns-bob"), timeout=5) as nb:
            await nb.create(LogicalSwitch(id="b2", name="alice's"))
    assert SECRET not in str(info.value)
    assert tls_redis.ca is not None
    alice = aioredis.Redis(host="127.0.0.1", port=tls_redis.port, ssl=True, ssl_ca_certs=str(tls_redis.ca.ca_file),
                           username="alice", password=SECRET)  # fmt: skip
    try:  # nor by hand: the ACL refuses any key of the other prefix
        with pytest.raises(redis.exceptions.NoPermissionError):
            await alice.set("ns-bob/anything", b"x")
    finally:
        await alice.aclose()
    async with dfdb.connect(_url(tls_redis, user="bob", ns="ns-bob")) as nb:
        assert (await nb.get(LogicalSwitch, "b2")).name == "bob's"


@pytest.mark.parametrize("revoke", [("ACL", "DELUSER"), ("ACL", "SETUSER", "resetkeys", "resetchannels")])
async def test_credentials_revoked_mid_stream_end_the_stream_with_one_error(
    tls_redis: RedisServer, revoke: tuple[str, ...]
) -> None:
    """A user deleted (its connections closed: re-authentication fails) or stripped of its
    keys while a stream reads: the stream raises one AuthenticationError at once; it is
    not retried forever, nor a client library's error."""
    user = ns = f"carol-{len(revoke)}"
    assert tls_redis.ca is not None
    admin = aioredis.Redis(host="127.0.0.1", port=tls_redis.port, ssl=True, ssl_ca_certs=str(tls_redis.ca.ca_file))
    try:
        await admin.acl_setuser(user, enabled=True, passwords=[f"+{SECRET}"], keys=[f"{ns}/*"], channels=[f"{ns}/*"],
                                commands=["+@all"])  # fmt: skip
        async with dfdb.connect(_url(tls_redis, user=user, ns=ns), timeout=5) as nb:
            async with nb.watch(LogicalSwitch) as stream:
                await nb.create(LogicalSwitch(id="c1"))
                assert (await asyncio.wait_for(anext(stream), 10)).id == "c1"
                await admin.execute_command(*revoke[:2], user, *revoke[2:])
                with pytest.raises(dfdb.AuthenticationError) as info:
                    await asyncio.wait_for(anext(stream), 10)
        assert SECRET not in str(info.value) and "\n" not in str(info.value)
    finally:
        await admin.acl_deluser(user)
        await admin.aclose()


async def test_a_wrong_password_is_one_clear_line_at_once(tls_redis: RedisServer) -> None:
    started = asyncio.get_running_loop().time()
    with pytest.raises(dfdb.AuthenticationError) as info:
        async with dfdb.connect(_url(tls_redis, password=SECRET + "x"), timeout=10):
            pass
    assert asyncio.get_running_loop().time() - started < 5  # not retried until the timeout
    message = str(info.value)
    assert "\n" not in message and SECRET not in message and quote(SECRET, safe="") not in message


async def test_a_wrong_ca_is_refused_at_once(tls_redis: RedisServer, tmp_path: Path) -> None:
    other = make_local_ca(tmp_path / "other")
    url = _url(tls_redis).replace(f"ca_file={tls_redis.ca.ca_file}", f"ca_file={other.ca_file}")  # type: ignore[union-attr]
    started = asyncio.get_running_loop().time()
    with pytest.raises(dfdb.AuthenticationError, match=r"certificate was not accepted.*check ca_file"):
        async with dfdb.connect(url, timeout=10):
            pass
    assert asyncio.get_running_loop().time() - started < 5


async def test_an_expired_server_certificate_is_refused(tmp_path: Path, tls_redis: RedisServer) -> None:
    expired = make_local_ca(tmp_path / "expired", expired=True)
    server = RedisServer(appendonly=False)
    server.ca = expired
    server.start()  # serves TLS with the expired certificate
    try:
        url = f"rediss://127.0.0.1:{server.port}/0?ca_file={expired.ca_file}"
        with pytest.raises(dfdb.AuthenticationError, match="expired"):
            async with dfdb.connect(url, timeout=5):
                pass
    finally:
        server.stop()


async def test_plain_redis_to_a_tls_port_is_a_clear_error_at_once(tls_redis: RedisServer) -> None:
    url = f"redis://alice:{quote(SECRET, safe='')}@127.0.0.1:{tls_redis.port}/0?prefix=ns-alice"
    started = asyncio.get_running_loop().time()
    with pytest.raises(dfdb.AuthenticationError, match="speaks TLS only on this port") as info:
        async with dfdb.connect(url, timeout=30):
            pass
    assert asyncio.get_running_loop().time() - started < 5  # not retried until the timeout
    assert SECRET not in str(info.value)


async def test_verify_false_skips_the_certificate_check(tls_redis: RedisServer) -> None:
    url = f"rediss://alice:{quote(SECRET, safe='')}@127.0.0.1:{tls_redis.port}/0?prefix=ns-alice&verify=false"
    async with dfdb.connect(url) as nb:
        assert await nb.get_all(LogicalSwitch) is not None


async def test_server_name_is_checked(tls_redis: RedisServer) -> None:
    with pytest.raises(dfdb.AuthenticationError, match="certificate was not accepted"):
        async with dfdb.connect(_url(tls_redis) + "&server_name=db.example", timeout=5):
            pass
    async with dfdb.connect(_url(tls_redis) + "&server_name=localhost") as nb:
        await nb.get_all(LogicalSwitch)


async def test_password_from_a_file_and_from_the_environment(
    tls_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    async with dfdb.connect(_url(tls_redis, password=None) + f"&password_file={secret_file}") as nb:
        await nb.get_all(LogicalSwitch)
    monkeypatch.setenv("DFDB_PASSWORD", SECRET)
    async with dfdb.connect(_url(tls_redis, password=None)) as nb:
        await nb.get_all(LogicalSwitch)
        assert SECRET not in repr(nb) and SECRET not in repr(nb.driver.__dict__)
    assert all(SECRET not in record.getMessage() for record in caplog.records)


async def test_server_run_tls_prints_a_url_that_serves_over_tls() -> None:
    if not RedisServer.available():
        pytest.skip("redis-server is not installed")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dfdb", "server", "run", "redis", "--tls", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        url = line.split()[2]
        assert url.startswith("rediss://127.0.0.1:") and "ca_file=" in url, line
        async with dfdb.connect(url) as nb:
            await nb.create(LogicalSwitch(id="dev"))
        with pytest.raises(dfdb.AuthenticationError, match="speaks TLS only"):
            async with dfdb.connect(url.replace("rediss://", "redis://").split("?")[0], timeout=10):
                pass
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("refused", ["xadd", "xlen", "xrange"])
async def test_a_user_refused_one_write_command_writes_nothing(tls_redis: RedisServer, refused: str) -> None:
    """The ACL lets the user write entries but not append to the change streams (nor read
    their length or first records, which trimming them takes): the write is refused whole,
    with AuthenticationError, before anything is written. Stopped half-way, the script kept
    the entry without its change: watchers never saw it."""
    assert tls_redis.ca is not None
    admin = aioredis.Redis(host="127.0.0.1", port=tls_redis.port, ssl=True, ssl_ca_certs=str(tls_redis.ca.ca_file))
    try:
        await admin.acl_setuser("dave", enabled=True, passwords=[f"+{SECRET}"], keys=["ns-alice/*"],
                                channels=["ns-alice/*"], commands=["+@all", f"-{refused}"])  # fmt: skip
        async with dfdb.connect(_url(tls_redis)) as nb:
            revision = await admin.get("ns-alice/rev")
            with pytest.raises(
                dfdb.AuthenticationError, match=rf"may not run '{refused.upper()} .*nothing was written"
            ) as info:
                async with dfdb.connect(_url(tls_redis, user="dave"), timeout=5) as refused:
                    await refused.create(LogicalSwitch(id="half", name="dave's"))
            assert SECRET not in str(info.value)
            with pytest.raises(dfdb.NotFoundError):
                await nb.get(LogicalSwitch, "half")
            assert await admin.get("ns-alice/rev") == revision
    finally:
        await admin.acl_deluser("dave")
        await admin.aclose()


async def test_a_user_without_time_watches_and_writes_but_cannot_hold_leases(
    tls_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The recipe before leases had no ``+time``: such a user's watches and writes go on (its
    watchers leave reaping to others, with one warning), and a lease is refused in one line."""
    user = ns = "dave"
    assert tls_redis.ca is not None
    admin = aioredis.Redis(host="127.0.0.1", port=tls_redis.port, ssl=True, ssl_ca_certs=str(tls_redis.ca.ca_file))
    try:
        await admin.acl_setuser(
            user, enabled=True, passwords=[f"+{SECRET}"], keys=[f"{ns}/*"], channels=[f"{ns}/*"],
            commands=["+@read", "+@write", "+@stream", "+@scripting", "+@transaction", "+@connection", "+ping"],
        )  # fmt: skip
        async with dfdb.connect(_url(tls_redis, user=user, ns=ns), timeout=5) as nb:
            async with nb.watch(LogicalSwitch) as stream:
                for i in range(3):
                    await nb.create(LogicalSwitch(id=f"s{i}"))
                    assert (await asyncio.wait_for(anext(stream), 10)).id == f"s{i}"
            with pytest.raises(dfdb.AuthenticationError, match=r"not allowed.*\+time"):
                async with nb.lease(ttl=5):
                    pass
        assert any("not reaping expired leases" in r.getMessage() for r in caplog.records)
    finally:
        await admin.acl_deluser(user)
        await admin.aclose()


@pytest.mark.parametrize("commands", [["+@read", "+@connection"], ["+@all", "-@write"]], ids=["read", "all-but-write"])
async def test_a_user_who_may_only_read_lists_watches_and_keeps_a_replica(
    tls_redis: RedisServer, commands: list[str]
) -> None:
    """An ACL with no write command (and, in the strict form, no scripts): the user opens dfdb
    even before any writer made the dataset, lists, gets, watches and keeps a checked Replica;
    its writes are refused with one AuthenticationError naming the command."""
    ns = f"ro-{len(commands[0])}"
    assert tls_redis.ca is not None
    admin = aioredis.Redis(host="127.0.0.1", port=tls_redis.port, ssl=True, ssl_ca_certs=str(tls_redis.ca.ca_file))
    try:
        for user, allowed in ((f"{ns}-r", commands), (f"{ns}-w", ["+@all"])):
            await admin.acl_setuser(user, enabled=True, passwords=[f"+{SECRET}"], keys=[f"{ns}/*"],
                                    channels=[f"{ns}/*"], commands=allowed)  # fmt: skip
        async with dfdb.connect(_url(tls_redis, user=f"{ns}-r", ns=ns), timeout=5) as reader:
            listing = await reader.list(LogicalSwitch)
            assert listing.items == []
            async with (
                reader.watch(LogicalSwitch, since=listing.cursor) as stream,
                dfdb.Replica(reader, [LogicalSwitch]) as replica,
                dfdb.connect(_url(tls_redis, user=f"{ns}-w", ns=ns)) as writer,
            ):
                await asyncio.wait_for(replica.wait_synced(), 10)
                s1 = await writer.create(LogicalSwitch(id="s1", topic="t", name="one"))
                event = await asyncio.wait_for(anext(stream), 10)
                assert (event.action, event.obj) == (dfdb.Action.CREATE, s1)  # the first epoch continues: no RESYNC
                await asyncio.wait_for(replica.wait_for(event.revision), 10)
                assert replica.get(LogicalSwitch, "s1") == s1 == await reader.get(LogicalSwitch, "s1")
                assert (await reader.list(LogicalSwitch)).items == [s1]
                report = await replica.check()
                assert report.complete and report.buckets and not report.differing
            with pytest.raises(dfdb.AuthenticationError, match=r"not allowed: .*('evalsha'|'INCR )") as info:
                await reader.create(LogicalSwitch(id="s2"))
            assert SECRET not in str(info.value)
            assert "s2" not in {s.id for s in (await reader.list(LogicalSwitch)).items}
    finally:
        await admin.acl_deluser(f"{ns}-r", f"{ns}-w")
        await admin.aclose()
