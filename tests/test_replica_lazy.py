"""A Replica's lazy full sync: values held as stored, built on first access, validated in the
background; a corrupt value (written around dfdb) is never served and is reported."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import tracemalloc
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

import dfdb
from dfdb import NbApi, Replica, SyncMode
from dfdb.drivers import ABSENT, register_driver
from dfdb.drivers.base import Entry, Listing
from dfdb.drivers.memory import MemoryDriver
from dfdb.models import LogicalPort, LogicalSwitch, PortBinding

WAIT = 10


class Note(dfdb.NbModel, table="lazy_note"):
    text: str = ""
    n: int = 0


def port(i: int, **fields: object) -> LogicalPort:
    return LogicalPort(
        id=f"p{i:04d}",
        topic=f"t{i % 3}",
        lswitch=f"ls{i % 4}",
        ips=(f"10.0.{i // 250}.{i % 250}",),
        macs=(f"fa:16:3e:00:{i // 256:02x}:{i % 256:02x}",),
        **fields,  # type: ignore[arg-type]
    )


async def write_raw(nb: NbApi, table: str, id: str, topic: str | None, value: bytes) -> None:
    """Store ``value`` as it is, around dfdb's validation (as another program might)."""
    try:
        await nb.driver.put(table, id, topic, value, ABSENT)
    except dfdb.BackendUnavailableError:
        pass  # some servers answer a write with no change log entry late; the value is there


def held_unbuilt(replica: Replica, model: type[dfdb.NbModel]) -> int:
    return sum(type(held) is Entry for held, _ in replica._store.rows[model].values())


async def test_corrupt_value_is_never_served_and_is_reported_after_the_sync(
    nb: NbApi, caplog: pytest.LogCaptureFixture
) -> None:
    await nb.create_many([Note(id=f"n{i:03d}", topic="t", text=f"note {i}", n=i) for i in range(450)])
    # valid JSON of the right key, so the plain parse takes it; not a valid Note (n is text)
    await write_raw(nb, Note.__table__, "n200x", "t", b'{"id": "n200x", "topic": "t", "version": 1, "n": "many"}')
    async with Replica(nb, [Note], check_interval=None) as replica:
        assert held_unbuilt(replica, Note) >= 450  # held as stored: nothing was built
        await asyncio.wait_for(replica._validated.wait(), WAIT)
        assert replica.corrupt == 1 and replica.stats().corrupt == 1
        assert "lazy_note/n200x" in caplog.text
        assert held_unbuilt(replica, Note) == 450  # validated, still unbuilt: an object costs more
        assert replica.get(Note, "n200x") is None
        assert [n.id for n in replica.get_all(Note)] == [f"n{i:03d}" for i in range(450)]
        assert held_unbuilt(replica, Note) == 0  # built as read
        assert replica.get(Note, "n123") == await nb.get(Note, "n123")
        assert replica.corrupt == 1
        # a valid write of the key brings it back as an ordinary create
        events = replica.events()
        fixed = await nb.put(Note(id="n200x", topic="t", text="fixed"))
        ev = await asyncio.wait_for(anext(events), WAIT)
        assert (ev.action, ev.id, ev.new, ev.corrupt) == (dfdb.Action.CREATE, "n200x", fixed, False)
        assert replica.get(Note, "n200x") == fixed
        await events.aclose()


async def test_access_before_the_background_validation_ends(nb: NbApi, caplog: pytest.LogCaptureFixture) -> None:
    """Lookups right after the sync build what they return; a corrupt value they meet (its
    indexed fields and references readable, another field not valid) is reported, not returned."""
    caplog.set_level(logging.WARNING)
    switches = await nb.create_many([LogicalSwitch(id=f"ls{i}", topic="t0") for i in range(4)])
    ports = await nb.create_many([port(i) for i in range(600)])
    odd = b'{"id": "odd", "topic": "t0", "version": 1, "lswitch": "ls0", "ips": ["10.9.9.8"], "device_id": 5}'
    await write_raw(nb, LogicalPort.__table__, "odd", "t0", odd)
    bad = b'{"id": "bad", "topic": "t0", "version": 1, "lswitch": "ls0", "enabled": "perhaps"}'
    await write_raw(nb, LogicalPort.__table__, "bad", "t0", bad)
    async with Replica(nb, [LogicalSwitch, LogicalPort], check_interval=None) as replica:
        assert not replica._validated.is_set()  # no await since the sync: the validation has not run
        assert held_unbuilt(replica, LogicalPort) == 602
        assert replica.by_index(LogicalPort, "ips", ipaddress.ip_address("10.9.9.8")) == []  # met, not returned
        assert replica.corrupt == 1 and "lport/odd" in caplog.text
        assert replica.get(LogicalPort, "bad") is None
        assert replica.corrupt == 2 and "lport/bad" in caplog.text
        assert replica.by_index(LogicalPort, "lswitch", "ls0") == [p for p in ports if p.lswitch == "ls0"]
        assert replica.by_index(LogicalPort, "ips", ports[7].ips[0]) == [ports[7]]
        assert replica.get_one(LogicalPort, "macs", ports[9].macs[0]) == ports[9]
        assert replica.get(LogicalSwitch, "ls0") == switches[0]
        assert not replica._validated.is_set()
        await asyncio.wait_for(replica._validated.wait(), WAIT)
        assert replica.corrupt == 2  # each corrupt value is reported once
        assert replica.get_all(LogicalPort) == ports
        assert len(replica) == 604  # 4 switches, 600 ports


async def test_lazy_index_keys_equal_the_models(nb: NbApi) -> None:
    """The keys read from a stored value's JSON are the keys of its model: non-canonical
    values (an upper-case MAC, an IPv6 text) are read the way validation reads them."""
    raw = b'{"id": "up", "topic": "t", "lswitch": "ls1", "ips": ["::1", "10.0.0.1"], "macs": ["FA-16-3E-00-00-0A"]}'
    await write_raw(nb, LogicalPort.__table__, "up", "t", raw)
    bound = await nb.create(port(1, binding=PortBinding(chassis="c1"), security_groups=("sg1", "sg2")))
    async with Replica(nb, [LogicalPort], check_interval=None) as replica:
        assert held_unbuilt(replica, LogicalPort) == 2
        up = replica.get_one(LogicalPort, "macs", "fa:16:3e:00:00:0a")
        assert up is not None and up == await nb.get(LogicalPort, "up")
        for index in LogicalPort.__indexes__:
            for key in dfdb.replica.store.index_keys(up, index) | dfdb.replica.store.index_keys(bound, index):
                found = replica.by_index(LogicalPort, index, key)
                assert found == sorted({up, bound} & set(found), key=lambda p: p.id) and found, (index, key)
        assert replica.by_index(LogicalPort, "binding.chassis", "c1") == [bound]
        assert replica.by_index(LogicalPort, "security_groups", "sg2") == [bound]


async def test_events_consumer_before_the_sync_gets_built_objects(nb: NbApi) -> None:
    """With an ``events()`` consumer subscribed before the sync, the sync tells it every object
    (built as before)."""
    notes = await nb.create_many([Note(id=f"n{i}", topic="t") for i in range(5)])
    replica = Replica(nb, [Note], check_interval=None)
    events = replica.events()
    async with replica:
        got = [await asyncio.wait_for(anext(events), WAIT) for _ in notes]
        assert [(ev.action, ev.new) for ev in got] == [(dfdb.Action.CREATE, n) for n in notes]
        assert held_unbuilt(replica, Note) == 0
    await events.aclose()


async def test_selective_lazy_sync_holds_its_topics(nb: NbApi) -> None:
    await nb.create_many([port(i) for i in range(30)])
    async with Replica(nb, [LogicalPort], mode=SyncMode.SELECTIVE, topics={"t1"}, check_interval=None) as replica:
        assert held_unbuilt(replica, LogicalPort) == 10
        assert {p.id for p in replica.get_all(LogicalPort)} == {f"p{i:04d}" for i in range(30) if i % 3 == 1}
        await replica.remove_topic("t1")
        assert len(replica) == 0


async def test_memory_per_held_port_is_below_a_dict_of_the_models(dfdb_leak_check: None, tmp_path: Path) -> None:
    """After a lazy sync (and after its background validation) a Replica holds a port in less
    memory than a plain dict of the validated models takes for it."""
    count = 2000
    async with dfdb.connect(f"sqlite:///{tmp_path}/memory.db") as nb:
        await nb.create_many([port(i) for i in range(count)])
        gc.collect()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            models = {p.id: p for p in await nb.get_all(LogicalPort)}
            gc.collect()
            plain = tracemalloc.get_traced_memory()[0] - start
            del models
            gc.collect()
            start = tracemalloc.get_traced_memory()[0]
            async with Replica(nb, [LogicalPort], check_interval=None) as replica:
                gc.collect()
                synced = tracemalloc.get_traced_memory()[0] - start
                await asyncio.wait_for(replica._validated.wait(), WAIT)
                gc.collect()
                validated = tracemalloc.get_traced_memory()[0] - start
                assert len(replica) == count
        finally:
            tracemalloc.stop()
    per_port = f"plain dict {plain / count:.0f} B, replica {synced / count:.0f} B, validated {validated / count:.0f} B"
    print(f"per port: {per_port}")
    assert synced <= plain and validated <= plain


async def test_changes_before_the_rows_are_indexed_keep_the_indexes_exact(nb: NbApi) -> None:
    """A model no other held model's reference waits for is loaded without reading its JSON;
    updates and deletes that arrive before its rows are indexed leave the indexes exact."""
    ports = await nb.create_many([port(i) for i in range(300)])
    async with Replica(nb, [LogicalPort], check_interval=None) as replica:
        assert not replica._validated.is_set()
        moved = await nb.update(ports[1].model_copy(update={"lswitch": "ls-new"}))
        await nb.delete(LogicalPort, ports[2].id)
        probe = await nb.create(port(999))
        await asyncio.wait_for(replica.wait_for(dfdb.revision_of(probe) or 0), WAIT)
        assert replica.by_index(LogicalPort, "lswitch", "ls-new") == [moved]
        for switch, changed in (("ls1", ports[1]), ("ls2", ports[2])):
            expected = [p for p in ports if p.lswitch == switch and p != changed]
            assert replica.by_index(LogicalPort, "lswitch", switch) == expected
        assert replica.by_index(LogicalPort, "ips", probe.ips[0]) == [probe]
        await asyncio.wait_for(replica._validated.wait(), WAIT)
        for index in LogicalPort.__indexes__:
            for obj in replica.get_all(LogicalPort):
                for key in dfdb.replica.store.index_keys(obj, index):
                    assert obj in replica.by_index(LogicalPort, index, key)


class Rack(BaseModel):
    rack: str = "r1"


class Zoned(dfdb.NbModel, table="lazy_zoned", indexes=("zone", "tags", "spec.rack")):
    zone: str = "main"
    tags: tuple[str, ...] = ("base",)
    spec: Rack = Field(default_factory=lambda: Rack())


async def test_a_missing_field_is_indexed_by_its_default(nb: NbApi) -> None:
    """A stored value without an indexed field (written before the field was added, or around
    dfdb) is indexed by the field's default, as its model holds it."""
    await write_raw(nb, Zoned.__table__, "old", "t", b'{"id": "old", "topic": "t", "version": 1, "spec": {}}')
    await write_raw(nb, Zoned.__table__, "bare", "t", b'{"id": "bare", "topic": "t", "version": 1}')
    new = await nb.create(Zoned(id="new", topic="t", zone="edge", tags=("x",), spec=Rack(rack="r2")))
    async with Replica(nb, [Zoned], check_interval=None) as replica:
        old, bare = await nb.get(Zoned, "old"), await nb.get(Zoned, "bare")
        assert replica.by_index(Zoned, "zone", "main") == [bare, old]
        assert replica.by_index(Zoned, "tags", "base") == [bare, old]
        assert replica.by_index(Zoned, "spec.rack", "r1") == [bare, old]
        assert replica.by_index(Zoned, "spec.rack", "r2") == [new]


async def test_a_value_found_corrupt_at_the_load_is_not_counted_nor_read_again_by_a_check(
    nb: NbApi, caplog: pytest.LogCaptureFixture
) -> None:
    """A corrupt value the load decodes (not JSON: the plain parse cannot read it) is never
    counted; one the plain parse reads is counted until the background validation finds it.
    Neither is read or reported again by a consistency check: each is reported once."""
    caplog.set_level(logging.WARNING)
    await nb.create_many([LogicalSwitch(id=f"ls{i}", topic="t0") for i in range(4)])
    await nb.create_many([port(i) for i in range(300)])
    await write_raw(nb, LogicalPort.__table__, "junk", "t0", b"not json")
    bad = b'{"id": "bad", "topic": "t0", "version": 1, "lswitch": "ls0", "enabled": "perhaps"}'
    await write_raw(nb, LogicalPort.__table__, "bad", "t0", bad)
    async with Replica(nb, [LogicalSwitch, LogicalPort], check_interval=None) as replica:
        assert not replica._validated.is_set()
        assert len(replica) == replica.stats().objects == 305  # "bad" is not validated yet
        await asyncio.wait_for(replica._validated.wait(), WAIT)
        assert len(replica) == replica.stats().objects == 304
        assert caplog.text.count("lport/junk") == 1 and caplog.text.count("lport/bad") == 1
        caplog.clear()
        report = await replica.check()
        assert report.complete and (report.differing, report.repaired) == (0, 0)
        assert "lport/" not in caplog.text


async def test_removing_a_topic_with_values_the_plain_parse_cannot_read() -> None:
    """A topic removed before the background validation reached the topics kept: a kept
    unbuilt value the plain parse cannot read (a corrupt one, one without a field that has a
    default) is built to find its references, instead of failing the removal."""
    async with dfdb.connect("memory://lazy-remove-topic") as nb:
        first = await nb.create_many([Zoned(id=f"k{i:03d}", topic="t0") for i in range(250)])  # validated first
        await write_raw(nb, Zoned.__table__, "bad", "t1", b'{"id": "bad", "topic": "t1", "version": 1, "zone": 5}')
        await write_raw(nb, Zoned.__table__, "old", "t1", b'{"id": "old", "topic": "t1", "version": 1, "spec": {}}')
        await nb.create(Zoned(id="gone", topic="t2"))
        topics = {"t0", "t1", "t2"}
        async with Replica(nb, [Zoned], mode=SyncMode.SELECTIVE, topics=topics, check_interval=None) as replica:
            assert held_unbuilt(replica, Zoned) == 253
            await replica.remove_topic("t2")
            assert replica.get_all(Zoned) == [*first, await nb.get(Zoned, "old")]
            assert replica.corrupt == 1


class SlowListDriver(MemoryDriver):
    """Every listing takes 0.15 s (a large scope, a loaded server)."""

    async def list(self, table: str, topic: str | None = None) -> Listing:
        await asyncio.sleep(0.15)
        return await super().list(table, topic)


register_driver("test-lazy-slowlist", SlowListDriver)


async def test_a_load_of_many_scopes_gives_each_listing_its_own_deadline() -> None:
    """A selective load lists each (table, topic) scope: one after the other on a driver without
    a batched listing, each within the NbApi's timeout, not all of them within one."""
    topics = {f"t{i}" for i in range(8)}
    async with dfdb.connect("test-lazy-slowlist://", timeout=0.5) as nb:
        await nb.create(LogicalPort(id="p", topic="t3", lswitch="ls"))
        async with Replica(nb, [LogicalPort], mode=SyncMode.SELECTIVE, topics=topics, check_interval=None) as replica:
            await asyncio.wait_for(replica.wait_synced(), WAIT)
            assert replica.get(LogicalPort, "p").topic == "t3"


def test_unindexed_ids_kept_as_a_sorted_run() -> None:
    """The store's ids not indexed yet: a run added in ascending order, ids taken out of it in
    any order, and ids added out of order, each counted once."""
    from dfdb.replica.store import Unindexed

    pending = Unindexed()
    for id in ("a", "b", "c", "d", "e"):
        pending.run.append(id)
    pending.extra.add("0")
    assert len(pending) == 6 and all(id in pending for id in "0abcde") and "f" not in pending
    pending.discard("c")  # out of order
    pending.discard("a")  # the start: moves on
    assert "c" not in pending and "a" not in pending and len(pending) == 4
    pending.discard("b")  # the start again: skips "c", taken before
    assert pending.start == 3 and not pending.taken
    pending.discard("0")
    pending.discard("zz")  # not in: nothing
    assert sorted(pending.ids()) == ["d", "e"] and len(pending) == 2
    pending.extra.add("c")  # held again, out of order
    assert "c" in pending and sorted(pending.ids()) == ["c", "d", "e"]
