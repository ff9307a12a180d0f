"""The ZooKeeper driver against real ZooKeeper: restarts, session expiry, an ensemble losing
its leader, log buckets and pruning, 100k objects, foreign data, URLs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import struct
import time
from collections.abc import Callable, Iterator

import pytest
from aiozk import ZKClient, protocol

import dfdb
from dfdb.drivers import ABSENT, PutRequest
from dfdb.drivers.zookeeper import ZooKeeperDriver
from dfdb.testing.servers import ZooKeeperServer
from watching import Watcher, check_server_run, serve, watchers


class Port(dfdb.NbModel, table="zk_port"):
    n: int = 0


@pytest.fixture
def single() -> Iterator[ZooKeeperServer]:
    yield from serve(lambda: ZooKeeperServer(1))


@pytest.fixture
def ensemble() -> Iterator[ZooKeeperServer]:
    yield from serve(lambda: ZooKeeperServer(3))


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ZooKeeperServer]:
    yield from serve(lambda: ZooKeeperServer(1))


@pytest.fixture
async def kept(shared_server: ZooKeeperServer) -> ZooKeeperServer:
    """One server for the tests that neither restart nor stop it and write little (a JVM
    takes seconds to start), emptied before each: every test starts from an empty tree, as
    on a server of its own."""
    client = ZKClient(shared_server.url.split("://")[1], session_timeout=10)
    await client.start()
    try:
        for child in await client.get_children("/"):
            if child != "zookeeper":
                await client.deleteall(f"/{child}")
    finally:
        await client.close()
    return shared_server


async def server_history(server: ZooKeeperServer, table: str = "zk_port") -> list[tuple[str, int]]:
    """The server's own record: every change node of the table's logs, read with a raw
    aiozk client, in zxid order."""
    alive = next(i for i, proc in enumerate(server.processes) if proc is not None and proc.poll() is None)
    client = ZKClient(f"127.0.0.1:{server.client_ports[alive]}", session_timeout=10)
    await client.start()
    pairs: list[tuple[str, int]] = []
    try:
        for topic in await client.get_children(f"/dfdb/l/{table}/t"):
            log_path = f"/dfdb/l/{table}/t/{topic}"
            for bucket in await client.get_children(log_path):
                for change in await client.get_children(f"{log_path}/{bucket}"):
                    data, stat = await client.get(f"{log_path}/{bucket}/{change}")
                    pairs.append((data.split(b"\n")[1].decode(), stat.created_zxid))
    finally:
        await client.close()
    return sorted(pairs, key=lambda p: p[1])


async def raw_children(server: ZooKeeperServer, path: str) -> list[str]:
    client = ZKClient(server.url.split("://")[1], session_timeout=10)
    await client.start()
    try:
        return list(await client.get_children(path))
    finally:
        await client.close()


async def raw_create(server: ZooKeeperServer, path: str, data: bytes) -> None:
    """A sequential node written by another client than dfdb."""
    client = ZKClient(server.url.split("://")[1], session_timeout=10)
    await client.start()
    try:
        await client.create(path, data, sequential=True)
    finally:
        await client.close()


async def write_ports(nb: dfdb.NbApi, count: int, at: int, reached: asyncio.Event) -> None:
    """Creates and updates over 50 keys and 4 topics; sets ``reached`` after write ``at``."""
    live: dict[str, Port] = {}
    for n in range(count):
        key = f"p{n % 50}"
        if key in live:
            live[key] = await nb.update(live[key].model_copy(update={"n": n}))
        else:
            live[key] = await nb.create(Port(id=key, topic=f"t{n % 4}", n=n))
        if n == at:
            reached.set()


async def check_watchers(ws: list[Watcher], server: ZooKeeperServer, writes: int) -> None:
    history = await server_history(server)
    assert len(history) == writes
    for w in ws:
        try:
            await w.wait_past(history[-1][1])
        except TimeoutError:
            pytest.fail(f"watcher at {w.position} with {len(w.pairs)} changes, server at {history[-1]}")
        assert w.resyncs == 0
        assert sorted(w.pairs, key=lambda p: p[1]) == history
        assert len(w.pairs) == writes


async def test_restart_loses_nothing(single: ZooKeeperServer) -> None:
    async with dfdb.connect(single.url, timeout=30) as nb, watchers(nb, Port, 2) as ws:
        reached = asyncio.Event()

        async def restarter() -> None:
            await reached.wait()
            await asyncio.to_thread(single.restart)  # kill -9, then start with the same data

        await asyncio.gather(write_ports(nb, 2000, 700, reached), restarter())
        await check_watchers(ws, single, 2000)


async def test_writes_go_on_after_the_server_lost_its_data(single: ZooKeeperServer) -> None:
    """A server back without its data (its folder lost) holds none of the parent nodes the
    driver made before: every kind of write makes them again, in the same process."""
    async with dfdb.connect(single.url, timeout=30) as nb:
        await nb.create(Port(id="a", topic="t"))
        await nb.create_many([Port(id="b", topic="t"), Port(id="c")])
        assert await nb.allocate_unique_key(Port) == 1
        async with nb.lease(ttl=10) as lease:
            await nb.create(Port(id="d", topic="t"), lease=lease)
        single.kill()
        shutil.rmtree(single.workdir / "m0")  # the snapshot and the transaction log
        await asyncio.to_thread(single.restart)
        await nb.create(Port(id="a", topic="t", n=2))
        await nb.create_many([Port(id="b", topic="t"), Port(id="c"), Port(id="e", topic="t3")])
        assert await nb.allocate_unique_key(Port) == 1  # a new dataset: its keys start again
        async with nb.lease(ttl=10) as lease:
            await nb.create(Port(id="d", topic="t"), lease=lease)
            assert sorted((p.id, p.n) for p in await nb.get_all(Port)) == [
                ("a", 2), ("b", 0), ("c", 0), ("d", 0), ("e", 0),
            ]  # fmt: skip


async def expire_session(nb: dfdb.NbApi, server: ZooKeeperServer) -> None:
    """End the driver's session from another connection, as ZooKeeper does after a long
    pause, and wait for the driver to start a new one. The other connection sends its
    connect and close requests in one write: the driver, which reconnects at once when
    its connection is taken, cannot take the session back in between."""
    driver = nb.driver
    assert isinstance(driver, ZooKeeperDriver)
    old = driver.session_id
    password = driver._calls._session().password  # the session's secret: only a test takes it
    hello = protocol.ConnectRequest(
        protocol_version=0, last_seen_zxid=0, timeout=10_000, session_id=old, password=password,
        read_only=False,
    ).serialize()  # fmt: skip
    bye = protocol.CloseRequest().serialize(1)
    host, port = server.url.split("://")[1].split(",")[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(struct.pack("!i", len(hello)) + hello + struct.pack("!i", len(bye)) + bye)
        await writer.drain()
        await asyncio.wait_for(reader.read(), 10)  # the server closes the connection after the close
    finally:
        writer.close()
        await writer.wait_closed()
    async with asyncio.timeout(30):
        while driver.session_id in (old, None):
            with contextlib.suppress(dfdb.BackendUnavailableError):  # the probe may meet the repair
                await nb.driver.get("zk_port", "probe")


async def test_session_expiry_is_survived(single: ZooKeeperServer) -> None:
    async with dfdb.connect(single.url + "?session_timeout=4", timeout=30) as nb, watchers(nb, Port, 2) as ws:
        reached = asyncio.Event()

        async def expirer() -> None:
            await reached.wait()
            await expire_session(nb, single)

        await asyncio.gather(write_ports(nb, 600, 200, reached), expirer())
        await check_watchers(ws, single, 600)


async def test_leader_killed_during_writes_and_watches(ensemble: ZooKeeperServer) -> None:
    async with dfdb.connect(ensemble.url, timeout=30) as nb, watchers(nb, Port, 2) as ws:
        reached = asyncio.Event()

        async def killer() -> None:
            await reached.wait()
            ensemble.kill(await asyncio.to_thread(ensemble.leader))

        # a spurious AlreadyExistsError or ConflictError after the election would raise here
        await asyncio.gather(write_ports(nb, 600, 200, reached), killer())
        await check_watchers(ws, ensemble, 600)


async def test_buckets_move_on_and_pruning_is_announced(kept: ZooKeeperServer) -> None:
    async with dfdb.connect(kept.url + "/b?bucket_size=10&keep=2") as nb:
        async with nb.watch(Port) as live, nb.watch(Port) as stalled:
            await nb.create(Port(id="first", topic="t"))
            assert (await asyncio.wait_for(anext(stalled), 10)).id == "first"
            cursor = stalled.cursor
            assert (await asyncio.wait_for(anext(live), 10)).id == "first"
            for n in range(45):  # the live stream keeps up, across 5 buckets
                await nb.create(Port(id=f"p{n}", topic="t"))
                ev = await asyncio.wait_for(anext(live), 10)
                assert (ev.action, ev.id) == (dfdb.Action.CREATE, f"p{n}")
        buckets = await raw_children(kept, "/b/l/zk_port/t/t")
        assert len(buckets) == 2  # the others were pruned
        async with nb.watch(Port, since=cursor) as resumed:
            ev = await asyncio.wait_for(anext(resumed), 10)
            assert ev.action == dfdb.Action.RESYNC
            assert len((await nb.list(Port)).items) == 46


@pytest.mark.timeout(400)  # a size test: 1.5 min alone, more beside other work
async def test_hundred_thousand_objects(single: ZooKeeperServer) -> None:
    count = 100_000
    async with dfdb.connect(single.url + "/big", timeout=120) as nb:
        started = time.monotonic()
        writes = [
            PutRequest("zk_port", f"p{n}", f"t{n % 20}", b'{"id": "p%d", "n": %d}' % (n, n), dfdb.drivers.ABSENT)
            for n in range(count)
        ]
        results = await nb.driver.put_many(writes)
        assert all(isinstance(r, int) for r in results)
        loaded = time.monotonic() - started
        listing = await nb.driver.list("zk_port")
        assert len(listing.entries) == count
        assert {e.id for e in listing.entries} == {f"p{n}" for n in range(count)}
        print(f"100k: bulk load {loaded:.1f}s, list {time.monotonic() - started - loaded:.1f}s")


async def test_foreign_data_is_reported_and_made_whole(kept: ZooKeeperServer, caplog: pytest.LogCaptureFixture) -> None:
    """A value that is not a Port is skipped with a warning; a change record that is not
    dfdb's is logged, counted and answered with a RESYNC of its table, and the stream goes
    on with the next change."""
    async with dfdb.connect(kept.url) as nb, nb.watch(Port) as stream:
        raw = await nb.driver.watch(["zk_port"])
        try:
            await nb.create(Port(id="good", topic="t"))
            assert (await asyncio.wait_for(anext(stream), 10)).id == "good"
            driver = nb.driver
            await driver.put("zk_port", "alien", "t", b'{"id": "alien", "n": "many"}', dfdb.drivers.ABSENT)
            await raw_create(kept, "/dfdb/l/zk_port/t/t/b0000000000/c", b"?\nnonsense")
            await nb.create(Port(id="after", topic="t"))
            resync = await asyncio.wait_for(anext(stream), 10)
            assert (resync.action, resync.model) == (dfdb.Action.RESYNC, Port)
            ev = await asyncio.wait_for(anext(stream), 10)
            assert (ev.action, ev.id) == (dfdb.Action.CREATE, "after")
            assert "alien" in caplog.text
            assert "unreadable change record /dfdb/l/zk_port/t/t/b0000000000/c0000000002" in caplog.text
            seen = [await asyncio.wait_for(anext(raw), 10) for _ in range(4)]
            assert [(e.action, e.id) for e in seen] == [
                ("create", "good"), ("create", "alien"), ("resync", ""), ("create", "after")
            ]  # fmt: skip
            assert seen[2].table == "zk_port"
            assert raw.records_malformed == 1
        finally:
            await raw.aclose()
        with pytest.raises(dfdb.CorruptObjectError):
            await nb.get(Port, "alien")
        assert sorted(p.id for p in await nb.get_all(Port)) == ["after", "good"]


def test_password_never_shown() -> None:
    nb = dfdb.connect("zk://user:hunter2@127.0.0.1:1,127.0.0.1:2/chroot")
    assert "hunter2" not in str(nb.url) and "hunter2" not in repr(nb.url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("zk://127.0.0.1:1?bogus=1", "unknown zk:// option"),
        ("zk://user@127.0.0.1:1", "names the user .user. but no password"),
        ("zk://127.0.0.1:1?bucket_size=1", "bucket_size"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(dfdb.InvalidURL, match=message):
        dfdb.connect(url)


async def test_unreachable_ensemble_is_one_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    """One error, and no traceback in the logs for each refused connection (aiozk logs
    one with every attempt; dfdb keeps them out: refusals are expected and retried)."""
    from dfdb.testing.servers import free_port

    url = f"zk://u:secret@127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    with pytest.raises(dfdb.BackendUnavailableError) as info:
        async with dfdb.connect(url, timeout=3):
            pass
    assert "secret" not in str(info.value)
    assert [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


async def test_digest_authentication(single: ZooKeeperServer) -> None:
    """With credentials, dfdb's nodes are for that user alone, and the credentials are sent
    again on every new connection: writes and watches go on through server restarts."""
    url = single.url.replace("://", "://ops:pw@") + "/auth"
    async with dfdb.connect(url, timeout=30) as nb, nb.watch(Port) as stream:
        live = await nb.create(Port(id="a", topic="t"))
        assert (await asyncio.wait_for(anext(stream), 10)).id == "a"
        for n in range(3):  # back to back: the reconnection itself may meet the next restart
            await asyncio.to_thread(single.restart)
            live = await nb.update(live.model_copy(update={"n": n + 1}))
            event = await asyncio.wait_for(anext(stream), 30)
            assert (event.id, event.obj) == ("a", live)
    for stranger in (single.url + "/auth", single.url.replace("://", "://ops:wrong@") + "/auth"):
        with pytest.raises(dfdb.DriverError, match="not allowed") as info:
            async with dfdb.connect(stranger, timeout=5) as nb:
                await nb.get(Port, "a")
        assert "wrong" not in str(info.value)


async def test_server_run_command_starts_an_ensemble() -> None:
    await check_server_run(ZooKeeperServer, "zookeeper", "zk", Port, members=3)


async def test_cancelled_reads_lose_nothing(single: ZooKeeperServer, caplog: pytest.LogCaptureFixture) -> None:
    """Reads cut short by a 0.3 ms timeout while 300 objects are created: afterwards every
    event arrives exactly once and in order, on the same connection, and closing the stream
    leaves no task behind."""
    caplog.set_level("DEBUG", logger="dfdb.drivers.zookeeper")
    async with dfdb.connect(single.url + "/cut?bucket_size=100&keep=30&idle=1") as nb:
        session = nb.driver.session_id  # type: ignore[attr-defined]
        before = asyncio.all_tasks()
        got: list[str] = []
        async with nb.watch(Port) as stream:

            async def writer() -> None:
                for n in range(300):
                    await nb.create(Port(id=f"p{n:03d}", topic=f"t{n % 3}"))

            writing = asyncio.create_task(writer())
            while not writing.done():
                with contextlib.suppress(TimeoutError):
                    got.append((await asyncio.wait_for(anext(stream), 0.0003)).id)
            await writing
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    while len(got) < 300:
                        got.append((await anext(stream)).id)
        assert got == [f"p{n:03d}" for n in range(300)]
        assert nb.driver.session_id == session  # type: ignore[attr-defined]
        assert "reconnecting" not in caplog.text and "retrying" not in caplog.text
        assert asyncio.all_tasks() - before == set()


class Blob(dfdb.NbModel, table="zk_blob"):
    data: str = ""


async def test_value_size_limit(kept: ZooKeeperServer) -> None:
    """A value over the driver's limit is refused at once, naming the limit, and nothing is
    written; one just under it is created, updated, watched and deleted."""
    limit = ZooKeeperDriver.max_value_size
    async with dfdb.connect(kept.url + "/size") as nb, nb.watch(Blob) as stream:
        started = time.monotonic()
        with pytest.raises(dfdb.ValueTooLargeError, match=f"{limit:,}") as info:
            await nb.create(Blob(id="big", topic="t", data="x" * 2_000_000))
        assert isinstance(info.value, ValueError)
        assert "zk://" in str(info.value)
        assert time.monotonic() - started < 1
        with pytest.raises(dfdb.NotFoundError):
            await nb.get(Blob, "big")
        results = await nb.driver.put_many(
            [PutRequest("zk_blob", "huge", "t", b"x" * (limit + 1), dfdb.drivers.ABSENT),
             PutRequest("zk_blob", "small", "t", b'{"id": "small", "topic": "t"}', dfdb.drivers.ABSENT)]
        )  # fmt: skip
        assert isinstance(results[0], dfdb.ValueTooLargeError) and isinstance(results[1], int)
        await nb.delete(Blob, "small")
        near = limit - 1000  # the JSON around the data, the version and the write id
        blob = await nb.create(Blob(id="near", topic="t", data="y" * near))
        blob = await nb.update(blob.model_copy(update={"data": "z" * near}))
        await nb.delete(Blob, "near")
        seen = [await asyncio.wait_for(anext(stream), 10) for _ in range(5)]
        assert [(e.action, e.id) for e in seen] == [
            (dfdb.Action.CREATE, "small"), (dfdb.Action.DELETE, "small"),
            (dfdb.Action.CREATE, "near"), (dfdb.Action.UPDATE, "near"), (dfdb.Action.DELETE, "near"),
        ]  # fmt: skip
        assert seen[3].obj == blob


@pytest.mark.parametrize("key", ["\U0001f512", "\uf000", "a\ufff0"])
async def test_ids_and_topics_zookeeper_cannot_name_are_refused_clearly(kept: ZooKeeperServer, key: str) -> None:
    """Valid dfdb keys with a character ZooKeeper refuses in node names: a write is refused
    with UnstorableKeyError naming the key (not the client's BadArguments), nothing is
    written, and reads find nothing; every other write of a batch goes through."""
    async with dfdb.connect(kept.url + "/keys") as nb:
        with pytest.raises(dfdb.UnstorableKeyError, match="zk://") as info:
            await nb.create(Blob(id=key, topic="t"))
        assert info.value.key == key and isinstance(info.value, ValueError)
        with pytest.raises(dfdb.UnstorableKeyError, match="topic"):
            await nb.create(Blob(id="plain", topic=key))
        with pytest.raises(dfdb.NotFoundError):
            await nb.get(Blob, key)
        with pytest.raises(dfdb.NotFoundError):
            await nb.delete(Blob, key)
        assert await nb.get_all(Blob, topic=key) == []
        results = await nb.driver.put_many(
            [PutRequest("zk_blob", key, "t", b'{"id": "x"}', dfdb.drivers.ABSENT),
             PutRequest("zk_blob", "fine", "t", b'{"id": "fine", "topic": "t"}', dfdb.drivers.ABSENT)]
        )  # fmt: skip
        assert isinstance(results[0], dfdb.UnstorableKeyError) and isinstance(results[1], int)
        assert [b.id for b in await nb.get_all(Blob)] == ["fine"]


@pytest.mark.parametrize("damage", ["garbage index", "no data node"])
@pytest.mark.parametrize("repair", ["put", "delete"])
async def test_an_index_node_another_program_broke_is_repairable(
    kept: ZooKeeperServer, damage: str, repair: str
) -> None:
    """An index node rewritten to data that is not dfdb's (its data node still there), or
    left naming a data node another program deleted: ``put`` replaces the object and
    ``delete`` removes it (or says it is not there), instead of giving up after retries."""
    import hashlib

    shard = hashlib.blake2s(b"a", digest_size=1).hexdigest()
    async with dfdb.connect(kept.url + "/mend") as nb, nb.watch(Port) as stream:
        await nb.create(Port(id="a", topic="t"))
        assert (await asyncio.wait_for(anext(stream), 10)).id == "a"
        client = ZKClient(kept.url.split("://")[1], session_timeout=10)
        await client.start()
        try:
            if damage == "garbage index":
                await client.set_data(f"/mend/i/zk_port/{shard}/a", b"garbage")
            else:
                await client.delete(f"/mend/d/zk_port/t/t/{shard}/a")
        finally:
            await client.close()
        if damage == "garbage index":
            with pytest.raises(dfdb.CorruptObjectError):
                await nb.get(Port, "a")
        if repair == "put":
            fixed = await asyncio.wait_for(nb.put(Port(id="a", topic="t", n=7)), 20)
            assert await nb.get(Port, "a") == fixed and fixed.n == 7
            ev = await asyncio.wait_for(anext(stream), 10)
            assert (ev.id, ev.obj) == ("a", fixed)
        elif damage == "garbage index":
            await asyncio.wait_for(nb.delete(Port, "a"), 20)
            ev = await asyncio.wait_for(anext(stream), 10)
            assert (ev.action, ev.id, ev.topic) == (dfdb.Action.DELETE, "a", "t")
        else:
            with pytest.raises(dfdb.NotFoundError):
                await asyncio.wait_for(nb.delete(Port, "a"), 20)
        if repair == "delete":
            with pytest.raises(dfdb.NotFoundError):
                await nb.get(Port, "a")
            await nb.create(Port(id="a", topic="u"))  # the id is free again, under any topic


async def test_a_table_s_first_change_keeps_its_place_among_other_tables(single: ZooKeeperServer) -> None:
    """A stream over several tables delivers a table's first change (its change log made by
    that very write) in revision order among the other tables' changes, exactly once, also
    when the write lands right after the stream looked for new logs in that table and a
    later change of another table is read in the same round."""
    async with dfdb.connect(single.url + "/order") as nb, dfdb.connect(single.url + "/order") as other:
        driver, writer = nb.driver, other.driver
        assert isinstance(driver, ZooKeeperDriver)
        await driver.put("zk_a", "a1", None, b"{}", ABSENT)
        stream = await driver.watch(["zk_a", "zk_b"])
        try:
            landed: list[tuple[str, int]] = []
            locations = driver._logs.locations

            async def landing(table: str, watch: bool = False) -> list[str]:
                found = await locations(table, watch)
                if table == "zk_b" and watch and not landed:  # the stream looked: nothing there yet
                    landed.append(("b1", await writer.put("zk_b", "b1", None, b"{}", ABSENT)))
                    landed.append(("a3", await writer.put("zk_a", "a3", None, b"{}", ABSENT)))
                    await driver._calls.current_revision()  # their watch events come before this reply
                return found

            driver._logs.locations = landing  # type: ignore[method-assign]
            a2 = await writer.put("zk_a", "a2", "t", b"{}", ABSENT)  # a new topic's log: a look for new logs
            got = [await asyncio.wait_for(anext(stream), 10) for _ in range(3)]
            assert [(e.id, e.revision) for e in got] == [("a2", a2), *landed]
            last = await writer.put("zk_b", "b2", None, b"{}", ABSENT)
            assert [(e.id, e.revision) for e in [await asyncio.wait_for(anext(stream), 10)]] == [("b2", last)]
        finally:
            await stream.aclose()


async def test_a_create_makes_its_missing_shard_nodes_in_its_own_multi(single: ZooKeeperServer) -> None:
    """A create into shards not made yet is still one request (the shard nodes are made in
    its multi), and writers racing to make the same shard node all succeed."""
    async with dfdb.connect(single.url + "/shards") as nb, dfdb.connect(single.url + "/shards") as other:
        driver = nb.driver
        assert isinstance(driver, ZooKeeperDriver)
        await nb.create(Port(id="first", topic="t"))  # the scopes are read once
        sent: list[str] = []
        send = driver._calls.send

        async def counting(request: object, check: Callable[[], None] | None = None) -> tuple[int, object]:
            sent.append(type(request).__name__)
            return await send(request, check)

        driver._calls.send = counting  # type: ignore[method-assign]
        ids = [f"p{n}" for n in range(40)]  # ~40 shards, none made yet
        for id in ids:
            await nb.create(Port(id=id, topic="t"))
        assert sent == ["TransactionRequest"] * len(ids)
        # two connections race to make the same new shards (another topic's scope)
        racing = [f"q{n}" for n in range(30)]
        results = await asyncio.gather(
            *(api.create(Port(id=f"{id}-{k}", topic="u")) for id in racing for k, api in enumerate((nb, other)))
        )
        assert len(results) == 2 * len(racing)
        assert len(await nb.get_all(Port)) == 1 + len(ids) + 2 * len(racing)
        with pytest.raises(dfdb.AlreadyExistsError):
            await nb.create(Port(id="p0", topic="t"))
