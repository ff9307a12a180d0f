"""``Driver.digest_keys_many``: several tables' scopes read at once, as a relist by keys reads
them, equal to each table's :meth:`~dfdb.drivers.base.Driver.digest_keys`; etcd reads one
keys-only range per topic that several tables name; and a Replica of several tables relists
by keys after a lost history, on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import pytest

import dfdb
from dfdb import Action, NbApi, Replica, SyncMode, revision_of
from dfdb.drivers.etcd import EtcdDriver
from dfdb.testing.faults import FaultyDriver


class Host(dfdb.NbModel, table="dkm_host"):
    name: str = ""


class Link(dfdb.NbModel, table="dkm_link"):
    name: str = ""


class Rule(dfdb.NbModel, table="dkm_rule"):
    name: str = ""


class Other(dfdb.NbModel, table="dkm_other"):
    """A table in the same topics that no scope asks for."""

    name: str = ""


WAIT = 15

SCOPES: dict[str, Collection[str | None] | None] = {
    "dkm_host": {"t", "u", None},  # topics shared with the link table, and topic-less ones
    "dkm_link": {"t", "u", "w"},  # "w": a topic only this table names
    "dkm_rule": None,  # the whole table
    "dkm_none": {"t"},  # a table with no entry at all
}


async def _fill(nb: NbApi) -> None:
    await nb.create_many([Host(id=f"h{i}", topic=t) for i, t in enumerate(["t", "t", "u", "v", None, None])])
    await nb.create_many([Link(id=f"l{i}", topic=t) for i, t in enumerate(["t", "u", "u", "w", "v", None])])
    await nb.create_many([Rule(id=f"r{i}", topic=t) for i, t in enumerate(["t", "x", None])])
    await nb.create_many([Other(id=f"o{i}", topic=t) for i, t in enumerate(["t", "u", None])])
    await nb.update((await nb.get(Host, "h0")).model_copy(update={"name": "written again"}))
    await nb.delete(Link, "l1")


async def test_the_scopes_read_at_once_are_each_tables_keys(nb: NbApi) -> None:
    await _fill(nb)
    head = revision_of(await nb.get(Host, "h0")) or 0  # written again: one of the last writes
    every = await nb.driver.digest_keys_many(SCOPES)
    assert sorted(every) == sorted(SCOPES)
    for table, topics in SCOPES.items():
        alone = await nb.driver.digest_keys(table, topics, 1, (0,))
        assert every[table].revisions == alone.revisions, table
        assert every[table].revision >= head
        assert every[table].values_read == alone.values_read
    assert set(every["dkm_host"].revisions) == {"h0", "h1", "h2", "h4", "h5"}
    assert set(every["dkm_link"].revisions) == {"l0", "l2", "l3"}
    assert set(every["dkm_rule"].revisions) == {"r0", "r1", "r2"}
    assert every["dkm_none"].revisions == {}
    assert every["dkm_host"].revisions["h0"] == revision_of(await nb.get(Host, "h0"))


async def test_no_scope_reads_nothing(nb: NbApi) -> None:
    assert await nb.driver.digest_keys_many({}) == {}
    assert await nb.driver.digest_many({}, None) == {}


@pytest.mark.parametrize("topics", [None, {"t", "u", None}, {"v"}])
async def test_the_digests_read_at_once_are_each_tables_digest(nb: NbApi, topics: set[str | None] | None) -> None:
    await _fill(nb)
    buckets = {"dkm_host": 4, "dkm_link": 1, "dkm_rule": 2, "dkm_none": 8}
    every = await nb.driver.digest_many(buckets, topics)
    assert sorted(every) == sorted(buckets)
    for table, n in buckets.items():
        alone = await nb.driver.digest(table, topics, n)
        assert (every[table].buckets, every[table].records_read) == (alone.buckets, alone.records_read), table
        assert every[table].values_read == alone.values_read


async def test_etcd_reads_one_range_per_shared_topic_at_one_revision(nb: NbApi) -> None:
    if not isinstance(nb.driver, EtcdDriver):
        pytest.skip("etcd's own reading")
    await _fill(nb)
    every = await nb.driver.digest_keys_many(SCOPES)
    # "t" and "u" shared (2), the host table's topic-less keys, the link table's "w", the
    # rule table's index: 5 ranges, not the 8 of one per table and topic
    assert sum(k.round_trips for k in every.values()) == 5
    assert len({k.revision for k in every.values()}) == 1
    assert sum(k.bytes_read for k in every.values()) > 0
    digests = await nb.driver.digest_many(dict.fromkeys(SCOPES, 4), {"t", "u", None})
    assert sum(d.round_trips for d in digests.values()) == 2 + 4  # the shared topics, each table's topic-less keys


@pytest.mark.parametrize("mode", [SyncMode.FULL, SyncMode.SELECTIVE])
async def test_a_replica_of_several_tables_relists_by_keys(faulty_nb: NbApi, mode: SyncMode) -> None:
    nb = faulty_nb
    await nb.create_many([Host(id=f"h{i:02}", topic="t" if i % 2 else "u") for i in range(40)])
    await nb.create_many([Link(id=f"l{i:02}", topic="t" if i % 2 else "u") for i in range(40)])
    await nb.create_many([Host(id="g", topic=None), Link(id="far", topic="v")])
    topics = {"t", "u"} if mode is SyncMode.SELECTIVE else None
    extra = {"topics": topics, "topicless": [Host]} if topics else {}
    async with Replica(nb, [Host, Link], mode=mode, **extra) as replica:
        events = replica.events()
        driver = nb.driver
        assert isinstance(driver, FaultyDriver)
        driver.drop_next(4)
        await nb.update((await nb.get(Host, "h01")).model_copy(update={"name": "changed"}))
        await nb.delete(Link, "l02")
        await nb.create(Link(id="new", topic="u"))
        await nb.update((await nb.get(Host, "g")).model_copy(update={"name": "changed"}))
        await asyncio.wait_for(_drained(driver), WAIT)
        assert await driver.cut(lose_history=True) == 1
        expected = [
            (Action.UPDATE, "h01"), (Action.DELETE, "l02"), (Action.CREATE, "new"), (Action.UPDATE, "g"),
        ]  # fmt: skip
        got = [await asyncio.wait_for(anext(events), WAIT) for _ in expected]
        assert sorted((e.action, e.id) for e in got) == sorted(expected)
        assert replica.stats().relisted == 3  # the two updated and the one created: no other value
        probe = await nb.create(Host(id="probe", topic="t"))
        await asyncio.wait_for(replica.wait_for(revision_of(probe) or 0), WAIT)
        for model in (Host, Link):
            truth = {o.id: o for o in await nb.get_all(model) if topics is None or o.topic in topics or o.id == "g"}
            assert {o.id: o for o in replica.get_all(model)} == truth
        await events.aclose()


async def _drained(driver: FaultyDriver) -> None:
    while driver._drops[0]:  # each dropped as the stream read it: none left for later
        await asyncio.sleep(0.01)


HOSTILE_TOPICS = ["t", "t_", "t%", "t*", "é", "e\u0301", "t:1", "[x]", "ß", "SS"]
"""Topics whose names are patterns, prefixes or look-alikes of each other's."""


async def test_hostile_topics_shared_by_tables_are_read_apart(nb: NbApi) -> None:
    """Several tables in topics that are prefixes, patterns or look-alikes of one another:
    each table's keys read at once are exactly its own, topic by topic."""
    for i, topic in enumerate(HOSTILE_TOPICS):
        await nb.create_many(
            [Host(id=f"h{i}", topic=topic), Link(id=f"l{i}", topic=topic), Other(id=f"o{i}", topic=topic)]
        )
    for chosen in (HOSTILE_TOPICS, ["t", "é", "SS"], ["t_"]):
        scopes: dict[str, Collection[str | None] | None] = {"dkm_host": set(chosen), "dkm_link": set(chosen)}
        every = await nb.driver.digest_keys_many(scopes)
        wanted = {f"{i}" for i, t in enumerate(HOSTILE_TOPICS) if t in chosen}
        assert set(every["dkm_host"].revisions) == {f"h{i}" for i in wanted}, chosen
        assert set(every["dkm_link"].revisions) == {f"l{i}" for i in wanted}, chosen
