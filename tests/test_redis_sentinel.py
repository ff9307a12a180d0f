"""Redis behind Sentinel (master, 2 replicas, 3 sentinels on loopback): failover under
writes, lost history announced, synchronous replicas, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import dfdb
from dfdb.drivers import driver_class
from dfdb.events import parse_cursor
from dfdb.sentinel_server import SentinelSetup, _command
from dfdb.servers import free_port
from dfdb.testing.servers import skip_missing_server
from dfdb.url import DatabaseURL
from watching import check_server_run, close_during_writes, serve, watchers


class Item(dfdb.NbModel, table="item"):
    n: int = 0


@pytest.fixture
def setup() -> Iterator[SentinelSetup]:
    yield from serve(SentinelSetup)


def raw(port: int, password: str | None = None) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis(host="127.0.0.1", port=port, password=password)


@contextlib.asynccontextmanager
async def cut_replication(setup: SentinelSetup) -> Any:
    """The replicas lose their link to the master and cannot make a new one (a wrong
    ``masterauth``) until the block ends."""
    replicas = [raw(p) for i, p in enumerate(setup.data_ports) if i != setup.master_index()]
    try:
        for r in replicas:
            await r.config_set("masterauth", "wrong")
            await r.execute_command("CLIENT", "KILL", "TYPE", "master")
        for r in replicas:
            async with asyncio.timeout(5):
                while (await r.info("replication"))["master_link_status"] != "down":
                    await asyncio.sleep(0.01)
        yield
    finally:
        for r in replicas:
            with contextlib.suppress(Exception):
                await r.config_set("masterauth", "")
            await r.aclose()


async def new_master(setup: SentinelSetup, old: int, within: float = 15) -> int:
    async with asyncio.timeout(within):
        while (index := await asyncio.to_thread(setup.master_index)) == old:
            await asyncio.sleep(0.05)
    return index


def check_history(pairs: list[tuple[str, int]]) -> None:
    """Revisions strictly increase: none repeated, none went back."""
    revisions = [r for _, r in pairs]
    assert revisions == sorted(set(revisions)), "a revision repeated or went back without a RESYNC"


WRITES = int(os.environ.get("DFDB_SENTINEL_WRITES", "800"))
"""Writes of the failover test, across two writers (``nox -s failover`` runs the full 2,000)."""


async def test_kill_9_of_the_master_during_writes(setup: SentinelSetup) -> None:
    url = setup.url + "&prefix=fo"
    per_writer = WRITES // 2
    async with (
        dfdb.connect(url, timeout=20) as nb,
        watchers(nb, Item, 2) as ws,
        dfdb.Replica(nb, [Item], mode=dfdb.SyncMode.FULL) as replica,
    ):
        await replica.wait_synced()
        killed = asyncio.Event()
        kill_time = 0.0
        acked: dict[str, float] = {}
        unknown: set[str] = set()
        resumed: list[float] = []  # for writes sent after the kill: seconds from the kill to their success

        async def writer(w: int) -> None:
            for n in range(per_writer):
                key = f"w{w}-{n}"
                sent = time.monotonic()
                try:
                    await nb.create(Item(id=key, topic=f"t{n % 4}", n=n))
                    acked[key] = time.monotonic()
                    if kill_time and sent > kill_time:
                        resumed.append(acked[key] - kill_time)
                except dfdb.OutcomeUnknownError:
                    unknown.add(key)
                if w == 0 and n == per_writer * 3 // 8:
                    killed.set()

        async def killer() -> None:
            nonlocal kill_time
            await killed.wait()
            old = setup.master_index()
            setup.kill(old)
            kill_time = time.monotonic()
            await new_master(setup, old)

        await asyncio.gather(writer(0), writer(1), killer())  # AlreadyExistsError (a write applied twice) raises here
        print(f"{WRITES} writes: resumed {min(resumed):.2f}s after the kill")
        assert min(resumed) < 10
        listing = await nb.list(Item)
        final = {i.id: i.version for i in listing.items}
        assert set(final.values()) == {1}  # created once each, never twice
        print(f"{len(set(acked) - set(final))} acknowledged writes lost (asynchronous replication)")
        assert set(final) <= set(acked) | unknown
        last = parse_cursor(listing.cursor)[1]
        for w in ws:
            await w.wait_past(last)
            assert w.view == final
            if w.resyncs == 0:  # saw every change, in order (with a RESYNC the view was replaced above)
                assert sorted(k for k, _ in w.pairs) == sorted(final)
                check_history(w.pairs)
        async with asyncio.timeout(20):
            while {i.id: i.version for i in replica.get_all(Item)} != final:
                await asyncio.sleep(0.05)


async def test_a_write_the_new_master_never_got_is_announced(setup: SentinelSetup) -> None:
    url = setup.url + "&prefix=lost"
    async with (
        dfdb.connect(url, timeout=20) as nb,
        watchers(nb, Item, 1) as (w,),
        dfdb.Replica(nb, [Item], mode=dfdb.SyncMode.FULL) as replica,
    ):
        await replica.wait_synced()
        for n in range(20):
            await nb.create(Item(id=f"kept{n}", topic="t"))
        old = setup.master_index()
        master = raw(setup.data_ports[old])
        assert await master.execute_command("WAIT", 2, 5000) == 2  # kept0..19 are on both replicas
        await master.aclose()
        held = (await nb.list(Item)).cursor
        async with cut_replication(setup):
            lonely = await nb.create(Item(id="lonely", topic="t"))  # on the master alone
            beyond = (await nb.list(Item)).cursor
            seen = parse_cursor(beyond)[1]
            await w.wait_past(seen)
            assert w.pairs[-1] == ("lonely", seen)
            await replica.wait_for(seen)
            assert replica.get(Item, "lonely") == lonely
            setup.kill(old)
        await new_master(setup, old)
        after = [await nb.create(Item(id=f"after{n}", topic="t")) for n in range(5)]  # reuses lonely's revision
        with pytest.raises(dfdb.NotFoundError):
            await nb.get(Item, "lonely")
        final = {i.id: i.version for i in await nb.get_all(Item)}
        assert "after4" in final
        # a cursor the new master holds resumes without RESYNC; one beyond it gets RESYNC first
        async with nb.watch(Item, since=held) as stream:
            async with asyncio.timeout(20):
                events = [await anext(stream) for _ in after]
        assert [(e.action, e.id) for e in events] == [(dfdb.Action.CREATE, a.id) for a in after]
        async with nb.watch(Item, since=beyond) as stream:
            async with asyncio.timeout(20):
                assert (await anext(stream)).action == dfdb.Action.RESYNC
        async with asyncio.timeout(20):
            while w.view != final:
                w.moved.clear()
                await w.moved.wait()
        assert w.resyncs == 1
        async with asyncio.timeout(20):
            while {i.id for i in replica.get_all(Item)} != set(final):
                await asyncio.sleep(0.05)
        assert replica.stats().resyncs >= 1
        # the old master comes back with its data as a replica: "lonely" does not reappear
        await asyncio.to_thread(setup.restart, old)
        back = raw(setup.data_ports[old])
        try:
            async with asyncio.timeout(20):
                while (await back.info("replication")).get("master_link_status") != "up":
                    await asyncio.sleep(0.05)
            assert not await back.exists("lost/e/item/lonely")
            assert await back.exists("lost/e/item/after4")
        finally:
            await back.aclose()
        assert len(after) == 5


async def test_a_stream_the_new_master_holds_continues(setup: SentinelSetup) -> None:
    url = setup.url + "&prefix=sync"
    async with (
        dfdb.connect(url, timeout=20) as nb,
        watchers(nb, Item, 2) as ws,
        dfdb.Replica(nb, [Item], mode=dfdb.SyncMode.SELECTIVE, topics={"t"}) as selective,
    ):
        await selective.wait_synced()
        held = (await nb.list(Item)).cursor  # before the failover
        async with dfdb.connect(url + "&min_replicas=2&min_replicas_timeout=5", timeout=20) as synced:
            for n in range(50):
                await synced.create(Item(id=f"k{n}", topic="t"))  # each on both replicas when acknowledged
        old = setup.master_index()
        setup.kill(old)
        start = time.monotonic()
        item = await nb.patch(Item, "k0", n=1)  # waits for the new master
        print(f"first write {time.monotonic() - start:.2f}s after the kill")
        assert item.version == 2
        final = {i.id: i.version for i in await nb.get_all(Item)}
        assert len(final) == 50
        await nb.create(Item(id="u0", topic="u"))
        await selective.add_topic("u")  # a cursor of the new term, on a stream that went on from the old one
        assert selective.get(Item, "u0") is not None
        await selective.wait_for(parse_cursor((await nb.list(Item)).cursor)[1])
        assert selective.get(Item, "k0") == await nb.get(Item, "k0")
        assert selective.stats().resyncs == 0
        final["u0"] = 1
        for w in ws:
            async with asyncio.timeout(20):
                while w.view != final:
                    w.moved.clear()
                    await w.moved.wait()
            assert w.resyncs == 0
            assert [k for k, _ in w.pairs] == [f"k{n}" for n in range(50)] + ["k0", "u0"]
            check_history(w.pairs)
        # the streams' cursors moved into the new term: a reopened stream goes on without RESYNC
        identity = parse_cursor((await nb.list(Item)).cursor)[0]
        for w in ws:
            assert w.stream is not None
            assert parse_cursor(w.stream.cursor)[0] == identity
        old_cursor = ws[0].pairs[49][1]
        async with nb.watch(Item, since=f"{parse_cursor(held)[0]}@{old_cursor}") as stream:
            async with asyncio.timeout(20):
                assert [(await anext(stream)).id for _ in range(2)] == ["k0", "u0"]
        # the same through a wrapping driver (the tests' fault injector): it asks the one it wraps
        wrapped = "faulty://" + url.split("://", 1)[1] + "&inner=redis%2Bsentinel"
        async with (
            dfdb.connect(wrapped, timeout=20) as through,
            through.watch(Item, since=f"{parse_cursor(held)[0]}@{old_cursor}") as stream,
        ):
            for action, id in [(dfdb.Action.UPDATE, "k0"), (dfdb.Action.CREATE, "u0")]:  # no RESYNC first
                async with asyncio.timeout(20):
                    event = await anext(stream)
                assert (event.action, event.id) == (action, id)
        assert ws[1].stream is not None
        await ws[1].stream.reopen()
        await nb.create(Item(id="u1", topic="u"))
        final["u1"] = 1
        async with asyncio.timeout(20):
            while ws[1].view != final:
                ws[1].moved.clear()
                await ws[1].moved.wait()
        assert ws[1].resyncs == 0


async def test_min_replicas_confirms_or_says_the_write_may_not_survive(setup: SentinelSetup) -> None:
    async with dfdb.connect(setup.url + "&prefix=mr&min_replicas=1", timeout=20) as nb:
        acked: list[str] = []

        async def writer() -> None:
            for n in range(300):
                try:
                    await nb.create(Item(id=f"m{n}", topic="t"))
                    acked.append(f"m{n}")
                except dfdb.DriverError as exc:  # not acknowledged: unknown, or not on a replica in time
                    if not isinstance(exc, dfdb.BackendUnavailableError):
                        assert "may or may not survive a failover" in str(exc)
                if n == 100:
                    old = setup.master_index()
                    setup.kill(old)

        await writer()
        assert len(acked) > 150
        present = {i.id for i in await nb.get_all(Item)}
        assert set(acked) <= present  # every acknowledged write survived the failover
    async with dfdb.connect(setup.url + "&prefix=mr&min_replicas=2&min_replicas_timeout=0.2", timeout=20) as nb:
        with pytest.raises(dfdb.DriverError, match="may or may not survive a failover"):
            await nb.create(Item(id="two", topic="t"))  # one replica is gone: only 1 of 2 confirms


async def test_a_lost_sentinel_quorum_is_unavailable_until_it_returns(setup: SentinelSetup) -> None:
    async with dfdb.connect(setup.url + "&prefix=q", timeout=3) as nb:
        await nb.create(Item(id="before", topic="t"))
        old = setup.master_index()
        setup.kill_sentinel(1)
        setup.kill_sentinel(2)
        setup.kill(old)  # one sentinel alone cannot agree that the master is down
        with pytest.raises(dfdb.BackendUnavailableError) as info:
            await nb.create(Item(id="during", topic="t"))
        assert "\n" not in str(info.value)
        await asyncio.to_thread(setup.restart_sentinel, 1)
        await asyncio.to_thread(setup.restart_sentinel, 2)
        await new_master(setup, old, within=60)  # a split vote retries after 2 x failover-timeout (10 s)
        await nb.create(Item(id="after", topic="t"))
        assert {i.id for i in await nb.get_all(Item)} >= {"before", "after"}


async def test_bad_input_is_one_clear_line(setup: SentinelSetup) -> None:
    with pytest.raises(dfdb.ConfigurationError, match="monitors no master named 'nope'"):
        async with dfdb.connect(setup.url.replace("mymaster", "nope"), timeout=10):
            pass
    gone = DatabaseURL.parse(f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/mymaster")
    driver = driver_class(gone)(gone)  # the driver's own error: NbApi retries it until its timeout
    try:
        with pytest.raises(dfdb.BackendUnavailableError, match="no sentinel is reachable"):
            await driver.open()
    finally:
        await driver.aclose()
    replica = setup.data_ports[1]
    with pytest.raises(dfdb.ConfigurationError, match=r"read-only replica of 127\.0\.0\.1:"):
        async with dfdb.connect(f"redis://127.0.0.1:{replica}/0", timeout=10):
            pass
    with pytest.raises(dfdb.InvalidURL, match="master's name"):
        async with dfdb.connect("redis+sentinel://127.0.0.1:1/", timeout=3):
            pass


async def test_a_database_number_the_server_lacks_is_one_clear_line(setup: SentinelSetup) -> None:
    master = setup.master_port()
    for url in (f"redis://127.0.0.1:{master}/99", setup.url.replace("db=0", "db=99")):
        with pytest.raises(dfdb.ConfigurationError, match="db=99 is out of range: the server has fewer") as info:
            async with dfdb.connect(url, timeout=10):
                pass
        assert "\n" not in str(info.value)


def test_a_cluster_node_is_refused(tmp_path: Any) -> None:
    if not SentinelSetup.available():
        skip_missing_server("redis")
    port = free_port()
    while port > 55000:  # the cluster bus listens on port + 10000
        port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if _command(port, "PING").startswith(b"+PONG"):
                    break
            time.sleep(0.02)
        out = subprocess.run(
            [sys.executable, "-m", "dfdb", "--db", f"redis://127.0.0.1:{port}/0", "--timeout", "5", "ls", "lport"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 2  # a configuration mistake
        assert out.stderr.count("\n") == 1, out.stderr
        assert "Redis Cluster is not supported" in out.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_server_run_redis_sentinel(tls: bool) -> None:
    await check_server_run(SentinelSetup, "redis-sentinel", "redis+sentinel", Item, hosts=3, tls=tls)  # 3 sentinels


async def test_a_sentinel_and_a_data_port_swapped_are_one_clear_line(setup: SentinelSetup) -> None:
    sentinel, master = setup.sentinel_ports[0], setup.master_port()
    swapped = {
        f"redis://127.0.0.1:{sentinel}/0": "is a Redis Sentinel, not a data server: use redis\\+sentinel://",
        f"redis+sentinel://127.0.0.1:{master}/mymaster": f"127.0.0.1:{master} is not a Redis Sentinel",
    }
    for url, message in swapped.items():
        with pytest.raises(dfdb.ConfigurationError, match=message) as info:
            async with dfdb.connect(url, timeout=10):
                pass
        assert "\n" not in str(info.value)


async def test_unreachable_sentinels_name_the_url_once() -> None:
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/mymaster"
    with pytest.raises(dfdb.BackendUnavailableError, match="connect failed: ") as info:
        async with dfdb.connect(url, timeout=1):
            pass
    assert str(info.value).count(url) == 1, str(info.value)


async def test_concurrent_writes_with_min_replicas(setup: SentinelSetup) -> None:
    async with dfdb.connect(setup.url + "&prefix=cw&min_replicas=1", timeout=10) as nb:
        created = await asyncio.gather(*(nb.create(Item(id=f"c{n}", topic="t", n=n)) for n in range(20)))
        assert [i.n for i in created] == list(range(20))
        assert len(await nb.get_all(Item)) == 20
    async with dfdb.connect(setup.url + "&prefix=cw&min_replicas=3&min_replicas_timeout=0.1", timeout=10) as nb:
        writes = (nb.create(Item(id=f"r{n}", topic="t")) for n in range(5))
        refused = await asyncio.gather(*writes, return_exceptions=True)
        for exc in refused:  # every concurrent write waited, and only 2 replicas exist
            assert isinstance(exc, dfdb.DriverError) and "may or may not survive" in str(exc), repr(exc)


async def our_connections(port: int) -> int:
    """The client connections a sentinel holds, besides the other sentinels' and this check's own."""
    check = raw(port)
    try:
        clients = await check.client_list()
        return sum(
            1 for c in clients if not str(c.get("name")).startswith("sentinel") and c.get("cmd") != "client|list"
        )
    finally:
        await check.aclose()


async def test_connections_made_at_once_find_the_master_and_are_closed(setup: SentinelSetup) -> None:
    url = DatabaseURL.parse(setup.url + "&prefix=once")
    driver = driver_class(url)(url)
    await driver.open()
    try:
        # the first two sentinels no longer know the master: as after a failover, every new
        # connection walks the list of sentinels, several at once
        for port in setup.sentinel_ports[:2]:
            sentinel = raw(port)
            await sentinel.execute_command("SENTINEL", "REMOVE", "mymaster")
            await sentinel.aclose()
        reads = await asyncio.gather(*(driver.get("item", f"k{n}") for n in range(8)), return_exceptions=True)
        assert sum([await our_connections(p) for p in setup.sentinel_ports]) > 0
    finally:
        await driver.aclose()
    deadline = time.monotonic() + 5  # every sentinel's connections are closed with the driver
    while any(left := [await our_connections(p) for p in setup.sentinel_ports]) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert left == [0, 0, 0]
    assert reads == [None] * 8  # none skipped a sentinel and found no master


async def test_a_close_during_writes_leaves_no_connection_to_the_master(setup: SentinelSetup) -> None:
    """Writes in flight when the NbApi closes may still be connecting to the master: such a
    connection is closed when its write ends, not kept in the closed pool."""
    url = setup.url + "&prefix=closing"
    master = raw(setup.master_port(), setup.password)
    try:
        before = len(await master.client_list())
        for turns in (1, 2, 3, 5):
            await close_during_writes(url, Item, turns)
            async with asyncio.timeout(10):
                while (held := len(await master.client_list())) > before:
                    await asyncio.sleep(0.05)  # replicas and sentinels reconnect now and then; ours must go
            assert held <= before, f"closed after {turns} turns"
    finally:
        await master.aclose()
