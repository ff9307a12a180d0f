"""Redis behind Sentinel with credentials and TLS (master, 2 replicas, 3 sentinels on
loopback): the sentinels' own password or ACL user, the master's, TLS to both, a
failover under each, and secrets in no message, log record or repr."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

import dfdb
from dfdb.certs import make_local_ca
from dfdb.drivers import driver_class
from dfdb.sentinel_server import SentinelSetup
from dfdb.url import DatabaseURL
from test_redis_sentinel import Item, new_master, raw
from watching import serve

DATA = "d/a#t?a@p:w%1"
SENTRY = "s/e#n?t@r:y%2"
SECRETS = (DATA, SENTRY, quote(DATA, safe=""), quote(SENTRY, safe=""))


def hosts(setup: SentinelSetup) -> str:
    return ",".join(f"127.0.0.1:{p}" for p in setup.sentinel_ports)


def leaks(text: str) -> bool:
    return any(secret in text for secret in SECRETS)


@pytest.fixture
def guarded() -> Iterator[SentinelSetup]:
    yield from serve(lambda: SentinelSetup(password=DATA, sentinel_password=SENTRY))


@pytest.fixture
def tls_setup() -> Iterator[SentinelSetup]:
    yield from serve(lambda: SentinelSetup(tls=True))


async def test_passwords_and_acl_users_of_the_sentinels_and_the_master(
    guarded: SentinelSetup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for port in guarded.data_ports:  # an ACL user of the namespace on every data server (ACLs do not replicate)
        admin = raw(port, password=DATA)
        await admin.acl_setuser("app", enabled=True, passwords=[f"+{DATA}"], keys=["acl/*"], commands=["+@all"])
        await admin.aclose()
    for port in guarded.sentinel_ports:
        sentinel = raw(port, password=SENTRY)
        await sentinel.execute_command("ACL", "SETUSER", "watcher", "on", f">{SENTRY}", "+@all")
        await sentinel.aclose()
    where = hosts(guarded)
    url = f"redis+sentinel://:{quote(DATA, safe='')}@{where}/mymaster?prefix=pw&sentinel_password={quote(SENTRY)}"
    secret_file = tmp_path / "sentinel-password"
    secret_file.write_text(SENTRY + "\n")
    acl_url = (
        f"redis+sentinel://app:{quote(DATA, safe='')}@{where}/mymaster?prefix=acl"
        f"&sentinel_username=watcher&sentinel_password_file={secret_file}"
    )
    async with dfdb.connect(url, timeout=20) as nb, dfdb.connect(acl_url, timeout=20) as acl:
        assert not leaks(repr(nb)) and not leaks(str(nb.driver.url)) and not leaks(repr(nb.driver.__dict__))
        await nb.create(Item(id="before", topic="t"))
        await acl.create(Item(id="before", topic="t"))
        old = guarded.master_index()
        guarded.kill(old)
        await new_master(guarded, old)
        await nb.create(Item(id="after", topic="t"))  # the new master, found through the sentinels
        await acl.create(Item(id="after", topic="t"))
        assert {i.id for i in await acl.get_all(Item)} <= {"before", "after"}
        assert "after" in {i.id for i in await acl.get_all(Item)}
    refusals = {
        "a wrong sentinel password": url.replace(quote(SENTRY), quote(SENTRY + "x")),
        "no sentinel password": url.replace(f"&sentinel_password={quote(SENTRY)}", ""),
        "a wrong master password": url.replace(quote(DATA, safe=""), quote(DATA + "x", safe="")),
        "a wrong sentinel user": acl_url.replace("sentinel_username=watcher", "sentinel_username=nobody"),
    }
    messages = {}
    for case, bad in refusals.items():
        with pytest.raises(dfdb.AuthenticationError) as info:
            async with dfdb.connect(bad, timeout=15):
                pass
        messages[case] = str(info.value)
    assert "the sentinel at 127.0.0.1:" in messages["a wrong sentinel password"]
    assert "gives no sentinel_password" in messages["no sentinel password"]
    assert "sentinel at" not in messages["a wrong master password"]
    for case, message in messages.items():
        assert "\n" not in message and not leaks(message), case
    assert not any(leaks(record.getMessage()) for record in caplog.records)


async def test_tls_to_the_sentinels_and_the_master(tls_setup: SentinelSetup, tmp_path: Path) -> None:
    url = tls_setup.url + "&prefix=tls"
    async with dfdb.connect(url, timeout=20) as nb:
        async with nb.watch(Item) as stream:
            await nb.create(Item(id="before", topic="t"))
            assert (await anext(stream)).id == "before"
        old = tls_setup.master_index()
        tls_setup.kill(old)
        await new_master(tls_setup, old)
        await nb.create(Item(id="after", topic="t"))
        assert {i.id for i in await nb.get_all(Item)} >= {"after"}
    other = make_local_ca(tmp_path / "other")
    assert tls_setup.ca is not None
    one = f"127.0.0.1:{tls_setup.sentinel_ports[0]}"  # one sentinel: each refusal below takes one try
    url = url.replace(hosts(tls_setup), one)
    wrong_ca = url.replace(str(tls_setup.ca.ca_file), str(other.ca_file))
    with pytest.raises(dfdb.AuthenticationError, match="certificate was not accepted") as info:
        async with dfdb.connect(wrong_ca, timeout=15):
            pass
    assert "the sentinel at 127.0.0.1:" in str(info.value) and "\n" not in str(info.value)
    # plain TCP to the sentinels (no TLS at all, or TLS to the master only): the driver's own error
    for plain in (f"redis+sentinel://{one}/mymaster?prefix=tls", url + "&sentinel_tls=false"):
        driver = driver_class(DatabaseURL.parse(plain))(DatabaseURL.parse(plain))
        try:
            with pytest.raises(dfdb.BackendUnavailableError, match=r"if they serve TLS, (add|drop)") as failed:
                await driver.open()
        finally:
            await driver.aclose()
        assert "\n" not in str(failed.value)


@pytest.fixture
def plain() -> Iterator[SentinelSetup]:
    yield from serve(SentinelSetup)


@pytest.mark.parametrize("commands", [["+@read", "+@connection"], ["+@all", "-@write"]], ids=["read", "all-but-write"])
async def test_a_user_who_may_only_read_connects_through_the_sentinels(
    plain: SentinelSetup, commands: list[str]
) -> None:
    """As with redis:// (test_security_redis): an ACL user with no write command (and, in the
    strict form, no scripts) opens dfdb behind Sentinel before any writer made the dataset,
    lists, watches and keeps a checked Replica; its writes are refused with one
    AuthenticationError naming the command."""
    ns = f"ro{len(commands[0])}"
    for port in plain.data_ports:  # ACLs do not replicate: every data server has the users
        admin = raw(port)
        for user, allowed in ((f"{ns}-r", commands), (f"{ns}-w", ["+@all"])):
            await admin.acl_setuser(user, enabled=True, passwords=[f"+{DATA}"], keys=[f"{ns}/*"],
                                    channels=[f"{ns}/*"], commands=allowed)  # fmt: skip
        await admin.aclose()

    def url(user: str) -> str:
        return f"redis+sentinel://{user}:{quote(DATA, safe='')}@{hosts(plain)}/mymaster?prefix={ns}"

    async with dfdb.connect(url(f"{ns}-r"), timeout=10) as reader:
        listing = await reader.list(Item)
        assert listing.items == []
        async with (
            reader.watch(Item, since=listing.cursor) as stream,
            dfdb.Replica(reader, [Item]) as replica,
            dfdb.connect(url(f"{ns}-w"), timeout=10) as writer,
        ):
            await asyncio.wait_for(replica.wait_synced(), 10)
            one = await writer.create(Item(id="one", topic="t"))
            event = await asyncio.wait_for(anext(stream), 10)
            assert (event.action, event.obj) == (dfdb.Action.CREATE, one)  # the first epoch continues: no RESYNC
            await asyncio.wait_for(replica.wait_for(event.revision), 10)
            assert replica.get(Item, "one") == one == await reader.get(Item, "one")
            report = await replica.check()
            assert report.complete and report.buckets and not report.differing
        with pytest.raises(dfdb.AuthenticationError, match=r"not allowed: .*('evalsha'|'INCR |'info')") as info:
            await reader.create(Item(id="two", topic="t"))
        assert not leaks(str(info.value))
        assert "two" not in {i.id for i in await reader.get_all(Item)}
