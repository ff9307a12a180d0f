"""The Replica (FULL and SELECTIVE) on every configured backend."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel, ConfigDict

import dfdb
from dfdb import Action, NbApi, Replica, SyncMode, revision_of


class Net(dfdb.NbModel, table="replica_net"):
    name: str = ""


class Vm(dfdb.NbModel, table="replica_vm"):
    net: dfdb.Ref[Net] | None = None
    n: int = 0


WAIT = 10


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
        seen: list[dfdb.ReplicaEvent] = []

        async def collect() -> None:
            async for ev in replica.events():
                seen.append(ev)
                if len(seen) == 3:
                    return

        task = asyncio.create_task(collect())
        await asyncio.sleep(0)  # let the collector subscribe
        a = await nb.create(Net(id="a", topic="t", name="x"))
        b = await nb.update(a.model_copy(update={"name": "y"}))
        await nb.delete(Net, "a")
        await asyncio.wait_for(task, WAIT)
        assert [e.action for e in seen] == [Action.CREATE, Action.UPDATE, Action.DELETE]
        assert (seen[0].old, seen[0].new) == (None, a)
        assert (seen[1].old, seen[1].new) == (a, b)
        assert seen[2].old == b and seen[2].new is None


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
            # the memory driver never yields inside a write: the replica falls behind
            # the 5-change history and gets RESYNC
            last = None
            for i in range(50):
                last = await nb.create(Net(id=f"n{i}", topic="t"))
            await nb.delete(Net, "old")
            probe = await nb.create(Net(id="probe", topic="t"))
            assert last is not None
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


@pytest.mark.parametrize("seed", [1, 2])
async def test_randomized_replicas_converge(exact_nb: NbApi, seed: int) -> None:
    """Random creates, updates, deletes and re-creations under another topic, references
    made before and after their targets; FULL and SELECTIVE replicas end equal to the
    database within their scope. The seed is in the test id to replay a failure.

    Exact streams only for now: under snapshot polling a SELECTIVE replica that adds and
    removes topics while writes race can keep a stale object (a known, open problem)."""
    import random

    nb = exact_nb
    rng = random.Random(seed)
    topics = [f"t{i}" for i in range(4)]
    async with (
        Replica(nb, [Net, Vm]) as full,
        Replica(nb, [Net, Vm], mode=SyncMode.SELECTIVE, topics={"t0", "t1"}) as selective,
    ):
        live: dict[tuple[type[dfdb.NbModel], str], dfdb.NbModel] = {}
        last: dfdb.NbModel | None = None
        for step in range(1500):
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
            if step == 700:
                await selective.add_topic("t2")
                await selective.remove_topic("t0")
        probe = await nb.create(Net(id="probe", topic="t1"))
        for replica in (full, selective):
            await settle(replica, probe)

        def scope_of(replica: Replica) -> set[str | None] | None:
            return None if replica.mode is SyncMode.FULL else {None, *replica.topics}

        for replica in (full, selective):
            scope = scope_of(replica)
            for model in (Net, Vm):
                truth = {o.id: o.model_dump() for o in await nb.get_all(model) if scope is None or o.topic in scope}
                held_now = {o.id: o.model_dump() for o in replica.get_all(model)}
                assert held_now == truth, f"seed {seed}, {replica.mode}, {model.__name__}"
        assert last is not None
