"""The Replica (FULL, SELECTIVE and REACTIVE) on every configured backend."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Collection
from urllib.parse import quote

import pytest
from pydantic import BaseModel, ConfigDict

import dfdb
from dfdb import Action, NbApi, Replica, SyncMode, revision_of
from dfdb.codec import encode
from dfdb.drivers import ABSENT, EventSource, Listing, RawEvent, register_driver
from dfdb.drivers.digest import KeyListing
from dfdb.drivers.memory import MemoryDriver
from dfdb.retry import Backoff
from dfdb.testing.faults import FaultyDriver
from dfdb.url import DatabaseURL


class Net(dfdb.NbModel, table="replica_net"):
    name: str = ""


class Vm(dfdb.NbModel, table="replica_vm"):
    net: dfdb.Ref[Net] | None = None
    n: int = 0


WAIT = 10

LONG_STEPS = int(os.environ.get("DFDB_REPLICA_STEPS", "0"))
"""Steps of every randomized Replica run when set (``nox -s soak`` runs 10,000 everywhere).
Otherwise seed 1 takes 10,000 steps on memory, where they take seconds, and 2,000 on the
other backends (10,000 took minutes on each server, seven on ZooKeeper), as seed 2 does."""


def randomized_steps(seed: int, url: str) -> int:
    """The steps of the randomized Replica run of ``seed`` on ``url``."""
    if LONG_STEPS:
        return LONG_STEPS
    return 10_000 if seed == 1 and url.startswith("memory:") else 2_000


@pytest.fixture
async def faulty_nb(dfdb_leak_check: None, dfdb_fresh_url: str) -> AsyncIterator[NbApi]:
    """The URL under test behind the fault-injecting wrapper (no fault of its own), whose
    ``cut()`` drops every change stream's connection; skipped where streams only converge."""
    scheme, rest = dfdb_fresh_url.split("://", 1)
    async with dfdb.connect(f"faulty://{rest}{'&' if '?' in rest else '?'}inner={quote(scheme, safe='')}") as nb:
        if not nb.exact:
            pytest.skip("snapshot polling promises convergence, not every change")
        yield nb


async def cut(nb: NbApi, *, lose_history: bool = False) -> int:
    """Drop the connection of every change stream open on ``nb`` (a ``faulty_nb``)."""
    assert isinstance(nb.driver, FaultyDriver)
    return await nb.driver.cut(lose_history=lose_history)


async def settle(replica: Replica, obj: dfdb.NbModel) -> None:
    revision = revision_of(obj)
    assert revision is not None
    await asyncio.wait_for(replica.wait_for(revision), WAIT)


async def test_full_replica_loads_and_follows(nb: NbApi) -> None:
    await nb.create(Net(id="n1", topic="t1"))
    await nb.create(Vm(id="v1", topic="t1", net="n1"))
    async with Replica(nb, [Vm, Net]) as replica:
        await replica.wait_synced()
        assert replica.synced
        assert [v.id for v in replica.get_all(Vm)] == ["v1"]
        assert replica.get(Net, "n1") == await nb.get(Net, "n1")
        assert replica.get(Net, "missing") is None
        v2 = await nb.create(Vm(id="v2", topic="t2", n=1))
        await settle(replica, v2)
        assert replica.get(Vm, "v2") == v2
        v2b = await nb.update(v2.model_copy(update={"n": 2}))
        await settle(replica, v2b)
        assert replica.get(Vm, "v2") == v2b
        deleted = await nb.create(Vm(id="gone", topic="t2"))
        await nb.delete(Vm, "gone")
        probe = await nb.create(Net(id="probe", topic="t2"))
        await settle(replica, probe)
        assert replica.get(Vm, "gone") is None
        assert deleted.id == "gone"
        truth = {(type(o), o.id): o.model_dump() for m in (Net, Vm) for o in await nb.get_all(m)}
        held = {(type(o), o.id): o.model_dump() for m in (Net, Vm) for o in replica.get_all(m)}
        assert held == truth
        assert len(replica) == len(truth)


async def test_replica_events_carry_old_and_new(exact_nb: NbApi) -> None:
    nb = exact_nb
    async with Replica(nb, [Net]) as replica:
        events = replica.events()
        first = asyncio.ensure_future(anext(events))  # subscribed once it starts waiting
        await asyncio.sleep(0)
        a = await nb.create(Net(id="a", topic="t", name="x"))
        created = await asyncio.wait_for(first, WAIT)
        b = await nb.update(a.model_copy(update={"name": "y"}))
        updated = await asyncio.wait_for(anext(events), WAIT)
        await nb.delete(Net, "a")
        deleted = await asyncio.wait_for(anext(events), WAIT)
        await events.aclose()
        assert [e.action for e in (created, updated, deleted)] == [Action.CREATE, Action.UPDATE, Action.DELETE]
        assert (created.old, created.new) == (None, a)
        assert (updated.old, updated.new) == (a, b)
        assert deleted.old == b and deleted.new is None


async def test_slow_consumer_gets_coalesced_then_resync(nb: NbApi) -> None:
    async with Replica(nb, [Net], max_pending=5) as replica:
        events = replica.events()
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0)
        a = await nb.create(Net(id="a", topic="t", name="0"))
        assert (await asyncio.wait_for(first, WAIT)).action == Action.CREATE
        # not reading: three updates of one key and a create then delete of another
        for n in range(1, 4):
            a = await nb.update(a.model_copy(update={"name": str(n)}))
        await nb.create(Net(id="gone", topic="t"))
        await nb.delete(Net, "gone")
        await replica.wait_for(dfdb.revision_of(a) or 0)
        await settle(replica, await nb.create(Net(id="probe", topic="t")))
        merged = await asyncio.wait_for(anext(events), WAIT)
        assert (merged.action, merged.id, merged.new) == (Action.UPDATE, "a", a)
        assert merged.old is not None and merged.old.name == "0"  # type: ignore[attr-defined]
        assert (await asyncio.wait_for(anext(events), WAIT)).id == "probe"  # "gone" came and went
        assert replica.stats().lag == 0
        for n in range(10):  # more keys pending than max_pending: one RESYNC instead
            await nb.create(Net(id=f"n{n}", topic="t"))
        await settle(replica, await nb.create(Net(id="probe2", topic="t")))
        ev = await asyncio.wait_for(anext(events), WAIT)
        assert ev.action == Action.RESYNC and ev.model is None
        assert len(replica.get_all(Net)) == 13
        await events.aclose()


async def test_coalesced_events_keep_dependency_order(exact_nb: NbApi) -> None:
    """A merged event keeps its place when what refers to it is queued after it, and moves
    behind an object it now refers to: an object's event comes after its targets' events."""
    nb = exact_nb
    v2 = await nb.create(Vm(id="v2", topic="t"))
    async with Replica(nb, [Net, Vm]) as replica:
        events = replica.events()  # not read until the end: everything below is pending
        n = await nb.create(Net(id="n", topic="t"))
        v = await nb.create(Vm(id="v", topic="t", net="n"))
        n_b = await nb.update(n.model_copy(update={"name": "renamed"}))  # merged into n's create, before v
        v2_b = await nb.update(v2.model_copy(update={"n": 1}))
        m = await nb.create(Net(id="m", topic="t"))
        v2_c = await nb.update(v2_b.model_copy(update={"net": "m"}))  # now refers to m, queued after it
        await settle(replica, v2_c)
        got = [await asyncio.wait_for(anext(events), WAIT) for _ in range(4)]
        assert [(e.action, e.id, e.new) for e in got] == [
            (Action.CREATE, "n", n_b),
            (Action.CREATE, "v", v),
            (Action.CREATE, "m", m),
            (Action.UPDATE, "v2", v2_c),
        ]
        assert got[3].old == v2 and events.pending == 0
        await events.aclose()


async def test_selective_replica_holds_its_topics_only(nb: NbApi) -> None:
    await nb.create(Net(id="global"))
    await nb.create(Net(id="n1", topic="t1"))
    await nb.create(Net(id="n2", topic="t2"))
    async with Replica(nb, [Net, Vm], mode=SyncMode.SELECTIVE, topics={"t1"}) as replica:
        assert {n.id for n in replica.get_all(Net)} == {"global", "n1"}
        v2 = await nb.create(Vm(id="v2", topic="t2"))
        v1 = await nb.create(Vm(id="v1", topic="t1", net="n1"))
        await settle(replica, v1)
        assert replica.get(Vm, "v1") == v1 and replica.get(Vm, "v2") is None
        await replica.add_topic("t2")
        assert replica.topics == {"t1", "t2"}
        assert replica.get(Vm, "v2") == v2 and replica.get(Net, "n2") is not None
        v2b = await nb.update(v2.model_copy(update={"n": 5}))
        await settle(replica, v2b)
        assert replica.get(Vm, "v2") == v2b
        await replica.remove_topic("t1")
        assert replica.get(Vm, "v1") is None and replica.get(Net, "n1") is None
        assert replica.get(Net, "global") is not None
        v1b = await nb.update(v1.model_copy(update={"n": 9}))
        probe = await nb.create(Vm(id="probe", topic="t2"))
        await settle(replica, probe)
        assert replica.get(Vm, "v1") is None, v1b
    with pytest.raises(ValueError):
        Replica(nb, [Net], mode=SyncMode.FULL, topics={"t1"})


async def test_replica_reconciles_after_resync() -> None:
    async with dfdb.connect("memory://?history=5") as nb:
        await nb.create(Net(id="old", topic="t"))
        async with Replica(nb, [Net]) as replica:
            # the memory driver never yields inside a write: written straight through it,
            # the replica falls behind the 5-change history and gets RESYNC
            for i in range(50):
                _, value, _ = encode(Net(id=f"n{i}", topic="t"), 1)
                await nb.driver.put(Net.__table__, f"n{i}", "t", value, ABSENT)
            await nb.driver.delete(Net.__table__, "old")
            probe = await nb.create(Net(id="probe", topic="t"))
            await settle(replica, probe)
            assert replica.resyncs >= 1
            assert {n.id for n in replica.get_all(Net)} == {o.id for o in await nb.get_all(Net)}


class Host(dfdb.NbModel, table="replica_host"):
    pass


class NicSpec(BaseModel):
    model_config = ConfigDict(frozen=True)
    rack: str = ""


class Link(BaseModel):
    model_config = ConfigDict(frozen=True)
    host: dfdb.Ref[Host]


class Nic(dfdb.NbModel, table="replica_nic", indexes=("host", "spec.rack", "ips", ("host", "vlan"), "links.host")):
    host: dfdb.Ref[Host] | None = None
    spec: NicSpec | None = None
    ips: tuple[str, ...] = ()
    vlan: int = 0
    links: tuple[Link, ...] = ()


async def test_indexes_follow_field_changes(exact_nb: NbApi) -> None:
    nb = exact_nb
    await nb.create(Host(id="h1"))
    a = await nb.create(Nic(id="a", topic="t", host="h1", spec=NicSpec(rack="r1"), ips=("10.0.0.1", "10.0.0.2"),
                            vlan=5, links=(Link(host="h1"), Link(host="h2"))))  # fmt: skip
    await nb.create(Nic(id="b", topic="t", host="h2", ips=("10.0.0.3",), vlan=5))
    async with Replica(nb, [Host, Nic]) as replica:
        assert [n.id for n in replica.by_index(Nic, "host", "h1")] == ["a"]
        assert [n.id for n in replica.by_index(Nic, "spec.rack", "r1")] == ["a"]
        assert [n.id for n in replica.by_index(Nic, "ips", "10.0.0.2")] == ["a"]
        assert [n.id for n in replica.by_index(Nic, ("host", "vlan"), ("h2", 5))] == ["b"]
        assert [n.id for n in replica.by_index(Nic, "links.host", "h2")] == ["a"]
        assert replica.get_one(Nic, "host", "h1") == a
        assert replica.get_one(Nic, "host", "nobody") is None
        with pytest.raises(KeyError, match="no index"):
            replica.by_index(Nic, "vlan", 5)
        assert a.host is not None and replica.resolve(a.host) == replica.get(Host, "h1")
        # index keys follow field changes and deletes
        a2 = await nb.update(a.model_copy(update={"host": "h2", "ips": ("10.0.0.9",), "spec": None}))
        await settle(replica, a2)
        assert replica.by_index(Nic, "host", "h1") == []
        assert [n.id for n in replica.by_index(Nic, "host", "h2")] == ["a", "b"]
        with pytest.raises(ValueError, match="2 Nic objects"):
            replica.get_one(Nic, "host", "h2")
        assert replica.by_index(Nic, "ips", "10.0.0.1") == []
        assert replica.by_index(Nic, "spec.rack", "r1") == []
        await nb.delete(Nic, "b")
        probe = await nb.create(Host(id="probe"))
        await settle(replica, probe)
        assert [n.id for n in replica.by_index(Nic, "host", "h2")] == ["a"]
        assert replica.by_index(Nic, "ips", "10.0.0.3") == []


def test_bad_index_declaration_is_refused() -> None:
    with pytest.raises(dfdb.ModelDefinitionError, match="index"):

        class Bad(dfdb.NbModel, table="replica_bad_index", indexes=("",)):
            pass


@pytest.mark.timeout(400 + LONG_STEPS // 10)
@pytest.mark.parametrize("seed", [1, 2])
async def test_randomized_replicas_converge(faulty_nb: NbApi, dfdb_url: str, seed: int) -> None:
    """Random creates, updates, deletes and re-creations under another topic, references
    made before and after their targets, with two replicas in each mode (FULL, SELECTIVE,
    REACTIVE) whose streams are cut twice and which reconcile a forced RESYNC; each ends equal to the
    database within its scope. The seed is in the test id to replay a failure.

    Exact streams only: under snapshot polling a SELECTIVE replica that adds and removes
    topics while writes race can keep a stale object (a known, open problem). The steps
    depend on the backend (``randomized_steps``)."""
    import random

    nb = faulty_nb
    steps = randomized_steps(seed, dfdb_url)
    rng = random.Random(seed)
    topics = [f"t{i}" for i in range(4)]
    async with (
        Replica(nb, [Net, Vm]) as full,
        Replica(nb, [Net, Vm], mode=SyncMode.SELECTIVE, topics={"t0", "t1"}) as selective,
        Replica(nb, [Net, Vm], mode=SyncMode.SELECTIVE, topics={"t3"}) as other,
        Replica(nb, [Vm, Net]) as full2,
        Replica(nb, [Net, Vm], mode=SyncMode.REACTIVE, max_objects=20) as reactive,
        Replica(nb, [Net, Vm], mode=SyncMode.REACTIVE, max_objects=5) as reactive2,
    ):
        replicas = (full, full2, selective, other, reactive, reactive2)
        live: dict[tuple[type[dfdb.NbModel], str], dfdb.NbModel] = {}
        last: dfdb.NbModel | None = None
        for step in range(steps):
            model: type[Net] | type[Vm] = rng.choice([Net, Vm])
            key = f"{model.__name__.lower()}{rng.randrange(40)}"
            held = live.get((model, key))
            roll = rng.random()
            if held is None:
                topic = rng.choice([*topics, None])
                if model is Vm:
                    obj: dfdb.NbModel = Vm(id=key, topic=topic, net=f"net{rng.randrange(40)}", n=step)
                else:
                    obj = Net(id=key, topic=topic, name=str(step))
                last = live[(model, key)] = await nb.create(obj)
            elif roll < 0.25:
                await nb.delete(model, key)
                del live[(model, key)]
            else:
                change = {"n": step} if model is Vm else {"name": str(step)}
                last = live[(model, key)] = await nb.update(held.model_copy(update=change))
            if roll > 0.9:
                await rng.choice([reactive, reactive2]).fetch(model, f"{model.__name__.lower()}{rng.randrange(40)}")
            if step == steps * 3 // 10:
                await selective.add_topic("t2")
                await selective.remove_topic("t0")
            cuts = {steps * 2 // 10: False, steps * 6 // 10: False, steps * 8 // 10: True}
            if step in cuts:  # every stream cut: each reopens from its cursor (the last time with RESYNC)
                assert last is not None
                assert await cut(nb, lose_history=cuts[step]) == len(replicas)
                for replica in replicas:
                    await settle(replica, last)
        probe = await nb.create(Net(id="probe", topic="t1"))
        for replica in replicas:
            await settle(replica, probe)
            assert replica.stats().reconnects >= 2 and replica.stats().resyncs >= 1

        def scope_of(replica: Replica) -> set[str | None] | None:
            return None if replica.mode is SyncMode.FULL else {None, *replica.topics}

        for replica in (full, full2, selective, other):
            scope = scope_of(replica)
            for model in (Net, Vm):
                everything = {o.id: o.model_dump() for o in await nb.get_all(model)}
                truth = {i: o for i, o in everything.items() if scope is None or o["topic"] in scope}
                held_now = {o.id: o.model_dump() for o in replica.get_all(model)}
                inside = {i: o for i, o in held_now.items() if scope is None or o["topic"] in scope}
                assert inside == truth, f"seed {seed}, {replica.mode}, {model.__name__}"
                # objects of removed topics stay while referenced, and stay fresh
                outside = {i: o for i, o in held_now.items() if i not in inside}
                assert all(everything.get(i) == o for i, o in outside.items()), f"seed {seed}: stale {outside}"
        for model in (Net, Vm):  # a reactive replica holds fresh copies, at most max_objects
            everything = {o.id: o.model_dump() for o in await nb.get_all(model)}
            for obj in [*reactive.get_all(model), *reactive2.get_all(model)]:
                assert everything.get(obj.id) == obj.model_dump(), f"seed {seed}: stale {obj}"
        assert len(reactive) <= 20 and len(reactive2) <= 5
        assert last is not None


async def test_reactive_fetch_follows_changes_and_evicts(exact_nb: NbApi) -> None:
    nb = exact_nb
    n1 = await nb.create(Net(id="n1", topic="t1"))
    v1 = await nb.create(Vm(id="v1", topic="t1", net="n1"))
    v2 = await nb.create(Vm(id="v2", topic="t2"))
    async with Replica(nb, [Net, Vm], mode=SyncMode.REACTIVE, max_objects=2) as replica:
        assert len(replica) == 0
        assert await replica.fetch(Vm, "v1") == v1
        assert replica.get(Net, "n1") == n1  # its reference came along
        v1b = await nb.update(v1.model_copy(update={"n": 7}))
        await settle(replica, v1b)
        assert replica.get(Vm, "v1") == v1b
        await nb.delete(Vm, "v1")
        await settle(replica, await nb.create(Net(id="probe", topic="t1")))
        assert replica.get(Vm, "v1") is None
        assert await replica.fetch(Vm, "nothing") is None
        assert await replica.fetch(Vm, "v2") == v2
        assert await replica.fetch(Net, "n1") == n1  # touched: v2 becomes the oldest
        await nb.create(Net(id="n3", topic="t3"))
        assert await replica.fetch(Net, "n3") is not None
        assert replica.get(Vm, "v2") is None and replica.stats().evictions >= 1  # least recently used
        v2b = await nb.update(v2.model_copy(update={"n": 3}))
        assert await replica.fetch(Vm, "v2") == v2b  # fetched again on access, fresh
    with pytest.raises(ValueError, match="REACTIVE"):
        async with Replica(nb, [Net]) as full:
            await full.fetch(Net, "n1")


async def test_wait_for_a_revision_outside_the_scope_returns(nb: NbApi) -> None:
    """``wait_for`` the revision of a write the Replica does not hold returns once its stream
    has passed that revision, whatever the scope: empty (REACTIVE, nothing fetched yet), one
    fetched topic, selected topics."""
    await nb.create(Net(id="held", topic="t1"))
    async with (
        Replica(nb, [Net], mode=SyncMode.REACTIVE) as empty,
        Replica(nb, [Net], mode=SyncMode.REACTIVE) as fetched,
        Replica(nb, [Net], mode=SyncMode.SELECTIVE, topics={"t1"}) as selective,
    ):
        assert await fetched.fetch(Net, "held") is not None
        elsewhere = await nb.create(Net(id="elsewhere", topic="t9"))
        for replica in (empty, fetched, selective):
            await settle(replica, elsewhere)
            assert replica.get(Net, "elsewhere") is None


async def test_events_wait_for_reference_targets(exact_nb: NbApi) -> None:
    nb = exact_nb
    async with Replica(nb, [Net, Vm]) as replica:
        events = replica.events()
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0)
        vm = await nb.create(Vm(id="v", topic="t", net="later"))
        await settle(replica, vm)
        assert replica.get(Vm, "v") == vm  # stored at once
        assert not first.done() and replica.stats().deferred_now == 1  # its event waits
        net = await nb.create(Net(id="later", topic="t"))
        got = [await asyncio.wait_for(first, WAIT), await asyncio.wait_for(anext(events), WAIT)]
        assert [(e.model, e.id) for e in got] == [(Net, "later"), (Vm, "v")]
        assert got[0].new == net
        stats = replica.stats()
        assert (stats.deferred, stats.deferred_now) == (1, 0)
        # a deferred event is never dropped: the object's delete flushes it first
        await nb.create(Vm(id="w", topic="t", net="never"))
        await nb.delete(Vm, "w")
        got = [await asyncio.wait_for(anext(events), WAIT) for _ in range(1)]
        assert got[0].id == "w"  # create then delete, coalesced or in order, never lost
        await events.aclose()


async def test_replica_survives_a_cut_stream(faulty_nb: NbApi) -> None:
    """The connection under the Replica's stream drops (twice while changes are on their
    way, once while idle): the stream is reopened from its cursor and every change arrives
    exactly once, in order, with no RESYNC."""
    nb = faulty_nb
    async with Replica(nb, [Net]) as replica:
        events = replica.events()
        written = []
        for n in range(30):
            written.append(await nb.create(Net(id=f"n{n}", topic="t")))
            if n == 9:
                assert await cut(nb) == 1
            if n == 14:
                await settle(replica, written[n])  # reopened
            if n == 19:
                assert await cut(nb) == 1
        await settle(replica, written[-1])
        got = [await asyncio.wait_for(anext(events), WAIT) for _ in written]
        assert [(e.action, e.model, e.id, e.old, e.new) for e in got] == [
            (Action.CREATE, Net, o.id, None, o) for o in written
        ]
        assert events.pending == 0
        assert await cut(nb) == 1
        renamed = await nb.update(written[0].model_copy(update={"name": "renamed"}))
        await nb.delete(Net, "n1")
        probe = await nb.create(Net(id="probe", topic="t"))
        await settle(replica, probe)
        got = [await asyncio.wait_for(anext(events), WAIT) for _ in range(3)]
        assert [(e.action, e.id, e.old, e.new) for e in got] == [
            (Action.UPDATE, "n0", written[0], renamed),
            (Action.DELETE, "n1", written[1], None),
            (Action.CREATE, "probe", None, probe),
        ]
        assert events.pending == 0
        assert {n.id for n in replica.get_all(Net)} == {o.id for o in await nb.get_all(Net)}
        stats = replica.stats()
        assert (stats.reconnects, stats.resyncs, stats.objects) == (3, 0, 30)
        await events.aclose()


async def test_replica_reconciles_when_history_is_lost_while_cut(faulty_nb: NbApi) -> None:
    nb = faulty_nb
    kept = await nb.create(Net(id="kept", topic="t"))
    gone = await nb.create(Net(id="gone", topic="t"))
    async with Replica(nb, [Net]) as replica:
        events = replica.events()
        assert await cut(nb, lose_history=True) == 1
        renamed = await nb.update(kept.model_copy(update={"name": "renamed"}))
        await nb.delete(Net, "gone")
        new = await nb.create(Net(id="new", topic="t"))
        await settle(replica, new)
        got = sorted(
            [await asyncio.wait_for(anext(events), WAIT) for _ in range(3)], key=lambda e: e.id
        )  # a relist tells the difference, in no particular order
        assert [(e.action, e.id, e.old, e.new) for e in got] == [
            (Action.DELETE, "gone", gone, None),
            (Action.UPDATE, "kept", kept, renamed),
            (Action.CREATE, "new", None, new),
        ]
        assert replica.stats().resyncs == 1 and events.pending == 0
        await events.aclose()


async def test_readers_never_see_an_emptied_scope_during_a_resync(faulty_nb: NbApi) -> None:
    """A RESYNC relists the scope and swaps the contents at once: a reader looking at every
    scheduling point meanwhile sees the old objects or the new, never a missing one."""
    nb = faulty_nb
    await nb.create_many([Net(id=f"n{i}", topic="t") for i in range(50)])
    async with Replica(nb, [Net]) as replica:
        assert len(replica.get_all(Net)) == 50
        smallest = 50
        done = asyncio.Event()

        async def look() -> None:
            nonlocal smallest
            while not done.is_set():
                smallest = min(smallest, len(replica.get_all(Net)))
                await asyncio.sleep(0)

        watcher = asyncio.create_task(look())
        assert await cut(nb, lose_history=True) == 1
        await settle(replica, await nb.create(Net(id="probe", topic="t")))
        done.set()
        await watcher
        assert replica.stats().resyncs == 1
        assert smallest == 50, f"a reader saw {smallest} of 50 objects during the resync"


async def test_cancelled_event_reads_lose_nothing(exact_nb: NbApi) -> None:
    """Reads of ``events()`` cancelled at any point (while waiting, just as an event was
    handed over, under ``asyncio.wait_for`` with tiny timeouts) lose and repeat nothing."""
    nb = exact_nb
    async with Replica(nb, [Net]) as replica:
        events = replica.events()
        # cancelled after the event was handed to the waiting reader, before it ran again
        reader = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0)
        first = await nb.create(Net(id="first", topic="t"))
        for _ in range(20):
            if events.pending or reader.done():
                break
            await asyncio.sleep(0)
        reader.cancel()
        await asyncio.wait([reader])
        got = [] if reader.cancelled() else [reader.result()]
        written = [first]
        for n in range(200):
            written.append(await nb.create(Net(id=f"n{n}", topic="t")))
            with contextlib.suppress(TimeoutError):
                got.append(await asyncio.wait_for(anext(events), 0.0001))
        await settle(replica, written[-1])
        while len(got) < len(written):
            got.append(await asyncio.wait_for(anext(events), WAIT))
        assert [(e.action, e.new) for e in got] == [(Action.CREATE, o) for o in written]
        assert events.pending == 0
        await events.aclose()


async def test_selective_controller_follows_its_chassis_and_reads_little(exact_nb: NbApi) -> None:
    """20 tenants; a controller with ports of 2 of them follows those 2 topics only and
    reads at most 15% of the change records (where the driver counts them)."""
    from dfdb.models import Chassis, LogicalPort, PortBinding

    nb = exact_nb
    await nb.create(Chassis(id="c1", ip="10.0.0.1"))
    await nb.create(Chassis(id="c2", ip="10.0.0.2"))  # a port's event waits for its binding's chassis
    ports: dict[str, LogicalPort] = {}
    for t in range(20):
        for p in range(5):
            chassis = "c1" if (t, p) in {(3, 0), (3, 1), (7, 2)} else "c2"
            port = LogicalPort(
                id=f"p{t}-{p}", topic=f"tenant{t}", lswitch=f"ls{t}", binding=PortBinding(chassis=chassis)
            )
            ports[port.id] = await nb.create(port)
    async with Replica(nb, [Chassis, LogicalPort], mode=SyncMode.SELECTIVE) as replica:
        helper = dfdb.ChassisTopics(replica, "c1")
        for port_id in ("p3-0", "p3-1", "p7-2"):  # the local switch reports its ports
            await helper.port_bound(ports[port_id])
        assert replica.topics == {"tenant3", "tenant7"} and helper.subscriptions == 2  # tenant3 once
        before = replica.stats()
        writes = 0
        for round_ in range(10):
            for port_id, port in list(ports.items()):
                if round_ % 2 or port_id.endswith("-4"):
                    ports[port_id] = await nb.update(port.model_copy(update={"name": f"r{round_}"}))
                    writes += 1
        await settle(replica, ports["p7-2"])
        assert {p.id for p in replica.get_all(LogicalPort)} == {f"p{t}-{p}" for t in (3, 7) for p in range(5)}
        after = replica.stats()
        read = after.records_read - before.records_read
        own = 10 * 5 + 2 * 5  # tenant3 and tenant7: 10 ports in 5 odd rounds, 2 "-4" ports in 5 even ones
        assert own <= read <= 0.15 * writes, f"read {read} of {writes} change records"
        assert after.bytes_read - before.bytes_read >= read * 50  # each record holds a whole port
        print(f"selective controller read {read} of {writes} change records ({read / writes:.1%})")
        # the last local port of tenant3 goes: the topic goes with it
        events = replica.events()
        await helper.port_unbound("tenant3", "p3-0")
        assert "tenant3" in replica.topics
        moved = await nb.update(ports["p3-1"].model_copy(update={"binding": PortBinding(chassis="c2")}))
        async with asyncio.timeout(WAIT):
            async for ev in events:
                await helper.observe(ev)
                if ev.id == "p3-1" and ev.new == moved:
                    break
        assert replica.topics == {"tenant7"} and replica.get(LogicalPort, "p3-1") is None
        await events.aclose()


async def test_invalid_update_evicts_the_key(nb: NbApi, caplog: pytest.LogCaptureFixture) -> None:
    net = await nb.create(Net(id="n", topic="t", name="good"))
    async with Replica(nb, [Net]) as replica:
        assert replica.get(Net, "n") == net
        events = replica.events()
        try:
            await nb.driver.put(Net.__table__, "n", "t", b'{"id": "n", "topic": "t", "name": 5}', revision_of(net) or 0)
        except dfdb.BackendUnavailableError:
            pass
        await settle(replica, await nb.create(Net(id="probe", topic="t")))
        assert replica.get(Net, "n") is None  # evicted, not kept outdated
        assert replica.corrupt == 1 and "replica evicts" in caplog.text and "n" in caplog.text
        assert replica.stats().corrupt == 1
        # the eviction is told as corruption, never as an ordinary delete
        got = [await asyncio.wait_for(anext(events), WAIT) for _ in range(2)]
        assert [(ev.action, ev.id, ev.corrupt) for ev in got] == [
            (dfdb.Action.DELETE, "n", True),
            (dfdb.Action.CREATE, "probe", False),
        ]
        repaired = await nb.put(Net(id="n", topic="t", name="fixed"))
        ev = await asyncio.wait_for(anext(events), WAIT)
        assert (ev.action, ev.id, ev.corrupt, ev.new) == (dfdb.Action.CREATE, "n", False, repaired)
        assert replica.get(Net, "n") == repaired
        await events.aclose()


async def test_nested_references_order_and_defer_events(exact_nb: NbApi) -> None:
    """``binding.chassis`` (a nested model) and ``ports[].lswitch`` (a list of nested
    models) are references like top-level ones: their referrer's event waits for them."""
    from dfdb.models import Chassis, LogicalPort, LogicalRouter, LogicalSwitch, PortBinding, RouterPort

    nb = exact_nb
    ls = await nb.create(LogicalSwitch(id="ls1", topic="t"))
    async with Replica(nb, [Chassis, LogicalSwitch, LogicalPort, LogicalRouter]) as replica:
        events = replica.events()
        port = await nb.create(LogicalPort(id="p1", topic="t", lswitch=ls, binding=PortBinding(chassis="c1")))
        router_port = RouterPort(id="rp1", lswitch="ls2", mac="fa:16:3e:00:00:01", network="10.0.0.1/24")
        router = await nb.create(LogicalRouter(id="r1", topic="t", ports=(router_port,)))
        await settle(replica, router)
        assert replica.get(LogicalPort, "p1") == port and replica.get(LogicalRouter, "r1") == router  # stored
        assert replica.stats().deferred_now == 2  # their events wait for the chassis and the switch
        chassis = await nb.create(Chassis(id="c1", ip="10.0.0.1"))
        ls2 = await nb.create(LogicalSwitch(id="ls2", topic="t"))
        got = [await asyncio.wait_for(anext(events), WAIT) for _ in range(4)]
        assert [(e.model, e.id, e.new) for e in got] == [
            (Chassis, "c1", chassis),
            (LogicalPort, "p1", port),
            (LogicalSwitch, "ls2", ls2),
            (LogicalRouter, "r1", router),
        ]
        stats = replica.stats()
        assert (stats.deferred, stats.deferred_now) == (2, 0)
        await events.aclose()


async def test_reactive_fetch_brings_nested_references(exact_nb: NbApi) -> None:
    from dfdb.models import Chassis, LogicalPort, LogicalRouter, LogicalSwitch, PortBinding, RouterPort

    nb = exact_nb
    chassis = await nb.create(Chassis(id="c1", ip="10.0.0.1"))
    ls = await nb.create(LogicalSwitch(id="ls1", topic="t"))
    port = await nb.create(LogicalPort(id="p1", topic="t", lswitch=ls, binding=PortBinding(chassis=chassis)))
    router_port = RouterPort(id="rp1", lswitch="ls1", mac="fa:16:3e:00:00:01", network="10.0.0.1/24")
    router = await nb.create(LogicalRouter(id="r1", topic="t", ports=(router_port,)))
    models = [Chassis, LogicalSwitch, LogicalPort, LogicalRouter]
    async with Replica(nb, models, mode=SyncMode.REACTIVE) as replica:
        assert await replica.fetch(LogicalPort, "p1") == port
        assert port.binding is not None and port.binding.chassis is not None
        assert replica.resolve(port.binding.chassis) == chassis  # came along with the port
    async with Replica(nb, models, mode=SyncMode.REACTIVE) as replica:
        assert await replica.fetch(LogicalRouter, "r1") == router
        assert replica.resolve(router.ports[0].lswitch) == ls


async def test_remove_topic_keeps_nested_reference_targets(exact_nb: NbApi) -> None:
    from dfdb.models import LogicalRouter, LogicalSwitch, RouterPort

    nb = exact_nb
    ls = await nb.create(LogicalSwitch(id="ls1", topic="t1"))
    lonely = await nb.create(LogicalSwitch(id="ls9", topic="t1"))
    router_port = RouterPort(id="rp1", lswitch=ls, mac="fa:16:3e:00:00:01", network="10.0.0.1/24")
    router = await nb.create(LogicalRouter(id="r1", topic="t2", ports=(router_port,)))
    async with Replica(nb, [LogicalSwitch, LogicalRouter], mode=SyncMode.SELECTIVE, topics={"t1", "t2"}) as replica:
        await replica.remove_topic("t1")
        assert replica.get(LogicalRouter, "r1") == router
        assert replica.get(LogicalSwitch, "ls1") == ls  # the router's port still names it
        assert replica.get(LogicalSwitch, "ls9") is None, lonely
        ls_b = await nb.update(ls.model_copy(update={"name": "renamed"}))
        await settle(replica, ls_b)
        assert replica.get(LogicalSwitch, "ls1") == ls_b  # and it stays fresh


def need_backend(backend: str) -> None:
    """Skip unless anyio can run ``backend`` (its trio backend needs trio 0.32 or later)."""
    if backend == "trio":
        trio = pytest.importorskip("trio")
        version = tuple(int(p) for p in trio.__version__.split(".")[:2] if p.isdigit())
        if version < (0, 32):
            pytest.skip(f"anyio's trio backend needs trio>=0.32, not {trio.__version__}")


async def _replica_round_trip() -> None:
    """Load, follow, read events (one read cancelled by a deadline), close: on any anyio backend."""
    import anyio

    async with dfdb.connect("memory://") as nb:
        a = await nb.create(Net(id="a", topic="t"))
        async with Replica(nb, [Net, Vm]) as replica:
            assert replica.get(Net, "a") == a
            events = replica.events()
            with anyio.move_on_after(0.01) as waited:  # nothing yet: the read is cancelled
                await anext(events)
            assert waited.cancelled_caught
            vm = await nb.create(Vm(id="v", topic="t", net="b"))
            b = await nb.create(Net(id="b", topic="t"))
            with anyio.fail_after(WAIT):
                await replica.wait_for(revision_of(b) or 0)
                got = [await anext(events), await anext(events)]
            assert [(e.action, e.new) for e in got] == [(Action.CREATE, b), (Action.CREATE, vm)]
        with anyio.fail_after(WAIT):  # the Replica closed: its events end
            assert [e async for e in events] == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_replica_runs_on_asyncio_and_trio(backend: str) -> None:
    import anyio

    need_backend(backend)
    anyio.run(_replica_round_trip, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_replica_events_run_on_asyncio_and_trio(backend: str) -> None:
    """The event side of a Replica (coalescing, deferral, cancellable reads, end) on either backend."""
    import anyio

    need_backend(backend)
    from dfdb.replica.events import EventFlow, ReplicaEvent

    async def main() -> None:
        missing: set[tuple[type[dfdb.NbModel], str]] = {(Net, "n")}
        flow = EventFlow(lambda obj: set(missing) if isinstance(obj, Vm) else set(), 10, defer=True)
        events = flow.subscribe()
        with anyio.move_on_after(0.01) as waited:
            await anext(events)
        assert waited.cancelled_caught
        vm, net = Vm(id="v", net="n"), Net(id="n")
        flow.emit(ReplicaEvent(Action.CREATE, Vm, "v", None, vm, 1))  # waits for its network
        assert flow.deferred_now == 1 and events.pending == 0
        missing.clear()
        flow.emit(ReplicaEvent(Action.CREATE, Net, "n", None, net, 2))
        newer = net.model_copy(update={"name": "x"})
        flow.emit(ReplicaEvent(Action.UPDATE, Net, "n", net, newer, 3))  # coalesced into the create
        async with anyio.create_task_group() as tasks:
            got: list[ReplicaEvent] = []

            async def read() -> None:
                got.extend([await anext(events), await anext(events)])

            tasks.start_soon(read)
        assert [(e.action, e.id, e.new) for e in got] == [(Action.CREATE, "n", newer), (Action.CREATE, "v", vm)]
        flow.end()
        assert [e async for e in events] == []

    anyio.run(main, backend=backend)


async def test_closing_ends_events_and_a_closed_replica_stays_closed(nb: NbApi) -> None:
    replica = Replica(nb, [Net])
    async with replica:
        events = replica.events()
        net = await nb.create(Net(id="n", topic="t"))
        await settle(replica, net)
    assert [(e.action, e.new) async for e in events] == [(Action.CREATE, net)]  # what was pending, then the end
    assert not replica.synced
    with pytest.raises(dfdb.StreamClosedError):
        await replica.wait_for((revision_of(net) or 0) + 1)
    with pytest.raises(dfdb.StreamClosedError, match="only once"):
        async with replica:
            pass


async def test_add_topic_cancelled_at_any_step_leaves_the_topic_out(nb: NbApi) -> None:
    """A cancelled ``add_topic`` leaves the topic out (nothing half-loaded stays); the next
    call loads it whole."""
    await nb.create_many([Net(id=f"n{i}", topic="t1") for i in range(10)])
    async with Replica(nb, [Net], mode=SyncMode.SELECTIVE) as replica:
        for steps in range(40):
            adding = asyncio.create_task(replica.add_topic("t1"))
            for _ in range(steps):
                await asyncio.sleep(0)
            adding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await adding
            if adding.cancelled():
                assert "t1" not in replica.topics and replica.get_all(Net, topic="t1") == []
            await replica.add_topic("t1")
            assert len(replica.get_all(Net, topic="t1")) == 10, f"cancelled after {steps} steps"
            await replica.remove_topic("t1")


async def test_concurrent_add_topic_calls_return_once_loaded(nb: NbApi) -> None:
    await nb.create_many([Net(id=f"n{i}", topic="t1") for i in range(50)])
    async with Replica(nb, [Net], mode=SyncMode.SELECTIVE) as replica:

        async def add() -> int:
            await replica.add_topic("t1")
            return len(replica.get_all(Net, topic="t1"))

        calls = []
        for _ in range(30):  # a call at every step of the first one's load
            calls.append(asyncio.create_task(add()))
            await asyncio.sleep(0)
        assert await asyncio.gather(*calls) == [50] * 30


async def test_a_replica_closed_from_another_task_disturbs_nothing(nb: NbApi) -> None:
    """``asyncio.wait_for(replica.aclose(), t)`` runs ``aclose`` in a task of its own: the
    Replica closes, and the task that opened it goes on undisturbed."""
    replica = Replica(nb, [Net])
    await replica.__aenter__()
    await asyncio.wait_for(replica.aclose(), 5)
    await asyncio.sleep(0)  # no stray cancellation reaches this task
    await nb.create(Net(id="after", topic="t"))
    assert not replica.synced


async def test_events_end_when_the_nbapi_closes_under_the_replica(dfdb_fresh_url: str) -> None:
    nb = await dfdb.connect(dfdb_fresh_url)
    async with Replica(nb, [Net]) as replica:
        events = replica.events()
        await nb.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(events), WAIT)
        with pytest.raises(dfdb.StreamClosedError):
            await replica.wait_for(10**9)


def test_topics_must_not_be_a_string(nb: NbApi) -> None:
    with pytest.raises(TypeError, match="not the string"):
        Replica(nb, [Net], mode=SyncMode.SELECTIVE, topics="ab")


class HeldDriver(MemoryDriver):
    """A memory backend whose change streams deliver nothing while ``flowing`` is clear."""

    def __init__(self, url: DatabaseURL) -> None:
        super().__init__(url)
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def watch(
        self, tables: Collection[str], topics: Collection[str | None] | None = None, since: int | None = None
    ) -> EventSource:
        source = await super().watch(tables, topics, since)
        flowing = self.flowing

        class Held(type(source)):  # type: ignore[misc]
            async def __anext__(self) -> RawEvent:
                await flowing.wait()
                return await super().__anext__()

        source.__class__ = Held
        return source


register_driver("test-held", HeldDriver)


async def test_add_topic_never_lets_wait_for_pass_a_change_not_applied() -> None:
    # the listing of the added topic is newer than the stream's position: the other
    # topics' changes in between are not applied yet, so wait_for must not return
    async with dfdb.connect("test-held://held") as nb:
        driver = nb.driver
        assert isinstance(driver, HeldDriver)
        await nb.create(Vm(id="k0", topic="t"))
        driver.flowing.clear()  # the Replica loads, then its stream delivers nothing until set
        async with Replica(nb, [Net, Vm], mode=SyncMode.SELECTIVE, topics={"t"}) as replica:
            await replica.wait_synced()
            patched = await nb.patch(Vm, "k0", n=1)
            await nb.create(Vm(id="u0", topic="u"))
            await replica.add_topic("u")
            assert replica.get(Vm, "u0") is not None
            with pytest.raises(TimeoutError):  # the patch of k0 has not arrived
                async with asyncio.timeout(0.3):
                    await replica.wait_for(revision_of(patched) or 0)
            driver.flowing.set()
            async with asyncio.timeout(WAIT):
                await replica.wait_for(revision_of(patched) or 0)
            held = replica.get(Vm, "k0")
            assert held is not None and held.n == 1


class OutageDriver(MemoryDriver):
    """A memory backend that refuses the next ``lists`` listings and ``watches`` new watches
    (a server gone for a moment); ``spent`` is set once every refusal was made."""

    def __init__(self, url: DatabaseURL) -> None:
        super().__init__(url)
        self.lists = self.watches = 0
        self.spent = asyncio.Event()

    def _refuse(self, what: str) -> None:
        left = getattr(self, what) - 1
        setattr(self, what, left)
        if self.lists <= 0 and self.watches <= 0:
            self.spent.set()
        raise dfdb.BackendUnavailableError(f"{what}: the server is away")

    async def list(self, table: str, topic: str | None = None) -> Listing:
        if self.lists > 0:
            self._refuse("lists")
        return await super().list(table, topic)

    async def digest_keys(
        self, table: str, topics: Collection[str | None] | None, buckets: int, wanted: Collection[int]
    ) -> KeyListing:
        if self.lists > 0:  # a relist by keys reads them first
            self._refuse("lists")
        return await super().digest_keys(table, topics, buckets, wanted)

    async def watch(
        self, tables: Collection[str], topics: Collection[str | None] | None = None, since: int | None = None
    ) -> EventSource:
        if self.watches > 0:
            self._refuse("watches")
        return await super().watch(tables, topics, since)


async def test_a_resync_whose_relist_failed_is_relisted_once_the_server_is_back() -> None:
    """A RESYNC arrives while the server is away: its relist fails. The Replica relists again
    before it applies anything more, and counts itself synced again: it equals the database
    and ``wait_for`` returns. (It stayed unsynced for good, so ``wait_for`` never returned,
    and the relist was never done again: what the lost history held stayed missing.)"""
    driver = OutageDriver(DatabaseURL.parse("memory://?history=5"))
    # one try per call: a refused listing fails the call at once
    async with dfdb.NbApi(driver, timeout=1, backoff=Backoff(initial=5, maximum=5)) as nb:
        await nb.create(Net(id="old", topic="t"))
        async with Replica(nb, [Net]) as replica:
            driver.lists = 1
            for i in range(20):  # straight through the driver, which never yields: history is lost
                _, value, _ = encode(Net(id=f"n{i}", topic="t"), 1)
                await driver.put(Net.__table__, f"n{i}", "t", value, ABSENT)
            await driver.delete(Net.__table__, "old")
            await asyncio.wait_for(driver.spent.wait(), WAIT)
            probe = await nb.create(Net(id="probe", topic="t"))
            await settle(replica, probe)
            assert {n.id for n in replica.get_all(Net)} == {o.id for o in await nb.get_all(Net)}
            assert replica.stats().resyncs >= 1
