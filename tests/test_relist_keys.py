"""A relist after a ``RESYNC`` of the dataset the Replica holds reads the ids and revisions of
its scope first, and only the values whose revision differs from what it holds (or the whole
scope, when much differs): on every backend, through the fault-injecting wrapper."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dfdb
from dfdb import Action, NbApi, Replica, SyncMode, revision_of
from dfdb.drivers.redis import RedisDriver
from dfdb.replica.pacing import RelistLimiter
from dfdb.replica.relist import FEW, list_changed
from dfdb.servers import EtcdServer, RedisServer
from dfdb.testing.faults import FaultyDriver
from watching import serve


class Net(dfdb.NbModel, table="rk_net"):
    name: str = ""


WAIT = 15


async def _missed(nb: NbApi, changed: int) -> list[tuple[Action, str]]:
    """Change ``changed`` objects, then delete one and create one, with their events dropped,
    then lose the history: the Replica's stream comes back with a RESYNC."""
    driver = nb.driver
    assert isinstance(driver, FaultyDriver)
    driver.drop_next(changed + 2)
    for i in range(changed):
        await nb.update((await nb.get(Net, f"n{i:03}")).model_copy(update={"name": "changed"}))
    await nb.delete(Net, "n099")
    await nb.create(Net(id="x", topic="t"))
    await _until(lambda: driver._drops[0] == 0)  # each dropped as the stream read it: none left for later
    assert await driver.cut(lose_history=True) == 1
    return [(Action.UPDATE, f"n{i:03}") for i in range(changed)] + [(Action.DELETE, "n099"), (Action.CREATE, "x")]


def _dumps(objs: list[Net]) -> list[dict[str, object]]:
    return sorted((o.model_dump() for o in objs), key=lambda d: str(d["id"]))


@pytest.mark.parametrize("mode", [SyncMode.FULL, SyncMode.SELECTIVE])
async def test_a_resync_reads_only_the_values_that_differ(faulty_nb: NbApi, mode: SyncMode) -> None:
    nb = faulty_nb
    await nb.create_many([Net(id=f"n{i:03}", topic="t") for i in range(100)])
    await nb.create(Net(id="other", topic="elsewhere", name="not in a selective scope"))
    topics = {"t"} if mode is SyncMode.SELECTIVE else None
    async with Replica(nb, [Net], mode=mode, **({"topics": topics} if topics else {})) as replica:
        events = replica.events()
        expected = await _missed(nb, 3)
        got = [await asyncio.wait_for(anext(events), WAIT) for _ in expected]  # the relist's difference
        assert sorted((e.action, e.id) for e in got) == sorted(expected)
        stats = replica.stats()
        assert stats.resyncs == 1
        assert stats.relisted == 4  # the three updated and the one created: every other value was held
        probe = await nb.create(Net(id="probe", topic="t"))
        await asyncio.wait_for(replica.wait_for(revision_of(probe) or 0), WAIT)
        truth = [n for n in await nb.get_all(Net) if topics is None or n.topic in topics]
        assert _dumps(replica.get_all(Net)) == _dumps(truth)
        await events.aclose()


async def test_objects_moved_in_and_out_of_a_selective_scope_and_topicless_ones_are_relisted_by_keys(
    faulty_nb: NbApi,
) -> None:
    nb = faulty_nb
    await nb.create_many([Net(id=f"n{i:03}", topic="t") for i in range(50)])
    await nb.create_many([Net(id="in", topic="u"), Net(id="g", topic=None), Net(id="g2", topic=None)])
    limiter = RelistLimiter(rate=1000, burst=1, jitter=0)
    async with Replica(nb, [Net], mode=SyncMode.SELECTIVE, topics={"t"}, topicless=[Net], relists=limiter) as replica:
        events = replica.events()
        driver = nb.driver
        assert isinstance(driver, FaultyDriver)
        async with limiter.slot():  # the changes are made while the relist waits for its turn
            assert await driver.cut(lose_history=True) == 1
            await _until(lambda: limiter.waiting == 1)
            await nb.delete(Net, "n001")  # moved out of the scope
            await nb.create(Net(id="n001", topic="u", name="moved"))
            await nb.delete(Net, "in")  # moved into it
            await nb.create(Net(id="in", topic="t", name="moved"))
            await nb.update((await nb.get(Net, "g")).model_copy(update={"name": "changed"}))
            await nb.delete(Net, "g2")
            await nb.create(Net(id="g3", topic=None))
        expected = [
            (Action.DELETE, "n001"), (Action.CREATE, "in"), (Action.UPDATE, "g"), (Action.DELETE, "g2"),
            (Action.CREATE, "g3"),
        ]  # fmt: skip
        got = [await asyncio.wait_for(anext(events), WAIT) for _ in expected]
        assert sorted((e.action, e.id) for e in got) == sorted(expected)
        assert replica.stats().relisted == 3  # "in", "g" and "g3": the rest was held, or is out of scope
        truth = [n for n in await nb.get_all(Net) if n.topic in (None, "t")]
        assert _dumps(replica.get_all(Net)) == _dumps(truth)
        await events.aclose()


async def test_a_resync_that_finds_much_changed_lists_the_whole_scope(faulty_nb: NbApi) -> None:
    nb = faulty_nb
    await nb.create_many([Net(id=f"n{i:03}", topic="t") for i in range(100)])
    async with Replica(nb, [Net]) as replica:
        events = replica.events()
        expected = await _missed(nb, FEW + 1)  # more than FEW and an eighth of the scope
        got = [await asyncio.wait_for(anext(events), WAIT) for _ in expected]
        assert sorted((e.action, e.id) for e in got) == sorted(expected)
        assert replica.stats().relisted == 100  # one listing of the scope: every value read
        assert _dumps(replica.get_all(Net)) == _dumps(await nb.get_all(Net))
        await events.aclose()


async def test_held_rows_of_another_dataset_are_never_compared_by_revision() -> None:
    """Revisions name writes of one dataset: a server back without its data numbers its
    writes from the start again, so rows held from the old dataset are relisted whole."""
    async with dfdb.connect("memory://rk-dataset") as nb:
        obj = await nb.create(Net(id="a", topic="t", name="new"))
        held = {Net: {"a": (Net(id="a", topic="t", name="old"), revision_of(obj) or 0)}}
        assert await list_changed(nb, [Net], None, (), held, "another-dataset") is None
        found = await list_changed(nb, [Net], None, (), held, nb._identity or "")
        assert found is not None  # the same dataset: by keys, the held object at its revision
        assert found == ([(Net, revision_of(obj), [])], 0)  # nothing differs, nothing read


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    yield from serve(EtcdServer)


def _wipe(server: EtcdServer) -> None:
    """Start the server again without its data: a new dataset, whose revisions start again."""
    server.kill()
    shutil.rmtree(server.workdir / "m0")
    server.start()


async def _until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not check():
            await asyncio.sleep(0.01)


async def test_a_dataset_lost_while_a_relist_waits_is_never_compared_by_revision(etcd_server: EtcdServer) -> None:
    """A RESYNC of the dataset held, then the server comes back without its data before the
    relist reads the keys: the new dataset's writes reuse the old revisions, so an object at
    the revision held is not the object held."""
    limiter = RelistLimiter(rate=1000, burst=1, jitter=0)
    url = etcd_server.url.replace("etcd://", "faulty://") + "/rk?inner=etcd"
    async with dfdb.connect(url, timeout=20) as nb:
        await nb.create_many([Net(id=f"a{i}", topic="t") for i in range(5)])
        held = await nb.create(Net(id="x", topic="t", name="old"))
        async with Replica(nb, [Net], relists=limiter) as replica:
            async with limiter.slot():
                assert isinstance(nb.driver, FaultyDriver)
                await nb.driver.cut(lose_history=True)  # a RESYNC of the dataset held
                await _until(lambda: limiter.waiting == 1)  # its relist waits for its turn
                await asyncio.to_thread(_wipe, etcd_server)
                at = 0
                while at < (revision_of(held) or 0) - 1:
                    at = revision_of(await nb.create(Net(id=f"b{at}", topic="t"))) or 0
                new = await nb.create(Net(id="x", topic="t", name="new"))
                assert revision_of(new) == revision_of(held)  # the revision held names another write
            async with limiter.slot():  # once the relist ran (a later one waits for this one)
                assert replica.stats().resyncs == 1
                assert _dumps(replica.get_all(Net)) == _dumps(await nb.get_all(Net))


async def test_wait_for_a_lost_datasets_successor_waits_for_its_revisions(etcd_server: EtcdServer) -> None:
    """After a server comes back without its data, the new dataset's revisions start again
    below those the Replica applied: once the Replica has noticed (its RESYNC), ``wait_for``
    one of them waits until it is applied. (Before it notices, nothing on the client can tell
    a new dataset's low revision from one applied.)"""
    async with dfdb.connect(etcd_server.url + "/rk", timeout=20) as nb:
        async with Replica(nb, [Net]) as replica:
            await nb.create_many([Net(id=f"a{i}", topic="t") for i in range(30)])
            last = await nb.create(Net(id="last", topic="t"))
            await asyncio.wait_for(replica.wait_for(revision_of(last) or 0), WAIT)
            await asyncio.to_thread(_wipe, etcd_server)
            await _until(lambda: replica.stats().resyncs >= 1)
            assert replica.get(Net, "last") is None  # the lost dataset's objects are gone
            for i in range(3):
                after = await nb.create(Net(id=f"after{i}", topic="t"))
                assert (revision_of(after) or 0) < (revision_of(last) or 0)
                await asyncio.wait_for(replica.wait_for(revision_of(after) or 0), WAIT)
                assert replica.get(Net, f"after{i}") == after


def _restore(server: EtcdServer, snapshot: Path) -> None:
    """Start the server again from an older snapshot of its data: the same dataset, whose
    revisions go back and are numbered again by the writes to come."""
    server.kill()
    shutil.rmtree(server.workdir / "m0")
    peer = f"http://127.0.0.1:{server.peer_ports[0]}"
    subprocess.run(
        ["etcdctl", "snapshot", "restore", str(snapshot), "--data-dir", str(server.workdir / "m0"), "--name", "m0",
         "--initial-cluster", f"m0={peer}", "--initial-advertise-peer-urls", peer,
         "--initial-cluster-token", server.token],
        check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip
    server.restart()


async def test_a_dataset_restored_from_a_snapshot_is_never_compared_by_revision(etcd_server: EtcdServer) -> None:
    """A server back with an older copy of its data names the same dataset, and the stream's
    RESYNC says its revision went back: the revisions above it name writes that are gone, and
    the writes to come number theirs alike."""
    limiter = RelistLimiter(rate=1000, burst=1, jitter=0)
    snapshot = etcd_server.workdir / "snapshot.db"
    async with dfdb.connect(etcd_server.url + "/rk", timeout=20) as nb:
        x = await nb.create(Net(id="x", topic="t", name="snap"))
        endpoint = etcd_server.url.removeprefix("etcd://")
        await asyncio.to_thread(
            subprocess.run, ["etcdctl", "--endpoints", endpoint, "snapshot", "save", str(snapshot)],
            check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"},
        )  # fmt: skip
        async with Replica(nb, [Net], relists=limiter) as replica:
            await nb.create_many([Net(id=f"a{i}", topic="t") for i in range(3)])
            held = await nb.update(x.model_copy(update={"name": "old"}))
            await asyncio.wait_for(replica.wait_for(revision_of(held) or 0), WAIT)
            async with limiter.slot():
                await asyncio.to_thread(_restore, etcd_server, snapshot)
                await _until(lambda: limiter.waiting == 1)  # the stream's RESYNC: its relist waits
                at = 0
                while at < (revision_of(held) or 0) - 1:
                    at = revision_of(await nb.create(Net(id=f"b{at}", topic="t"))) or 0
                new = await nb.update((await nb.get(Net, "x")).model_copy(update={"name": "new"}))
                assert revision_of(new) == revision_of(held)  # the revision held names another write
            async with limiter.slot():  # once the relist ran
                assert replica.stats().resyncs == 1
                assert _dumps(replica.get_all(Net)) == _dumps(await nb.get_all(Net))


async def test_a_change_made_while_a_relist_reads_the_keys_is_not_dropped(faulty_nb: NbApi) -> None:
    """ZooKeeper's keys are not read at one revision (a stat per node): a change committed
    after a node's stat is missing from the keys, and must still come by the stream."""
    nb = faulty_nb
    driver = nb.driver
    assert isinstance(driver, FaultyDriver)
    calls = getattr(driver.inner, "_calls", None)
    if driver.inner.url.scheme != "zk" or calls is None:
        pytest.skip("ZooKeeper reads the keys of a scope in several requests")
    from aiozk import protocol

    await nb.create_many([Net(id=f"n{i:03}", topic="t") for i in range(20)])
    limiter = RelistLimiter(rate=1000, burst=1, jitter=0)
    send = calls.send
    late: list[str] = []

    async def send_then_change(request: object, *args: object, **kwargs: object) -> object:
        reply = await send(request, *args, **kwargs)
        if late and isinstance(request, protocol.ExistsRequest) and request.path != "/":  # a node's stat
            await nb.patch(Net, late.pop(), name="late")  # after every stat of the batch was sent
        return reply

    async with Replica(nb, [Net], relists=limiter) as replica:
        async with limiter.slot():
            assert await driver.cut(lose_history=True) == 1
            await _until(lambda: limiter.waiting == 1)  # the relist waits for its turn
            calls.send = send_then_change
            late.append("n005")
        async with limiter.slot():  # once the relist ran
            calls.send = send
        assert not late
        probe = await nb.create(Net(id="probe", topic="t"))
        await asyncio.wait_for(replica.wait_for(revision_of(probe) or 0), WAIT)
        assert _dumps(replica.get_all(Net)) == _dumps(await nb.get_all(Net))


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    yield from serve(lambda: RedisServer(appendonly=False))


async def test_a_change_made_between_the_slices_of_a_large_redis_scope_is_not_dropped(
    redis_server: RedisServer,
) -> None:
    """Redis reads a scope's keys in slices of 5,000: a change to a key of a slice read
    already, made before the last slice, is in no slice; the keys reflect every change up
    to the first slice only, and the stream brings the later ones. (Dated at the last slice,
    the relist took the change as listed: the stream's event of it was dropped and the
    Replica kept the old value, with no event.)"""
    port = redis_server.url.removeprefix("redis://").split("/")[0]
    async with dfdb.connect(f"faulty://{port}/0?inner=redis&prefix=rk") as nb:
        driver = nb.driver
        assert isinstance(driver, FaultyDriver) and isinstance(driver.inner, RedisDriver)
        await nb.create_many([Net(id=f"n{i:05}", topic="t") for i in range(5_100)])
        async with Replica(nb, [Net], check_interval=None) as replica:
            inner = driver.inner
            digest = inner._digest
            changed: list[Net] = []
            done = asyncio.Event()

            async def sliced(*args: Any, **kwargs: Any) -> Any:
                reply = await digest(*args, **kwargs)
                if not changed and len(reply) > 3:  # the first slice: change one of its keys now
                    obj = await nb.get(Net, reply[3].decode())
                    changed.append(await nb.update(obj.model_copy(update={"name": "changed"})))
                    done.set()
                return reply

            inner._digest = sliced
            assert await driver.cut(lose_history=True) == 1
            await asyncio.wait_for(done.wait(), WAIT)
            await asyncio.wait_for(replica.wait_for(revision_of(changed[0]) or 0), WAIT)
            assert replica.stats().resyncs == 1 and replica.stats().relisted < 100  # by keys
            held = replica.get(Net, changed[0].id)
            assert held is not None and held.name == "changed"
