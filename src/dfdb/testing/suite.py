"""The conformance suite: the behaviour every driver and the NbApi promise.

Import it into a test module (``from dfdb.testing.suite import *``) with the plugin
``dfdb.testing.plugin`` enabled; every test runs once per configured URL.
"""

from __future__ import annotations

import anyio.lowlevel  # binds anyio too
import pytest

import dfdb
import dfdb.drivers
from dfdb import Action, ChangeEvent, NbApi, Ref
from dfdb.testing import suite_batches, suite_leases
from dfdb.testing.conformance import (
    ConformanceItem,
    ConformanceLink,
    conformance_test,
    events_until,
    next_event,
    raw_put,
)
from dfdb.testing.suite_batches import *  # noqa: F403
from dfdb.testing.suite_leases import *  # noqa: F403
from dfdb.testing.suite_streams import (
    HOSTILE_ID_WRITERS,
    UNREADABLE_RECORD_WRITERS,
    test_a_watch_resumed_from_an_idle_cursor_loses_nothing,
    test_added_topic_arrives_under_timed_out_reads,
    test_an_idle_cursor_moves_past_changes_outside_the_scope,
    test_cancelled_reads_lose_nothing,
    test_change_record_with_a_refused_id_is_reported_not_delivered,
    test_nb_closed_under_an_open_stream_leaves_nothing,
    test_remove_topics_from_a_running_watch,
    test_reopen_from_the_cursor_loses_nothing,
    test_stream_closed_after_cancelled_reads_leaves_nothing,
    test_stream_closed_by_a_cancelled_consumer_stops_at_once,
    test_unreadable_change_record_yields_a_scoped_resync,
)

__all__ = [
    "HOSTILE_ID_WRITERS",
    "UNREADABLE_RECORD_WRITERS",
    "ConformanceItem",
    "ConformanceLink",
    "test_a_watch_resumed_from_an_idle_cursor_loses_nothing",
    "test_added_topic_arrives_under_timed_out_reads",
    "test_an_idle_cursor_moves_past_changes_outside_the_scope",
    "test_cancelled_reads_lose_nothing",
    "test_change_record_with_a_refused_id_is_reported_not_delivered",
    "test_nb_closed_under_an_open_stream_leaves_nothing",
    "test_remove_topics_from_a_running_watch",
    "test_reopen_from_the_cursor_loses_nothing",
    "test_stream_closed_after_cancelled_reads_leaves_nothing",
    "test_unreadable_change_record_yields_a_scoped_resync",
    "test_add_topics_to_a_running_watch",
    "test_bad_cursor_is_refused",
    "test_bad_ids_are_refused",
    "test_caught_up_watcher_gets_no_resync",
    "test_closed_api_refuses_calls",
    "test_concurrent_read_update_loops_lose_nothing",
    "test_convergence",
    "test_corrupt_value_is_contained",
    "test_create_and_get",
    "test_create_existing_raises",
    "test_create_many_and_update_many_report_per_item",
    "test_delete",
    "test_empty_and_unknown_tables",
    "test_foreign_cursor_yields_resync",
    "test_gap_free_list_then_watch_with_racing_writes",
    "test_get_all_by_topic",
    "test_multi_table_watch",
    "test_patch",
    "test_per_key_order",
    "test_resume_from_stream_cursor",
    "test_resync_when_history_is_gone",
    "test_stale_copy_after_recreate_conflicts",
    "test_tables_lists_every_stored_table",
    "test_stream_cancelled_mid_iteration_cleans_up",
    "test_stream_closed_by_a_cancelled_consumer_stops_at_once",
    "test_topic_filter",
    "test_topic_is_fixed",
    "test_unique_keys_under_concurrency",
    "test_update_checks_version",
    "test_watch_delivers_create_update_delete",
    "test_watch_sees_every_create_of_a_batch",
    *suite_leases.__all__,
    *suite_batches.__all__,
]

Item = ConformanceItem
Link = ConformanceLink


# --------------------------------------------------------------------- CRUD


@conformance_test
async def test_create_and_get(nb: NbApi) -> None:
    created = await nb.create(Item(id="a", topic="t1", n=5))
    assert created.version == 1
    assert (created.id, created.topic, created.n) == ("a", "t1", 5)
    got = await nb.get(Item, "a")
    assert got == created
    assert got.model_dump() == {"id": "a", "topic": "t1", "version": 1, "n": 5, "label": ""}


@conformance_test
async def test_create_existing_raises(nb: NbApi) -> None:
    await nb.create(Item(id="a", topic="t1", n=1))
    with pytest.raises(dfdb.AlreadyExistsError):
        await nb.create(Item(id="a", topic="t1", n=2))
    with pytest.raises(dfdb.AlreadyExistsError):
        await nb.create(Item(id="a", topic="t2", n=3))
    assert (await nb.get(Item, "a")).n == 1


@conformance_test
async def test_update_checks_version(nb: NbApi) -> None:
    v1 = await nb.create(Item(id="a", topic="t1"))
    v2 = await nb.update(v1.model_copy(update={"n": 2}))
    assert (v2.version, v2.n) == (2, 2)
    with pytest.raises(dfdb.ConflictError):
        await nb.update(v1.model_copy(update={"n": 3}))
    # a hand-built object is checked by its version
    v3 = await nb.update(Item(id="a", topic="t1", version=2, n=4))
    assert (v3.version, v3.n) == (3, 4)
    with pytest.raises(dfdb.ConflictError):
        await nb.update(Item(id="a", topic="t1", version=2, n=5))
    with pytest.raises(dfdb.NotFoundError):
        await nb.update(Item(id="missing", topic="t1", version=1))
    assert (await nb.get(Item, "a")).n == 4


@conformance_test
async def test_stale_copy_after_recreate_conflicts(nb: NbApi) -> None:
    old = await nb.create(Item(id="a", topic="t1", n=1))
    await nb.delete(Item, "a")
    await nb.create(Item(id="a", topic="t1", n=2))
    with pytest.raises(dfdb.ConflictError):
        await nb.update(old.model_copy(update={"n": 9}))
    assert (await nb.get(Item, "a")).n == 2
    await nb.delete(Item, "a")
    await nb.create(Item(id="a", topic=None, n=3))  # created again under another topic: still stale
    with pytest.raises(dfdb.ConflictError):
        await nb.update(old.model_copy(update={"n": 9}))
    assert (await nb.get(Item, "a")).n == 3


@conformance_test
async def test_delete(nb: NbApi) -> None:
    await nb.create(Item(id="a", topic="t1"))
    await nb.delete(Item, "a")
    with pytest.raises(dfdb.NotFoundError):
        await nb.get(Item, "a")
    with pytest.raises(dfdb.NotFoundError):
        await nb.delete(Item, "a")
    assert await nb.get_all(Item) == []


@conformance_test
async def test_empty_and_unknown_tables(nb: NbApi) -> None:
    assert await nb.get_all(Item) == []
    assert await nb.get_all(Item, topic="nobody") == []
    listing = await nb.list(Link)
    assert listing.items == []
    assert isinstance(listing.cursor, str) and listing.cursor


@conformance_test
async def test_tables_lists_every_stored_table(nb: NbApi) -> None:
    """``tables()`` names every table holding an entry, registered model or not, sorted."""
    assert await nb.driver.tables() == []
    await nb.create(Item(id="a", topic="t1"))
    await raw_put(nb, "zz_raw", "r1", "t2", b"opaque")
    await raw_put(nb, "aa_raw", "r2", None, b"opaque")
    assert await nb.driver.tables() == sorted(["aa_raw", Item.__table__, "zz_raw"])
    await nb.driver.delete("aa_raw", "r2")
    await nb.delete(Item, "a")
    assert await nb.driver.tables() == ["zz_raw"]


@conformance_test
async def test_topic_is_fixed(nb: NbApi) -> None:
    item = await nb.create(Item(id="a", topic="t1"))
    with pytest.raises(ValueError, match="topic"):
        await nb.update(item.model_copy(update={"topic": "t2"}))
    with pytest.raises(ValueError, match="topic"):
        await nb.patch(Item, "a", topic="t2")
    assert (await nb.get(Item, "a")).topic == "t1"


@pytest.mark.parametrize("bad", ["", "a/b", ".", "..", "x" * 256, "tab\there", "nl\n", "\x00"])
@conformance_test
async def test_bad_ids_are_refused(nb: NbApi, bad: str) -> None:
    with pytest.raises(ValueError):
        await nb.create(Item(id=bad, topic="t1"))
    with pytest.raises(ValueError):
        await nb.create(Item(id="ok", topic=bad))
    with pytest.raises(ValueError):
        await nb.get(Item, bad)
    assert await nb.get_all(Item) == []


@conformance_test
async def test_get_all_by_topic(nb: NbApi) -> None:
    for i in range(6):
        await nb.create(Item(id=f"i{i}", topic=f"t{i % 2}", n=i))
    await nb.create(Item(id="global", n=99))
    assert [o.id for o in await nb.get_all(Item, topic="t0")] == ["i0", "i2", "i4"]
    assert [o.id for o in await nb.get_all(Item, topic="t1")] == ["i1", "i3", "i5"]
    assert len(await nb.get_all(Item)) == 7


@conformance_test
async def test_patch(nb: NbApi) -> None:
    await nb.create(Item(id="a", topic="t1", n=1, label="x"))
    patched = await nb.patch(Item, "a", n=2)
    assert (patched.version, patched.n, patched.label) == (2, 2, "x")
    with pytest.raises(ValueError):
        await nb.patch(Item, "a", n="not a number")
    with pytest.raises(dfdb.NotFoundError):
        await nb.patch(Item, "missing", n=1)
    assert (await nb.get(Item, "a")).n == 2


@conformance_test
async def test_concurrent_read_update_loops_lose_nothing(nb: NbApi) -> None:
    await nb.create(Item(id="counter", topic="t1"))
    tasks, rounds = 8, 25
    conflicts = 0

    async def worker() -> None:
        nonlocal conflicts
        for _ in range(rounds):
            while True:
                current = await nb.get(Item, "counter")
                await anyio.lowlevel.checkpoint()  # let other writers interleave
                try:
                    await nb.update(current.model_copy(update={"n": current.n + 1}))
                    break
                except dfdb.ConflictError:
                    conflicts += 1

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(worker)
    final = await nb.get(Item, "counter")
    assert final.n == tasks * rounds
    assert final.version == tasks * rounds + 1
    assert conflicts > 0, "the writers never overlapped; the test proved nothing"


@conformance_test
async def test_unique_keys_under_concurrency(nb: NbApi) -> None:
    keys: list[int] = []

    async def allocate() -> None:
        keys.append(await nb.allocate_unique_key(Item))

    async with anyio.create_task_group() as tg:
        for _ in range(300):
            tg.start_soon(allocate)
    assert len(set(keys)) == 300
    assert all(isinstance(k, int) and k > 0 for k in keys)


@conformance_test
async def test_create_many_and_update_many_report_per_item(nb: NbApi) -> None:
    await nb.create(Item(id="b", topic="t1"))
    fresh = [Item(id=f"k{i}", topic="t1", n=i) for i in range(300)]
    results = await nb.create_many([*fresh[:100], Item(id="b", topic="t1"), *fresh[100:], Item(id="b", topic="t2")])
    assert isinstance(results[100], dfdb.AlreadyExistsError) and isinstance(results[301], dfdb.AlreadyExistsError)
    results = results[:100] + results[101:301]  # a refused write in the middle of a batch stops nothing else
    assert [r.id for r in results if isinstance(r, Item)] == [f"k{i}" for i in range(300)]
    assert len(await nb.get_all(Item, "t1")) == 301 and await nb.get_all(Item, "t2") == []
    stale = Item(id="k1", topic="t1", version=7)
    changed = [r.model_copy(update={"n": -1}) for r in results[:3] if isinstance(r, Item)]
    updated = await nb.update_many([*changed, stale])
    assert [u.version if isinstance(u, Item) else type(u) for u in updated] == [2, 2, 2, dfdb.ConflictError]
    assert (await nb.get(Item, "k2")).n == -1


@conformance_test
async def test_closed_api_refuses_calls(dfdb_fresh_url: str) -> None:
    api = dfdb.connect(dfdb_fresh_url)
    with pytest.raises(dfdb.StreamClosedError):
        await api.get(Item, "a")
    async with api:
        await api.create(Item(id="a"))
    with pytest.raises(dfdb.StreamClosedError):
        await api.get(Item, "a")
    await api.aclose()  # idempotent


# --------------------------------------------------------------------- streams


@conformance_test
async def test_watch_delivers_create_update_delete(nb: NbApi) -> None:
    async with nb.watch(Item) as stream:
        created = await nb.create(Item(id="a", topic="t1", n=1))
        ev = await next_event(stream)
        assert (ev.action, ev.model, ev.id, ev.topic, ev.obj) == (Action.CREATE, Item, "a", "t1", created)
        updated = await nb.update(created.model_copy(update={"n": 2}))
        ev2 = await next_event(stream)
        assert (ev2.action, ev2.obj) == (Action.UPDATE, updated)
        assert ev2.revision > ev.revision
        await nb.delete(Item, "a")
        ev3 = await next_event(stream)
        assert (ev3.action, ev3.id, ev3.topic) == (Action.DELETE, "a", "t1")
        assert ev3.obj is None or ev3.obj == updated
        assert ev3.revision > ev2.revision
        assert stream.cursor == ev3.cursor


@pytest.mark.dfdb_exact
@conformance_test
async def test_per_key_order(exact_nb: NbApi) -> None:
    nb = exact_nb
    count = 300
    async with nb.watch(Item) as stream:
        obj = await nb.create(Item(id="k", topic="t1"))
        for i in range(count - 1):
            obj = await nb.update(obj.model_copy(update={"n": i}))
        seen: list[ChangeEvent] = []
        async for ev in events_until(stream, lambda: len(seen) >= count):
            seen.append(ev)  # noqa: PERF401  (the condition reads the list as it grows)
    assert [ev.obj.version for ev in seen if ev.obj] == list(range(1, count + 1))
    revisions = [ev.revision for ev in seen]
    assert revisions == sorted(set(revisions))


@pytest.mark.dfdb_exact
@conformance_test
async def test_gap_free_list_then_watch_with_racing_writes(exact_nb: NbApi) -> None:
    nb = exact_nb
    keys, total = 50, 2500
    halfway, finished = anyio.Event(), anyio.Event()

    async def writer() -> None:
        objs: dict[str, Item] = {}
        for n in range(total):
            key = f"k{n % keys}"
            if key in objs:
                objs[key] = await nb.update(objs[key].model_copy(update={"n": n}))
            else:
                objs[key] = await nb.create(Item(id=key, topic=f"t{n % 3}", n=n))
            if n == total // 5:
                halfway.set()
            await anyio.lowlevel.checkpoint()  # race the list and the watch below
        finished.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await halfway.wait()
        listing = await nb.list(Item)
        assert not finished.is_set(), "the writer finished before the list; the test proved nothing"
        seen = {o.id: [o.version] for o in listing.items}
        async with nb.watch(Item, since=listing.cursor) as stream:
            await finished.wait()
            final = {o.id: o.version for o in await nb.get_all(Item)}
            async for ev in events_until(stream, lambda: all(seen.get(k, [0])[-1] >= v for k, v in final.items())):
                assert ev.action in (Action.CREATE, Action.UPDATE), ev
                assert ev.obj is not None
                seen.setdefault(ev.id, []).append(ev.obj.version)
    for key, versions in seen.items():
        start = versions[0]
        assert versions == list(range(start, final[key] + 1)), f"{key}: gap or duplicate in {versions}"
        if key not in {o.id for o in listing.items}:
            assert start == 1


@pytest.mark.dfdb_exact
@conformance_test
async def test_resume_from_stream_cursor(exact_nb: NbApi) -> None:
    nb = exact_nb
    async with nb.watch(Item) as stream:
        for i in range(5):
            await nb.create(Item(id=f"a{i}", topic="t1"))
        first = [await next_event(stream) for _ in range(5)]
        cursor = stream.cursor
    assert [ev.id for ev in first] == [f"a{i}" for i in range(5)]
    for i in range(5, 40):
        await nb.create(Item(id=f"a{i}", topic="t1"))
    await nb.delete(Item, "a0")
    async with nb.watch(Item, since=cursor) as resumed:
        rest = [await next_event(resumed) for _ in range(36)]
        await nb.create(Item(id="after", topic="t1"))
        last = await next_event(resumed)
    assert [ev.id for ev in rest] == [f"a{i}" for i in range(5, 40)] + ["a0"]
    assert rest[-1].action == Action.DELETE
    assert (last.action, last.id) == (Action.CREATE, "after")


@pytest.mark.dfdb_exact
@conformance_test
async def test_watch_sees_every_create_of_a_batch(exact_nb: NbApi) -> None:
    """Live, from a cursor taken before the batch, and resumed from a cursor taken halfway
    through it (a driver may give a whole batch one revision)."""
    nb = exact_nb
    await nb.create(Item(id="before", topic="t1"))
    cursor = (await nb.list(Item)).cursor
    batch = [Item(id=f"b{i:02d}", topic=f"t{i % 2}", n=i) for i in range(80)]
    wanted = {o.id for o in batch} | {"after"}

    async def read(stream: dfdb.ChangeStream, seen: list[str], enough: int | None = None) -> None:
        done = (lambda: len(seen) >= enough) if enough else (lambda: wanted <= set(seen))
        async for ev in events_until(stream, done):
            seen.append(ev.id)  # noqa: PERF401  (the condition reads the list as it grows)

    async with nb.watch(Item) as live, nb.watch(Item, since=cursor) as resumed:
        assert all(isinstance(r, Item) for r in await nb.create_many(batch))
        await nb.create(Item(id="after", topic="t1"))
        for stream in (live, resumed):
            seen: list[str] = []
            await read(stream, seen)
            assert sorted(seen) == sorted(wanted), f"missing {wanted - set(seen)}, repeated {len(seen) - len(wanted)}"
    halfway: list[str] = []
    async with nb.watch(Item, since=cursor) as stream:
        await read(stream, halfway, 40)
        cursor = stream.cursor
    async with nb.watch(Item, since=cursor) as stream:
        await read(stream, halfway)  # a resumed stream may repeat a few events
    assert wanted <= set(halfway), f"missing after resuming halfway: {wanted - set(halfway)}"


@pytest.mark.dfdb_exact
@conformance_test
async def test_resync_when_history_is_gone(exact_nb: NbApi) -> None:
    nb = exact_nb
    async with nb.watch(Item) as stream:
        await nb.create(Item(id="a", topic="t1"))
        await next_event(stream)
        cursor = stream.cursor
    for i in range(20):
        await nb.create(Item(id=f"b{i}", topic="t1"))
    await nb.driver.compact()
    async with nb.watch(Item, since=cursor) as resumed:
        ev = await next_event(resumed)
        assert ev.action == Action.RESYNC
        assert ev.model is None or ev.model is Item
        # after reconciling, the stream goes on from the event's cursor
        listing = await nb.list(Item)
        assert len(listing.items) == 21
        await nb.create(Item(id="later", topic="t1"))
        nxt = await next_event(resumed)
        assert (nxt.action, nxt.id) == (Action.CREATE, "later")
        assert nxt.revision > ev.revision


@pytest.mark.dfdb_exact
@conformance_test
async def test_caught_up_watcher_gets_no_resync(exact_nb: NbApi) -> None:
    nb = exact_nb
    async with nb.watch(Item) as stream:
        await nb.create(Item(id="a", topic="t1"))
        assert (await next_event(stream)).action == Action.CREATE
        await nb.driver.compact()
        await nb.create(Item(id="b", topic="t1"))
        ev = await next_event(stream)
        assert (ev.action, ev.id) == (Action.CREATE, "b")


@conformance_test
async def test_foreign_cursor_yields_resync(nb: NbApi) -> None:
    await nb.create(Item(id="a", topic="t1"))
    foreign = "another-backend@1"
    async with nb.watch(Item, since=foreign) as stream:
        ev = await next_event(stream)
        assert ev.action == Action.RESYNC
        await nb.create(Item(id="b", topic="t1"))
        ev2 = await next_event(stream)
        assert (ev2.action, ev2.id) == (Action.CREATE, "b")


@conformance_test
async def test_bad_cursor_is_refused(nb: NbApi) -> None:
    with pytest.raises(ValueError, match="cursor"):
        nb.watch(Item, since="not a cursor")


@conformance_test
async def test_topic_filter(nb: NbApi) -> None:
    async with nb.watch(Item, topics={"t1"}) as t1, nb.watch(Item, topics={None}) as glob:
        await nb.create(Item(id="x", topic="t2"))
        await nb.create(Item(id="g", topic=None))
        await nb.create(Item(id="y", topic="t1"))
        ev = await next_event(t1)
        assert (ev.id, ev.topic) == ("y", "t1")
        ev = await next_event(glob)
        assert (ev.id, ev.topic) == ("g", None)
        await nb.delete(Item, "x")
        await nb.delete(Item, "y")
        ev = await next_event(t1)
        assert (ev.action, ev.id) == (Action.DELETE, "y")


@conformance_test
async def test_add_topics_to_a_running_watch(nb: NbApi) -> None:
    async with nb.watch(Item, topics={"t1"}) as stream:
        await nb.create(Item(id="a", topic="t2"))
        listing = await nb.list(Item, topic="t2")
        assert [o.id for o in listing.items] == ["a"]
        await nb.create(Item(id="b", topic="t2"))  # after the listing, before the topic is added
        await nb.create(Item(id="c", topic="t1"))
        await nb.create(Item(id="x", topic="t3"))
        await stream.add_topics({"t2"}, since=listing.cursor)
        await nb.create(Item(id="d", topic="t2"))
        seen: list[str] = []
        async for ev in events_until(stream, lambda: {"b", "c", "d"} <= set(seen)):
            seen.append(ev.id)  # noqa: PERF401  (the condition reads the list as it grows)
        assert "x" not in seen
        if nb.exact:
            assert sorted(seen) == ["b", "c", "d"], seen
            assert seen.index("b") < seen.index("d")
    async with nb.watch(Item) as everything:
        await everything.add_topics({"t9"}, since=listing.cursor)  # a watch of every topic ignores it
        with pytest.raises(ValueError, match="another backend"):
            async with nb.watch(Item, topics={"t1"}) as other:
                await other.add_topics({"t2"}, since="elsewhere@1")


@conformance_test
async def test_multi_table_watch(nb: NbApi) -> None:
    async with nb.watch([Item, Link]) as stream:
        item = await nb.create(Item(id="i", topic="t1"))
        link = await nb.create(Link(id="l", topic="t1", item=item))
        got = [await next_event(stream), await next_event(stream)]
    assert {(ev.model, ev.id) for ev in got} == {(Item, "i"), (Link, "l")}
    assert link.item == "i" and isinstance(link.item, Ref) and link.item.target is Item
    ev_link = next(ev for ev in got if ev.model is Link)
    assert isinstance(ev_link.obj, Link) and ev_link.obj.item == "i"


@conformance_test
async def test_corrupt_value_is_contained(nb: NbApi, caplog: pytest.LogCaptureFixture) -> None:
    table = Item.__table__
    async with nb.watch(Item) as stream:
        await raw_put(nb, table, "bad", "t1", b'{"id": "bad", "topic": "t1", "n": "many"}')
        await raw_put(nb, table, "junk", "t1", b"\xff not json")
        good = await nb.create(Item(id="good", topic="t1"))
        ev = await next_event(stream)
        assert (ev.id, ev.obj) == ("good", good)
        assert "bad" in caplog.text and table in caplog.text
    with pytest.raises(dfdb.CorruptObjectError) as info:
        await nb.get(Item, "bad")
    assert (info.value.table, info.value.id) == (table, "bad")
    assert table in str(info.value) and "bad" in str(info.value)
    with pytest.raises(dfdb.CorruptObjectError):
        await nb.get(Item, "junk")
    assert [o.id for o in await nb.get_all(Item)] == ["good"]


@conformance_test
async def test_convergence(nb: NbApi) -> None:
    view: dict[str, Item] = {}
    async with nb.watch(Item) as stream:
        objs: dict[str, Item] = {}
        for n in range(300):
            key = f"k{n % 17}"
            if key in objs and n % 5 == 0:
                await nb.delete(Item, key)
                del objs[key]
            elif key in objs:
                objs[key] = await nb.update(objs[key].model_copy(update={"n": n}))
            else:
                objs[key] = await nb.create(Item(id=key, topic="t1", n=n))
        expected = {o.id: o for o in await nb.get_all(Item)}
        assert expected == objs
        async for ev in events_until(stream, lambda: view == expected):
            if ev.action == Action.DELETE:
                view.pop(ev.id, None)
            elif ev.obj is not None:
                assert isinstance(ev.obj, Item)
                view[ev.id] = ev.obj


@conformance_test
async def test_stream_cancelled_mid_iteration_cleans_up(nb: NbApi) -> None:
    started = anyio.Event()
    cancelled: list[bool] = []

    async def consume() -> None:
        async with nb.watch(Item) as stream:
            started.set()
            try:
                async for _ in stream:
                    pass
            except anyio.get_cancelled_exc_class():
                cancelled.append(True)
                raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await started.wait()
        await nb.create(Item(id="a", topic="t1"))
        tg.cancel_scope.cancel()
    assert cancelled == [True]
