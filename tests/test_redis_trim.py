"""Redis streams trimmed past a watcher's cursor, against a real redis-server: the ``RESYNC``
of the trimmed stream's scope, its place among the other streams' changes, and the cursor."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

import dfdb
from dfdb.drivers import redis_scripts
from dfdb.replica.pacing import RelistLimiter
from dfdb.testing.servers import RedisServer
from watching import serve


class Port(dfdb.NbModel, table="redis_port"):
    n: int = 0


@pytest.fixture
def volatile_server() -> Iterator[RedisServer]:
    yield from serve(lambda: RedisServer(appendonly=False))


async def until_reading(url: str) -> None:
    """Return once a watcher's blocking stream read waits on the server."""
    client = aioredis.Redis.from_url(url.split("?")[0])
    try:
        async with asyncio.timeout(10):
            while not any(c.get("cmd") == "xread" and "b" in c.get("flags", "") for c in await client.client_list()):
                await asyncio.sleep(0.01)
    finally:
        await client.aclose()


def summary(events: list[dfdb.ChangeEvent]) -> list[tuple[str, str | None, str]]:
    return [(ev.action.value, ev.topic, ev.id) for ev in events]


async def test_a_trim_after_the_read_keeps_the_cursor_below_the_changes_not_read(
    volatile_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream trimmed between a blocking read and the read of the trim marks (one pipeline
    of writes: the first wakes the read, the rest run before the marks are read) is resynced
    at no revision past what the read saw: another stream's change written meanwhile comes
    after it, in revision order, and the cursor never passes it. (Placed at the trimmed
    revision, the ``RESYNC`` came before an older change, and a watch resumed from its cursor
    never saw that change.)"""
    monkeypatch.setattr(redis_scripts, "PUTS_PER_CALL", 1)  # a script call per write, in one pipeline
    url = volatile_server.url + "?maxlen=1"
    async with dfdb.connect(url) as nb, nb.watch(Port, topics={"t1", "t2"}) as stream:
        first = asyncio.create_task(anext(stream))
        await until_reading(url)
        ones = [Port(id="b1", topic="t2"), Port(id="b2", topic="t2")]
        done = await nb.create_many(ones + [Port(id=f"a{i}", topic="t1") for i in range(3)])
        got = [await asyncio.wait_for(first, 10)]
        got += [await asyncio.wait_for(anext(stream), 10) for _ in range(2)]
        assert summary(got) == [("create", "t2", "b1"), ("resync", "t1", ""), ("create", "t2", "b2")]
        assert [ev.revision for ev in got] == sorted(ev.revision for ev in got)
        b2 = dfdb.revision_of(done[1])
        async with nb.watch(Port, topics={"t1", "t2"}, since=got[1].cursor) as resumed:
            again = await asyncio.wait_for(anext(resumed), 10)
        assert (again.action, again.id, again.revision) == (dfdb.Action.CREATE, "b2", b2)


class Net(dfdb.NbModel, table="redis_net"):
    n: int = 0


@pytest.mark.parametrize(("mode", "relisted"), [(dfdb.SyncMode.SELECTIVE, 3), (dfdb.SyncMode.FULL, 4)])
async def test_a_replica_relists_only_the_trimmed_streams_scope(
    volatile_server: RedisServer, mode: dfdb.SyncMode, relisted: int
) -> None:
    """Ports of topic t1 trimmed past a Replica's cursor: a SELECTIVE Replica relists the
    ports of t1, a FULL one every port (its stream is the table's), neither the other table;
    by keys, reading the values of the ports it does not hold (t1's 3 new ones; with t2's new
    one for FULL); both then equal the database, nothing after the trim lost or doubled."""
    url = volatile_server.url + "?maxlen=1"
    async with dfdb.connect(url) as nb:
        for topic, ports in (("t1", 2), ("t2", 3), ("t3", 4)):
            await nb.create_many([Port(id=f"{topic}-{i}", topic=topic) for i in range(ports)])
            await nb.create_many([Net(id=f"{topic}-{i}", topic=topic) for i in range(2)])
        topics = {"t1", "t2"} if mode is dfdb.SyncMode.SELECTIVE else set()
        limiter = RelistLimiter(jitter=0)
        async with dfdb.Replica(nb, [Net, Port], mode=mode, topics=topics, relists=limiter, check_interval=None) as r:
            await r.wait_synced()
            await until_reading(url)
            writes = [Port(id="new-0", topic="t2")] + [Port(id=f"new-{i}", topic="t1") for i in (1, 2, 3)]
            done = await nb.create_many(writes)
            later = await nb.update(done[1].model_copy(update={"n": 1}))  # after the trim: applied once
            async with asyncio.timeout(10):
                await r.wait_for(dfdb.revision_of(later))
            stats = r.stats()
            assert (stats.resyncs, stats.relisted) == (1, relisted)
            for model in (Net, Port):
                want = {o.id: o.version for o in await nb.get_all(model) if not topics or o.topic in topics}
                assert {o.id: o.version for o in r.get_all(model)} == want
            assert r.get(Port, "new-1") == later


class Sg(dfdb.NbModel, table="redis_sg"):
    n: int = 0


class Vif(dfdb.NbModel, table="redis_vif"):
    sg: dfdb.Ref[Sg] | None = None


@contextlib.asynccontextmanager
async def removed_t2(nb: dfdb.NbApi) -> AsyncIterator[dfdb.Replica]:
    """A SELECTIVE Replica of groups and ports of t1 and t2 that removed t2: it keeps the
    groups its ports reference."""
    limiter = RelistLimiter(jitter=0)
    mode = dfdb.SyncMode.SELECTIVE
    async with dfdb.Replica(nb, [Sg, Vif], mode=mode, topics={"t1", "t2"}, relists=limiter, check_interval=None) as r:
        await r.wait_synced()
        await r.remove_topic("t2")
        yield r


async def test_a_removed_topic_whose_objects_stay_referenced_is_relisted_after_its_trim(
    volatile_server: RedisServer,
) -> None:
    """A SELECTIVE Replica keeps a removed topic's objects that its other objects reference,
    and follows their stream: when that stream is trimmed past its cursor, the ``RESYNC``
    of that topic refreshes them. (It was ignored as the RESYNC of a topic not followed: the
    kept object stayed at its old version for good.)"""
    url = volatile_server.url + "?maxlen=1"
    async with dfdb.connect(url) as nb:
        await nb.create_many([Sg(id=f"sg{i}", topic="t2") for i in range(3)])
        vif = await nb.create(Vif(id="vif", topic="t1", sg="sg0"))
        async with removed_t2(nb) as r:
            assert [sg.id for sg in r.get_all(Sg)] == ["sg0"]  # referenced: kept
            await until_reading(url)
            groups = [await nb.get(Sg, f"sg{i}") for i in range(3)]
            done = await nb.update_many([vif.model_copy(update={"topic": "t1"})] + [g.model_copy() for g in groups])
            mark = await nb.update(done[0].model_copy())  # after the trim
            async with asyncio.timeout(10):
                await r.wait_for(dfdb.revision_of(mark))
            assert [(sg.id, sg.version) for sg in r.get_all(Sg)] == [("sg0", 2)]
            assert r.get(Vif, "vif") == mark
            assert (r.stats().resyncs, r.stats().relisted) == (1, 3)


async def test_a_relist_of_a_whole_table_keeps_the_referenced_objects_of_removed_topics(
    volatile_server: RedisServer,
) -> None:
    """The stream of the topic-less groups trimmed past a SELECTIVE Replica's cursor is a
    ``RESYNC`` of the whole group table: its relist keeps (refreshed) the group of a removed
    topic that a port it holds references, as ``remove_topic`` did. (The relist dropped it.)"""
    url = volatile_server.url + "?maxlen=1"
    async with dfdb.connect(url) as nb:
        await nb.create_many([Sg(id="sg0", topic="t2"), Sg(id="sg1", topic="t2")])
        vif = await nb.create(Vif(id="vif", topic="t1", sg="sg0"))
        async with removed_t2(nb) as r:
            await until_reading(url)
            await nb.update_many([vif.model_copy()])  # wakes the read
            await nb.create_many([Sg(id=f"global{i}") for i in range(3)])  # trimmed past the cursor
            mark = await nb.patch(Sg, "sg0", n=1)
            async with asyncio.timeout(10):
                await r.wait_for(dfdb.revision_of(mark))
            assert r.stats().resyncs == 1
            assert sorted((sg.id, sg.version) for sg in r.get_all(Sg)) == [
                ("global0", 1),
                ("global1", 1),
                ("global2", 1),
                ("sg0", 2),
            ]


async def test_a_topic_added_during_a_blocking_read_keeps_the_merge_in_revision_order(
    volatile_server: RedisServer,
) -> None:
    """A topic added while a blocking read waits on the other topics' streams is read from
    its cursor in the next round; the change of another topic that ends the wait comes
    after the added topic's older change, and the cursor never passes that change. (The
    wait's change came first and moved the cursor past it: a stream reopened from there,
    as ``remove_topics`` does, lost it, and a Replica's ``wait_for`` returned before it.)"""
    async with dfdb.connect(volatile_server.url) as nb, nb.watch(Port, topics={"t2"}) as stream:
        first = asyncio.create_task(anext(stream))
        await until_reading(volatile_server.url)
        await stream.add_topics({"t1"}, since=stream.cursor)
        older = await nb.create(Port(id="a", topic="t1"))  # not in the waiting read's streams
        newer = await nb.create(Port(id="b", topic="t2"))  # ends the wait
        got = [await asyncio.wait_for(first, 10), await asyncio.wait_for(anext(stream), 10)]
        assert [(ev.id, ev.revision) for ev in got] == [
            ("a", dfdb.revision_of(older)),
            ("b", dfdb.revision_of(newer)),
        ]
        assert got[0].cursor.endswith(f"@{dfdb.revision_of(older)}")
