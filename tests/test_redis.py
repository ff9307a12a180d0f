"""The Redis driver against a real redis-server: restarts, lost data, topic reads, bad input."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import dfdb
from dfdb.testing.servers import RedisServer, skip_missing_server
from watching import check_server_run, close_during_writes, serve, stop, watchers


class Port(dfdb.NbModel, table="redis_port"):
    n: int = 0


@pytest.fixture
def durable_server() -> Iterator[RedisServer]:
    yield from serve(lambda: RedisServer(appendonly=True))


@pytest.fixture
def volatile_server() -> Iterator[RedisServer]:
    yield from serve(lambda: RedisServer(appendonly=False))


async def server_record(url: str) -> list[tuple[str, int]]:
    """The server's own record of writes: the table stream, read raw."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url.split("?")[0])
    try:
        entries = await client.xrange("dfdb/s/redis_port")
    finally:
        await client.aclose()
    return [(fields[b"i"].decode(), int(eid.decode().split("-")[0])) for eid, fields in entries]


async def test_kill_9_with_persistence_loses_nothing(durable_server: RedisServer) -> None:
    url = durable_server.url
    async with dfdb.connect(url, timeout=20) as nb, watchers(nb, Port, 2) as ws:
        killed = asyncio.Event()

        async def writer() -> None:
            live: dict[str, Port] = {}
            for n in range(2000):
                key = f"p{n % 50}"
                if key in live:
                    live[key] = await nb.update(live[key].model_copy(update={"n": n}))
                else:
                    live[key] = await nb.create(Port(id=key, topic=f"t{n % 4}", n=n))
                if n == 700:
                    killed.set()

        async def killer() -> None:
            await killed.wait()
            await asyncio.to_thread(durable_server.restart)  # kill -9, then start on the same port

        await asyncio.gather(writer(), killer())  # a spurious Conflict/AlreadyExists error would raise here
        final = await server_record(url)
        assert len(final) == 2000
        for w in ws:
            await w.wait_past(final[-1][1])
            assert w.resyncs == 0
            assert w.pairs == final


@pytest.mark.parametrize("loss", ["restart", "flushall"])
async def test_lost_data_is_announced_and_reconciled(volatile_server: RedisServer, loss: str) -> None:
    url = volatile_server.url
    async with dfdb.connect(url, timeout=20) as nb, watchers(nb, Port, 2) as ws:
        for n in range(300):
            await nb.create(Port(id=f"old{n}", topic="t"))
        if loss == "restart":
            await asyncio.to_thread(volatile_server.restart)
        else:
            import redis.asyncio as aioredis

            raw = aioredis.Redis.from_url(url)
            await raw.flushall()
            await raw.aclose()
        for n in range(100):
            await nb.create(Port(id=f"new{n}", topic="t"))
        await nb.delete(Port, "new0")
        truth = {p.id: p.version for p in await nb.get_all(Port)}
        assert set(truth) == {f"new{n}" for n in range(1, 100)}
        for w in ws:
            async with asyncio.timeout(30):
                while w.view != truth or w.resyncs == 0:
                    w.moved.clear()
                    await w.moved.wait()
            assert w.resyncs >= 1


async def test_topic_watcher_reads_only_its_topic(volatile_server: RedisServer) -> None:
    async with dfdb.connect(volatile_server.url) as nb:
        async with nb.watch(Port, topics={"t7"}) as stream:
            for n in range(2000):
                await nb.create(Port(id=f"p{n}", topic=f"t{n % 20}"))
            mine = [await asyncio.wait_for(anext(stream), 10) for _ in range(100)]
            assert {ev.topic for ev in mine} == {"t7"}
            assert stream.records_read == 100


async def test_timed_out_reads_keep_their_connection(volatile_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    raw = aioredis.Redis.from_url(volatile_server.url)

    async def connections_made() -> int:
        return int((await raw.info("stats"))["total_connections_received"])

    try:
        async with dfdb.connect(volatile_server.url) as nb, nb.watch(Port) as stream:
            await nb.create(Port(id="first", topic="t"))
            assert (await asyncio.wait_for(anext(stream), 10)).id == "first"
            before = await connections_made()
            timeouts = 0
            for _ in range(200):  # a blocking read cancelled by its time-out, again and again
                try:
                    await asyncio.wait_for(anext(stream), 0.0003)
                except TimeoutError:
                    timeouts += 1
            await nb.create(Port(id="after", topic="t"))
            assert (await asyncio.wait_for(anext(stream), 10)).id == "after"
            assert timeouts == 200
            assert await connections_made() == before  # no connection was dropped and made again
            assert stream.reconnects == 0
    finally:
        await raw.aclose()


async def test_a_send_the_server_does_not_take_times_out_and_drops_its_connection(
    volatile_server: RedisServer,
) -> None:
    from redis import exceptions as rexc

    from dfdb.drivers.redis_tls import PlainConnection

    conn = PlainConnection(host="127.0.0.1", port=volatile_server.port, socket_timeout=0.3)
    await conn.connect()
    try:
        await conn.send_command("PING")
        assert await conn.read_response() == b"PONG"
        made: list[object] = []
        loop = asyncio.get_running_loop()
        loop.set_task_factory(lambda loop, coro, **kw: made.append(coro) or asyncio.Task(coro, loop=loop, **kw))
        try:
            await conn.send_command("PING")
        finally:
            loop.set_task_factory(None)
        assert made == []  # the send ran in its caller's task, none of its own
        assert await conn.read_response() == b"PONG"
        stop(volatile_server)  # it reads nothing more: the socket buffers fill up
        try:
            started = asyncio.get_running_loop().time()
            transport = conn._writer.transport if conn._writer is not None else None
            with pytest.raises(rexc.TimeoutError):
                for _ in range(1000):
                    await conn.send_packed_command(conn.pack_command("SET", "big", b"x" * (1 << 20)))
            assert asyncio.get_running_loop().time() - started < 10
            assert not conn.is_connected  # a send cut short leaves no half-written request behind
            await asyncio.sleep(0)  # the transport's close is a callback of the loop
            # closed at once, its unsent bytes dropped: not left closing until the server reads them
            assert transport is not None and transport.get_extra_info("socket").fileno() == -1
        finally:
            volatile_server.resume()
    finally:
        await conn.disconnect()


async def test_foreign_data_in_the_namespace_is_contained(
    volatile_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    import redis.asyncio as aioredis

    raw = aioredis.Redis.from_url(volatile_server.url)
    try:
        async with dfdb.connect(volatile_server.url) as nb, nb.watch(Port) as stream:
            await nb.create(Port(id="good", topic="t"))
            assert (await asyncio.wait_for(anext(stream), 10)).id == "good"
            # another program writes a plain string where an entry lives, and indexes it
            await raw.set("dfdb/e/redis_port/alien", "hello")
            await raw.sadd("dfdb/i/redis_port", "alien")
            with pytest.raises(dfdb.CorruptObjectError) as info:
                await nb.get(Port, "alien")
            assert (info.value.table, info.value.id) == ("redis_port", "alien")
            assert [p.id for p in await nb.get_all(Port)] == ["good"]
            assert "alien" in caplog.text
            # a stream entry with missing fields, at the next revision: its table is resynced
            rev = await raw.incr("dfdb/rev")
            await raw.xadd("dfdb/s/redis_port", {"a": "create"}, id=f"{rev}-0")
            await nb.create(Port(id="after", topic="t"))
            ev = await asyncio.wait_for(anext(stream), 10)
            assert (ev.action, ev.model, ev.revision) == (dfdb.Action.RESYNC, Port, rev)
            ev = await asyncio.wait_for(anext(stream), 10)
            assert ev.id == "after"
            assert stream.records_malformed == 1
            assert f"dfdb/s/redis_port {rev}-0" in caplog.text and "unreadable change record" in caplog.text
    finally:
        await raw.aclose()


@pytest.mark.parametrize("damage", ["string", "bad revision"])
@pytest.mark.parametrize("repair", ["put", "delete"])
async def test_an_entry_another_program_overwrote_is_repairable(
    volatile_server: RedisServer, damage: str, repair: str
) -> None:
    """An entry key another program turned into a plain string, or whose revision field
    it garbled: ``get`` reports it corrupt, ``put`` replaces it and ``delete`` removes it,
    and a watcher of every topic sees the repair."""
    import redis.asyncio as aioredis

    raw = aioredis.Redis.from_url(volatile_server.url)
    url = volatile_server.url + "?prefix=fix"
    try:
        async with dfdb.connect(url) as nb, nb.watch(Port) as stream:
            await nb.create(Port(id="a", topic="t"))
            assert (await asyncio.wait_for(anext(stream), 10)).id == "a"
            if damage == "string":
                await raw.delete("fix/e/redis_port/a")
                await raw.set("fix/e/redis_port/a", "hello")
            else:
                await raw.hset("fix/e/redis_port/a", "r", "x")
            with pytest.raises(dfdb.CorruptObjectError):
                await nb.get(Port, "a")
            with pytest.raises(dfdb.CorruptObjectError):  # a checked write refuses it
                await nb.update(Port(id="a", topic="t", version=1))
            if repair == "put":
                fixed = await nb.put(Port(id="a", topic="t", n=7))
                assert await nb.get(Port, "a") == fixed and fixed.n == 7
                ev = await asyncio.wait_for(anext(stream), 10)
                assert (ev.id, ev.obj) == ("a", fixed)
            else:
                await nb.delete(Port, "a")
                with pytest.raises(dfdb.NotFoundError):
                    await nb.get(Port, "a")
                ev = await asyncio.wait_for(anext(stream), 10)
                assert (ev.action, ev.id) == (dfdb.Action.DELETE, "a")
                assert await nb.get_all(Port) == []
    finally:
        await raw.aclose()


def test_password_never_shown() -> None:
    nb = dfdb.connect("redis://user:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in str(nb.url) and "hunter2" not in repr(nb.url)


async def test_unreachable_server_is_one_clear_error() -> None:
    from dfdb.testing.servers import free_port

    port = free_port()
    with pytest.raises(dfdb.BackendUnavailableError, match=f"127.0.0.1:{port}") as info:
        async with dfdb.connect(f"redis://u:secret@127.0.0.1:{port}/0", timeout=1):
            pass
    assert "secret" not in str(info.value)


def test_cli_unreachable_server_is_one_line_within_seconds() -> None:
    import subprocess
    import sys
    import time

    from dfdb.testing.servers import free_port

    port = free_port()
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "dfdb", "--db", f"redis://u:pw@127.0.0.1:{port}/0", "--timeout", "1", "ls", "lport"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and ":pw@" not in lines[0]


async def test_unix_socket_url(tmp_path: Path) -> None:
    import shutil

    from dfdb.testing.servers import free_port

    binary = shutil.which("redis-server")
    if binary is None:
        skip_missing_server("redis")
    sock = f"{tmp_path}/redis.sock"
    proc = await asyncio.create_subprocess_exec(
        binary, "--port", str(free_port()), "--bind", "127.0.0.1", "--unixsocket", sock, "--save", "",
        "--appendonly", "no", "--dir", str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with dfdb.connect(f"unix://{sock}", timeout=10) as nb:
            await nb.create(Port(id="u", topic="t"))
            assert (await nb.get(Port, "u")).id == "u"
    finally:
        proc.terminate()
        await proc.wait()


async def test_server_run_command_serves_until_interrupted() -> None:
    await check_server_run(RedisServer, "redis", "redis", Port)


@pytest.mark.parametrize("damage", ["id not UTF-8", "bad revision"])
async def test_hostile_keys_in_a_checked_scope_are_contained(
    volatile_server: RedisServer, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An indexed key whose id is not UTF-8, or an entry whose revision field is garbled:
    listings skip it, a Replica loads and checks its scope (periodically too) and repairs
    nothing, again and again."""
    import redis.asyncio as aioredis

    raw = aioredis.Redis.from_url(volatile_server.url)
    url = volatile_server.url + "?prefix=host"
    try:
        async with dfdb.connect(url) as nb:
            await nb.create_many([Port(id=f"p{i}", topic="t") for i in range(5)])
            if damage == "id not UTF-8":
                await raw.sadd("host/i/redis_port", b"\xff\xfe")
                await raw.sadd("host/i/redis_port/t/t", b"\xff\xfe")
                await raw.hset(b"host/e/redis_port/\xff\xfe", mapping={"v": b"{}", "t": b"t", "r": 3})
                whole = {"p0", "p1", "p2", "p3", "p4"}
            else:
                await raw.hset("host/e/redis_port/p3", "r", "x")
                whole = {"p0", "p1", "p2", "p4"}
            assert {p.id for p in await nb.get_all(Port)} == whole
            async with dfdb.Replica(nb, [Port], check_interval=0.05) as replica:
                for _ in range(2):
                    report = await asyncio.wait_for(replica.check(settle=1), 10)
                    assert report.complete and report.repaired == 0
                await asyncio.wait_for(replica.wait_for(0), 10)
                while replica.stats().checks < 5:  # the periodic checks go on
                    await asyncio.sleep(0.05)
                assert {p.id for p in replica.get_all(Port)} == whole
                assert replica.stats().repaired == 0
    finally:
        await raw.aclose()


async def server_clients(url: str, others: int, within: float = 2.0) -> int:
    """The connections the server holds besides this check's own, once they are at most
    ``others`` or ``within`` seconds have passed."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url.split("?")[0])
    try:
        async with asyncio.timeout(within + 5):
            deadline = asyncio.get_running_loop().time() + within
            while True:
                held = len(await client.client_list()) - 1
                if held <= others or asyncio.get_running_loop().time() >= deadline:
                    return held
                await asyncio.sleep(0.02)
    finally:
        await client.aclose()


@pytest.mark.parametrize("cancelled", ["cancel-scope", "task-cancel"])
async def test_a_close_that_is_cancelled_still_closes_every_connection(
    volatile_server: RedisServer, cancelled: str
) -> None:
    url = volatile_server.url + "?prefix=cancelled"
    nb = await dfdb.connect(url)
    await nb.create(Port(id="p"))
    async with nb.watch(Port) as stream:  # the reader's connection too
        await nb.update(Port(id="p", n=1, version=1))
        assert (await anext(stream)).id == "p"
    assert await server_clients(url, 2) == 2
    if cancelled == "cancel-scope":  # an `async with` left by a deadline closes in a cancelled scope
        with anyio.CancelScope() as scope:
            scope.cancel()
            await nb.aclose()
    else:
        closing = asyncio.create_task(nb.aclose())
        await asyncio.sleep(0)  # the close has begun
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):  # the cancellation is not swallowed
            await closing
    assert await server_clients(url, 0) == 0


async def test_many_listings_in_one_pipeline_equal_the_listings_one_by_one(volatile_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    ports = [Port(id=f"p{i}", topic="big") for i in range(1200)]  # past one listing round (1,000)
    ports += [Port(id=f"q{i}", topic=f"t{i % 3}", n=i) for i in range(30)] + [Port(id="loose")]
    scopes = [("redis_port", "big"), ("redis_port", "t0"), ("redis_port", "t2"), ("redis_port", None)]
    scopes.append(("redis_none", "t1"))
    async with dfdb.connect(volatile_server.url) as nb:
        await nb.create_many(ports)
        driver = nb.driver
        one_by_one = [await driver.list(table, topic) for table, topic in scopes]
        client = aioredis.Redis.from_url(volatile_server.url.split("?")[0])
        try:
            for flush in (False, True):  # with the script loaded, then without (a restarted server's)
                if flush:
                    await client.script_flush()
                many = await driver.list_many(scopes)
                assert [len(x.entries) for x in many] == [1200, 10, 10, 1231, 0]
                for mine, theirs in zip(many, one_by_one, strict=True):
                    assert sorted(mine.entries, key=lambda e: e.id) == sorted(theirs.entries, key=lambda e: e.id)
                    assert (mine.revision, mine.identity) == (theirs.revision, theirs.identity)
        finally:
            await client.aclose()


async def test_a_close_during_writes_leaves_no_connection_they_were_opening(volatile_server: RedisServer) -> None:
    """Writes in flight when the NbApi closes may still be connecting: a connection that
    comes up after the close is closed when its write ends, not kept in the closed pool."""
    url = volatile_server.url + "?prefix=closing"
    for turns in (1, 2, 3, 5, 8):
        await close_during_writes(url, Port, turns)
        assert await server_clients(url, 0) == 0, f"closed after {turns} turns"


async def test_a_trimmed_stream_resyncs_its_own_topic_only_in_its_place(volatile_server: RedisServer) -> None:
    """History trimmed past a watcher's cursor in one topic's stream is a ``RESYNC`` of that
    table and topic, in revision order; a stream that lost nothing unread goes on. (A
    ``RESYNC`` of everything watched made every controller of a fleet relist its whole scope.)"""
    async with dfdb.connect(volatile_server.url) as nb:
        await nb.create(Port(id="a", topic="t1"))
        await nb.create(Port(id="b", topic="t2"))
        async with nb.watch(Port, topics={"t1", "t2"}) as stream:
            await nb.create(Port(id="c", topic="t1"))
            seen = await asyncio.wait_for(anext(stream), 10)
            cursor = stream.cursor
        assert seen.id == "c"
        a = await nb.get(Port, "a")
        await nb.update(a.model_copy(update={"n": 1}))  # lost to the watcher: trimmed below
        await nb.driver.compact()
        later = await nb.create(Port(id="d", topic="t2"))
        again = await nb.create(Port(id="e", topic="t1"))
        async with nb.watch(Port, topics={"t1", "t2"}, since=cursor) as stream:
            got = [await asyncio.wait_for(anext(stream), 10) for _ in range(3)]
        assert [(ev.action, ev.model, ev.topic, ev.id) for ev in got] == [
            (dfdb.Action.RESYNC, Port, "t1", ""),
            (dfdb.Action.CREATE, Port, "t2", "d"),
            (dfdb.Action.CREATE, Port, "t1", "e"),
        ]
        assert [ev.revision for ev in got[1:]] == [dfdb.revision_of(later), dfdb.revision_of(again)]
        assert got[0].revision < got[1].revision
