"""Anti-entropy: a Replica's consistency check finds and repairs what its stream missed,
on every configured backend."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Collection, Iterator

import pytest

import dfdb
from dfdb import Action, NbApi, Replica, SyncMode, revision_of
from dfdb.codec import encode
from dfdb.drivers import register_driver
from dfdb.drivers.base import Driver, Entry
from dfdb.drivers.digest import Digest
from dfdb.drivers.memory import MemoryDriver
from dfdb.drivers.redis import RedisDriver
from dfdb.drivers.redis_streams import NO_EPOCH
from dfdb.replica import ReplicaEvents
from dfdb.testing.faults import FaultyDriver
from dfdb.testing.servers import RedisServer
from dfdb.url import DatabaseURL
from watching import serve


class Net(dfdb.NbModel, table="ae_net"):
    name: str = ""


class Port(dfdb.NbModel, table="ae_port"):
    net: dfdb.Ref[Net] | None = None
    n: int = 0


WAIT = 10


async def settle(replica: Replica, obj: dfdb.NbModel) -> None:
    await asyncio.wait_for(replica.wait_for(revision_of(obj) or 0), WAIT)


async def take(events: ReplicaEvents, count: int) -> list[tuple[Action, str]]:
    return [(e.action, e.id) for e in [await asyncio.wait_for(anext(events), WAIT) for _ in range(count)]]


def same(replica: Replica, truth: list[dfdb.NbModel], model: type[dfdb.NbModel]) -> bool:
    return [o.model_dump() for o in replica.get_all(model)] == [o.model_dump() for o in truth]


async def test_check_repairs_dropped_events(faulty_nb: NbApi, caplog: pytest.LogCaptureFixture) -> None:
    nb = faulty_nb
    assert isinstance(nb.driver, FaultyDriver)
    await nb.create_many([Net(id=f"n{i}", topic="t1") for i in range(40)])
    async with Replica(nb, [Net, Port], check_interval=None) as replica:
        await replica.wait_synced()
        events = replica.events()
        nb.driver.drop_next(3)  # an update, a delete and a create vanish without a RESYNC
        changed = await nb.patch(Net, "n1", name="changed")
        await nb.delete(Net, "n2")
        created = await nb.create(Net(id="new", topic="t1", name="x"))
        await settle(replica, await nb.create(Port(id="probe", topic="t1")))
        assert (await take(events, 1)) == [(Action.CREATE, "probe")]
        assert replica.get(Net, "n1") != changed and replica.get(Net, "n2") is not None
        assert replica.get(Net, "new") is None
        with caplog.at_level(logging.WARNING, logger="dfdb.replica"):
            report = await replica.check(settle=WAIT)
        assert report.complete and report.repaired == 3 and report.differing >= 1
        assert replica.get(Net, "n1") == changed and replica.get(Net, "new") == created
        assert replica.get(Net, "n2") is None
        assert sorted(await take(events, 3)) == [(Action.CREATE, "new"), (Action.DELETE, "n2"), (Action.UPDATE, "n1")]
        assert same(replica, await nb.get_all(Net), Net)
        stats = replica.stats()
        assert (stats.checks, stats.divergences, stats.repaired) == (1, 1, 3)
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("diverged" in m and "ae_net" in m and "every topic" in m for m in warned), warned
        again = await replica.check(settle=WAIT)  # whole again: nothing to repair
        assert (again.differing, again.repaired, replica.stats().checks) == (0, 0, 2)
        await events.aclose()


async def test_selective_check_covers_its_topics_only(faulty_nb: NbApi, caplog: pytest.LogCaptureFixture) -> None:
    nb = faulty_nb
    assert isinstance(nb.driver, FaultyDriver)
    await nb.create_many([Net(id=f"a{i}", topic="mine") for i in range(10)])
    await nb.create_many([Net(id=f"b{i}", topic="other") for i in range(10)])
    async with Replica(nb, [Net], mode=SyncMode.SELECTIVE, topics={"mine"}, check_interval=None) as replica:
        nb.driver.drop_next()
        lost = await nb.create(Net(id="lost", topic="mine"))
        await settle(replica, await nb.create(Net(id="probe", topic="mine")))
        assert replica.get(Net, "lost") is None
        with caplog.at_level(logging.WARNING, logger="dfdb.replica"):
            report = await replica.check(settle=WAIT)
        assert report.repaired == 1 and replica.get(Net, "lost") == lost
        assert any("ae_net (topics <none>, mine)" in r.getMessage() for r in caplog.records)
        assert same(replica, await nb.get_all(Net, topic="mine"), Net)
        assert (await replica.check(settle=WAIT)).differing == 0


async def bypass(nb: NbApi, obj: dfdb.NbModel, value: bytes | None = None) -> int:
    """Write ``obj`` (or the bytes ``value`` in its place) straight into the backend with a
    new revision and no change record, as a tool that goes around dfdb would; returns that
    revision."""
    driver = nb.driver
    table = type(obj).__table__
    if value is None:
        _, value, _ = encode(obj, obj.version)
    scheme = driver.url.scheme
    if scheme == "memory":
        store = driver._open_store()  # type: ignore[attr-defined]
        store.revision += 1
        store.tables[table][obj.id] = Entry(table, obj.id, obj.topic, value, store.revision)
        return int(store.revision)
    if scheme == "sqlite":
        with sqlite3.connect(driver.url.path) as db:
            db.execute("UPDATE sqlite_sequence SET seq = seq + 1 WHERE name = 'dfdb_changelog'")
            (rev,) = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'dfdb_changelog'").fetchone()
            db.execute(
                "UPDATE dfdb_entries SET value = ?, revision = ? WHERE tbl = ? AND id = ?", (value, rev, table, obj.id)
            )
        return int(rev)
    if scheme == "redis":
        client = driver._open_client()  # type: ignore[attr-defined]
        rev = await client.incr(driver._key("rev"))  # type: ignore[attr-defined]
        await client.hset(driver._key("e", table, obj.id), mapping={"v": value, "r": rev})  # type: ignore[attr-defined]
        return int(rev)
    if scheme == "etcd":  # the index key only: watches follow the data keys
        from dfdb.drivers import etcd

        loc = b"n" if obj.topic is None else f"t/{obj.topic}".encode()
        reply = await driver._call(  # type: ignore[attr-defined]
            "Put",
            etcd.rpc.PutRequest(key=driver._index_key(table, obj.id), value=loc + b"\n" + value),  # type: ignore[attr-defined]
        )
        return int(reply.header.revision)
    if scheme == "zk":  # the data node only: watches follow the change logs
        from dfdb.drivers.zookeeper.layout import location

        calls = driver._calls  # type: ignore[attr-defined]
        path = driver._layout.data(table, location(obj.topic), obj.id)  # type: ignore[attr-defined]
        zxid, _ = await calls.send(calls.set(path, value, -1))
        return int(zxid)
    pytest.skip(f"no raw writer for {scheme}")


async def test_check_repairs_a_write_around_the_change_log(nb: NbApi) -> None:
    if not nb.exact:
        pytest.skip("snapshot polling reads every value anyway")
    await nb.create_many([Net(id=f"n{i}", topic="t1") for i in range(40)])
    async with Replica(nb, [Net], check_interval=None) as replica:
        events = replica.events()
        held = replica.get(Net, "n7")
        assert held is not None
        revision = await bypass(nb, held.model_copy(update={"name": "sneaked in"}))
        report = await replica.check(settle=0.5)
        assert report.repaired == 1
        fixed = replica.get(Net, "n7")
        assert fixed is not None and fixed.name == "sneaked in" and revision_of(fixed) == revision
        assert (await take(events, 1)) == [(Action.UPDATE, "n7")]
        assert same(replica, await nb.get_all(Net), Net)
        assert replica.stats().repaired == 1
        await events.aclose()


async def test_a_corrupt_value_is_evicted_once_not_repaired_at_every_check(nb: NbApi) -> None:
    if not nb.exact:
        pytest.skip("snapshot polling reads every value anyway")
    await nb.create_many([Net(id=f"n{i}", topic="t1") for i in range(10)])
    async with Replica(nb, [Net], check_interval=None) as replica:
        events = replica.events()
        held = replica.get(Net, "n3")
        assert held is not None
        await bypass(nb, held, b"{not json")
        first = await replica.check(settle=0.5)
        assert (first.repaired, replica.get(Net, "n3"), replica.stats().corrupt) == (0, None, 1)
        gone = await asyncio.wait_for(anext(events), WAIT)
        assert (gone.action, gone.id, gone.corrupt) == (Action.DELETE, "n3", True)
        second = await replica.check(settle=0.5)
        assert (second.differing, second.repaired, replica.stats().corrupt) == (0, 0, 1)
        await events.aclose()


async def test_check_of_an_unchanged_scope_reads_no_values(exact_nb: NbApi) -> None:
    nb = exact_nb  # (polling streams read every value anyway)
    await nb.create_many([Net(id=f"n{i}", topic=f"t{i % 3}") for i in range(300)])
    async with Replica(nb, [Net, Port], check_interval=None) as replica:
        report = await replica.check(settle=WAIT)
        assert report.complete and (report.differing, report.repaired, report.values_read) == (0, 0, 0)
        assert report.buckets == 8 + 1  # 300 objects: 8 buckets; an empty table: 1
        if nb.driver.url.scheme in ("memory", "sqlite", "redis"):
            assert report.keys_read == 0  # computed where the data is
            assert report.round_trips <= 2  # one per model
        stats = replica.stats()
        assert (stats.checks, stats.divergences, stats.repaired) == (1, 0, 0)


async def test_periodic_checks_run_jittered(faulty_nb: NbApi) -> None:
    nb = faulty_nb
    assert isinstance(nb.driver, FaultyDriver)
    async with Replica(nb, [Net], check_interval=0.2, check_settle=WAIT) as replica:
        events = replica.events()
        nb.driver.drop_next()
        lost = await nb.create(Net(id="lost", topic="t"))
        await nb.create(Net(id="probe", topic="t"))
        assert (await take(events, 2)) == [(Action.CREATE, "probe"), (Action.CREATE, "lost")]  # by a check
        assert replica.get(Net, "lost") == lost
        assert replica.stats().repaired == 1 and replica.stats().checks >= 1
        await events.aclose()


async def test_check_settings_are_checked() -> None:
    async with dfdb.connect("memory://") as nb:
        with pytest.raises(ValueError, match="check_interval"):
            Replica(nb, [Net], check_interval=0)


async def test_reactive_check_covers_the_held_objects(faulty_nb: NbApi) -> None:
    nb = faulty_nb
    assert isinstance(nb.driver, FaultyDriver)
    await nb.create_many([Net(id=f"n{i}", topic="t") for i in range(20)])
    async with Replica(nb, [Net], mode=SyncMode.REACTIVE, check_interval=None) as replica:
        for id in ("n1", "n2", "n3"):
            assert await replica.fetch(Net, id) is not None
        await settle(replica, await nb.patch(Net, "n3", name="caught up"))  # what following replays is read
        nb.driver.drop_next(2)
        changed = await nb.patch(Net, "n1", name="changed")
        await nb.delete(Net, "n2")
        await settle(replica, await nb.patch(Net, "n3", name="probe"))
        assert replica.get(Net, "n1") != changed and replica.get(Net, "n2") is not None
        report = await replica.check(settle=WAIT)
        assert report.complete and report.repaired == 2 and report.values_read == 1
        assert replica.get(Net, "n1") == changed and replica.get(Net, "n2") is None
        assert replica.get(Net, "n4") is None and len(replica) == 2  # not held, not fetched by the check


async def test_changes_in_flight_are_not_repaired(exact_nb: NbApi) -> None:
    nb = exact_nb
    await nb.create_many([Net(id=f"n{i}", topic="t") for i in range(40)])
    async with Replica(nb, [Net], check_interval=None) as replica:
        done = asyncio.Event()

        async def write() -> None:
            i = 0
            while not done.is_set():  # updates, creates and deletes while the checks run
                await nb.patch(Net, f"n{i % 40}", name=str(i))
                await nb.create(Net(id=f"x{i}", topic="t"))
                if i % 2:
                    await nb.delete(Net, f"x{i - 1}")
                i += 1

        writer = asyncio.ensure_future(write())
        try:
            reports = [await replica.check(settle=WAIT) for _ in range(3)]
        finally:
            done.set()
            await writer
        assert all(r.complete for r in reports)
        assert [r.repaired for r in reports] == [0, 0, 0]
        assert replica.stats().divergences == 0
        await settle(replica, await nb.create(Net(id="probe", topic="t")))
        assert same(replica, await nb.get_all(Net), Net)


class FlawedDigestDriver(MemoryDriver):
    """The memory driver, whose digest fails with an error of its own once (a driver's bug)."""

    flawed = 1

    async def digest(self, table: str, topics: Collection[str | None] | None, buckets: int) -> Digest:
        if self.flawed > 0:
            self.flawed -= 1
            raise KeyError("a bug in the driver")
        return await super().digest(table, topics, buckets)


register_driver("test-flawed-digest", FlawedDigestDriver)


async def test_a_check_that_fails_unexpectedly_does_not_end_the_periodic_checks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with dfdb.connect("test-flawed-digest://flawed") as nb, Replica(nb, [Net], check_interval=0.02) as replica:
        async with asyncio.timeout(WAIT):
            while replica.stats().checks < 2:
                await asyncio.sleep(0.02)
        assert any("a bug in the driver" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


async def test_check_of_a_closed_or_unentered_replica_raises() -> None:
    """As documented: a check needs a running Replica; it is not a silent incomplete report."""
    async with dfdb.connect("memory://ae-closed") as nb:
        replica = Replica(nb, [Net])
        with pytest.raises(dfdb.StreamClosedError, match="enter the Replica"):
            await replica.check()
        async with replica:
            await nb.create(Net(id="n1"))
            assert (await replica.check()).complete
        with pytest.raises(dfdb.StreamClosedError, match="closed"):
            await replica.check()


@pytest.fixture
def volatile_redis() -> Iterator[RedisServer]:
    yield from serve(lambda: RedisServer(appendonly=False))


async def test_check_leaves_a_lost_dataset_to_the_streams_resync(volatile_redis: RedisServer) -> None:
    """A volatile Redis that lost its data has a new dataset (a new epoch) before the
    Replica's stream notices: a check then must not repair object by object against it (nor
    count divergences); the stream's RESYNC relists the scope."""
    import redis.asyncio as aioredis

    url = f"{volatile_redis.url}?prefix=ae&block=30"  # the stream waits in one long blocking read
    async with dfdb.connect(url) as nb, Replica(nb, [Net], check_interval=None) as replica:
        await nb.create_many([Net(id=f"n{i}", topic="t") for i in range(20)])
        await settle(replica, await nb.create(Net(id="probe", topic="t")))
        client = aioredis.Redis.from_url(volatile_redis.url)
        try:
            await client.flushall()  # the data is gone; nothing wakes the stream's read
        finally:
            await client.aclose()
        # the new dataset's first objects: their revisions do not pass the stream's position
        early = {o.id for o in await nb.create_many([Net(id=f"x{i}", topic="t") for i in range(5)])}
        report = await replica.check(settle=0.1)
        assert not report.complete and report.repaired == 0
        assert (replica.stats().divergences, len(replica.get_all(Net))) == (0, 21)
        events = replica.events()
        # the new dataset's revisions pass the stream's position: its read wakes, sees the
        # new epoch and RESYNCs; the relist replaces the scope
        fresh = early | {o.id for o in await nb.create_many([Net(id=f"new{i}", topic="t") for i in range(25)])}
        created: set[str] = set()
        async with asyncio.timeout(WAIT):
            async for ev in events:
                created |= {ev.id} if ev.action == Action.CREATE else set()
                if created == fresh:
                    break
        await events.aclose()
        await asyncio.wait_for(replica.wait_synced(), WAIT)
        assert {o.id for o in replica.get_all(Net)} == fresh and replica.stats().resyncs == 1
        again = await replica.check(settle=WAIT)
        assert again.complete and again.differing == 0 and replica.stats().divergences == 0


def test_identities_that_name_no_dataset_are_part_of_the_driver_contract() -> None:
    assert Driver.unnamed_identities == frozenset() == MemoryDriver.unnamed_identities
    assert RedisDriver.unnamed_identities == frozenset({NO_EPOCH})
    wrapped = FaultyDriver(DatabaseURL.parse("faulty://127.0.0.1:1/?inner=redis"))
    assert wrapped.unnamed_identities == frozenset({NO_EPOCH})  # a check over the wrapper sees the same
    assert FaultyDriver(DatabaseURL.parse("faulty://?inner=memory")).unnamed_identities == frozenset()
