"""Conformance tests of change streams: cancelled reads, scope changes, unreadable records,
idle cursors.

Part of :mod:`dfdb.testing.suite`, which exports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest
import sniffio

import dfdb
from dfdb import Action, ChangeEvent, ChangeStream, NbApi
from dfdb.events import parse_cursor
from dfdb.testing.conformance import (
    WAIT,
    ConformanceItem,
    ConformanceLink,
    conformance_test,
    events_until,
    next_event,
)
from dfdb.testing.leaks import ResourceSnapshot

__all__ = [
    "HOSTILE_ID_WRITERS",
    "UNREADABLE_RECORD_WRITERS",
    "test_a_watch_resumed_from_an_idle_cursor_loses_nothing",
    "test_an_idle_cursor_moves_past_changes_outside_the_scope",
    "test_added_topic_arrives_under_timed_out_reads",
    "test_change_record_with_a_refused_id_is_reported_not_delivered",
    "test_cancelled_reads_lose_nothing",
    "test_nb_closed_under_an_open_stream_leaves_nothing",
    "test_remove_topics_from_a_running_watch",
    "test_reopen_from_the_cursor_loses_nothing",
    "test_stream_closed_after_cancelled_reads_leaves_nothing",
    "test_stream_closed_by_a_cancelled_consumer_stops_at_once",
    "test_unreadable_change_record_yields_a_scoped_resync",
]

Item = ConformanceItem
Link = ConformanceLink


# --------------------------------------------------------------------- cancellation


async def _read_within(stream: ChangeStream, seconds: float) -> ChangeEvent:
    """The stream's next event, or ``TimeoutError`` after ``seconds``: under asyncio with
    ``asyncio.wait_for``, as asyncio code times out a read; elsewhere with a cancel scope."""
    if sniffio.current_async_library() == "asyncio":
        return await asyncio.wait_for(anext(stream), seconds)
    with anyio.fail_after(seconds):
        return await anext(stream)


async def _timed_out_reads(
    stream: ChangeStream, seen: list[ChangeEvent], stop: anyio.Event, timeouts: list[int]
) -> None:
    """Read with a 0.3 ms timeout until ``stop`` is set; counts the reads that timed out in ``timeouts[0]``."""
    while not stop.is_set():
        try:
            seen.append(await _read_within(stream, 0.0003))
        except TimeoutError:
            timeouts[0] += 1


@conformance_test
async def test_cancelled_reads_lose_nothing(nb: NbApi) -> None:
    count = 300
    async with nb.watch(Item) as stream:
        seen: list[ChangeEvent] = []
        stop, counted = anyio.Event(), [0]
        async with anyio.create_task_group() as tg:
            tg.start_soon(_timed_out_reads, stream, seen, stop, counted)
            for i in range(count):
                await nb.create(Item(id=f"i{i:03d}", topic="t1"))
                if i % 10 == 0:
                    await anyio.sleep(0.001 if i % 50 else 0.01)  # let the reader catch up and time out waiting
            stop.set()
        timeouts = counted[0]
        async for ev in events_until(stream, lambda: len(seen) >= count, within=5):
            seen.append(ev)  # noqa: PERF401  (the condition reads the list as it grows)
        assert timeouts > 0, "no read timed out; the test proved nothing"
        ids = [ev.id for ev in seen]
        assert ids == [f"i{i:03d}" for i in range(count)], f"{len(ids)} events, {len(set(ids))} distinct"  # in order
        assert [ev.action for ev in seen] == [Action.CREATE] * count
        assert stream.reconnects == 0, f"the stream reconnected {stream.reconnects} times"


@conformance_test
async def test_added_topic_arrives_under_timed_out_reads(nb: NbApi) -> None:
    """A topic added from a cursor, read with a time-out shorter than a backend may take to send
    that topic's backlog: the change made after the cursor arrives, and no read reconnected."""
    async with nb.watch(Item, topics={"t1"}) as stream:
        listing = await nb.list(Item, topic="t2")
        await nb.create(Item(id="b", topic="t2"))  # after the cursor, before the topic is added
        await stream.add_topics({"t2"}, since=listing.cursor)
        await nb.create(Item(id="c", topic="t1"))
        seen: list[ChangeEvent] = []
        with anyio.fail_after(WAIT):
            while not {"b", "c"} <= {ev.id for ev in seen}:
                with contextlib.suppress(TimeoutError):
                    seen.append(await _read_within(stream, 0.02))
        assert sorted((ev.action, ev.id) for ev in seen) == [(Action.CREATE, "b"), (Action.CREATE, "c")]
        assert stream.reconnects == 0, f"the stream reconnected {stream.reconnects} times"


@conformance_test
async def test_stream_closed_after_cancelled_reads_leaves_nothing(nb: NbApi) -> None:
    # tasks and threads here; the NbApi's own connections (a pool may grow) are checked when it closes
    baseline = ResourceSnapshot.take()
    async with nb.watch(Item) as stream:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_timed_out_reads, stream, [], stop, [0])
            for i in range(20):
                await nb.create(Item(id=f"i{i}", topic="t1"))
                await anyio.sleep(0.001)
            stop.set()
        with contextlib.suppress(TimeoutError):
            await _read_within(stream, 0.0003)
    leaks = [leak for leak in await ResourceSnapshot.wait_clean(baseline) if "file descriptor" not in leak]
    assert not leaks, leaks


@conformance_test
async def test_nb_closed_under_an_open_stream_leaves_nothing(dfdb_fresh_url: str) -> None:
    api = await dfdb.connect(dfdb_fresh_url)
    try:
        stream = api.watch(Item)
        await stream.open()
        await api.create(Item(id="a", topic="t1"))
        with contextlib.suppress(TimeoutError):
            await _read_within(stream, 0.0003)
    finally:
        await api.aclose()
    baseline = ResourceSnapshot.take()
    tasks = [t.get_name() for t in baseline.tasks if t.get_name().startswith("dfdb")]
    await stream.aclose()
    assert tasks == []


# --------------------------------------------------------------------- scope


async def _read_into(stream: ChangeStream, got: list[ChangeEvent]) -> None:
    got.append(await anext(stream))


@pytest.mark.dfdb_exact
@conformance_test
async def test_reopen_from_the_cursor_loses_nothing(exact_nb: NbApi) -> None:
    nb = exact_nb
    async with nb.watch(Item) as stream:
        for i in range(5):
            await nb.create(Item(id=f"a{i}", topic="t1"))
        first = [await next_event(stream) for _ in range(2)]
        read = stream.records_read
        rest: list[ChangeEvent] = []
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_read_into, stream, rest)  # a read waiting while the stream reopens
                await anyio.lowlevel.checkpoint()
                await stream.reopen()
                for i in range(5, 8):
                    await nb.create(Item(id=f"a{i}", topic="t1"))
        rest += [await next_event(stream) for _ in range(5)]
        ids = [ev.id for ev in first + rest]
        assert ids == [f"a{i}" for i in range(8)], ids
        assert stream.records_read >= read
        await nb.create(Item(id="after", topic="t1"))
        assert (await next_event(stream)).id == "after"
    with pytest.raises(dfdb.StreamClosedError):
        await stream.reopen()


@conformance_test
async def test_remove_topics_from_a_running_watch(nb: NbApi) -> None:
    async with nb.watch(Item, topics={"t1", "t2"}) as stream:
        await nb.create(Item(id="a", topic="t2"))
        assert (await next_event(stream)).id == "a"
        waited: list[ChangeEvent] = []
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_read_into, stream, waited)  # a read waiting while the scope narrows
                await anyio.lowlevel.checkpoint()
                await stream.remove_topics({"t2"})
                assert stream.topics == frozenset({"t1"})
                await nb.create(Item(id="gone", topic="t2"))
                await nb.create(Item(id="b", topic="t1"))
        assert [ev.id for ev in waited] == ["b"]
        listing = await nb.list(Item, topic="t2")
        await nb.create(Item(id="c", topic="t2"))
        await stream.add_topics({"t2"}, since=listing.cursor)
        await nb.create(Item(id="d", topic="t2"))
        seen = [(await next_event(stream)).id for _ in range(2)]
        assert seen == ["c", "d"], seen
    async with nb.watch(Item) as everything:
        with pytest.raises(ValueError, match="every topic"):
            await everything.remove_topics({"t1"})


# --------------------------------------------------------------------- unreadable records

UnreadableRecordWriter = Callable[[NbApi, str, str], Awaitable[None]]

UNREADABLE_RECORD_WRITERS: dict[str, UnreadableRecordWriter] = {}
"""For each URL scheme, how to put a change record its driver cannot read into the
backend, as another program could: ``await writer(nb, table, id)``. A third-party
driver adds its own to be held to the unreadable-record test."""


def _writes_unreadable_records(scheme: str) -> Callable[[UnreadableRecordWriter], UnreadableRecordWriter]:
    def register(writer: UnreadableRecordWriter) -> UnreadableRecordWriter:
        UNREADABLE_RECORD_WRITERS[scheme] = writer
        return writer

    return register


@_writes_unreadable_records("memory")
async def _memory_record(nb: NbApi, table: str, id: str) -> None:
    from dfdb.drivers.memory import MemoryDriver

    assert isinstance(nb.driver, MemoryDriver)
    nb.driver.inject_change(table, id, None, "frobnicate", b"{}")


@_writes_unreadable_records("sqlite")
async def _sqlite_record(nb: NbApi, table: str, id: str) -> None:
    with contextlib.closing(sqlite3.connect(nb.url.path, timeout=10)) as db, db:
        db.execute(
            "INSERT INTO dfdb_changelog (tbl, id, topic, action, value, at) VALUES (?, ?, NULL, ?, ?, 0)",
            (table, id, "frobnicate", b"{}"),
        )


@_writes_unreadable_records("redis")
async def _redis_record(nb: NbApi, table: str, id: str) -> None:
    await _redis_append(nb, {"a": "frobnicate", "b": table, "i": id, "p": "", "v": b"{}"}, ("", "/n"))


async def _redis_append(nb: NbApi, fields: dict[str, str | bytes], streams: tuple[str, ...]) -> None:
    """Append one change record (``fields``) at a new revision to the table's streams
    ``P/s/TABLE`` + each of ``streams``, with the raw client."""
    import redis.asyncio as aioredis

    host, port = nb.url.hosts[0]
    prefix = nb.url.option("prefix", "dfdb") or "dfdb"
    client = aioredis.Redis(host=host or "127.0.0.1", port=port or 6379, db=int(nb.url.path or 0))
    try:
        revision = await client.incr(f"{prefix}/rev")
        for suffix in streams:
            await client.xadd(f"{prefix}/s/{fields['b']!s}{suffix}", fields, id=f"{revision}-0")  # type: ignore[arg-type]
    finally:
        await client.aclose()


@_writes_unreadable_records("etcd")
async def _etcd_record(nb: NbApi, table: str, id: str) -> None:
    import grpc
    from aetcd import rpc

    host, port = nb.url.hosts[0]
    prefix = nb.url.path.strip("/") or "dfdb"
    async with grpc.aio.insecure_channel(f"{host or '127.0.0.1'}:{port or 2379}") as channel:
        key = f"{prefix}/d/n/{table}/{id}/extra".encode()  # a data key of the table that does not parse
        await rpc.KVStub(channel).Put(rpc.PutRequest(key=key, value=b"{}"), timeout=10)


@_writes_unreadable_records("zk")
async def _zookeeper_record(nb: NbApi, table: str, id: str) -> None:
    from aiozk import ZKClient

    hosts = ",".join(f"{host or '127.0.0.1'}:{port or 2181}" for host, port in nb.url.hosts)
    log_path = "/" + (nb.url.path.strip("/") or "dfdb") + f"/l/{table}/t/t1"  # topic t1's change log
    client = ZKClient(hosts, session_timeout=10)
    await client.start()
    try:
        bucket = json.loads(await client.get_data(log_path) or b"{}").get("b", 0)
        record = b"frobnicate\n" + id.encode() + b"\n{}"
        await client.create(f"{log_path}/b{bucket:010d}/c", record, sequential=True)
    finally:
        await client.close()


@pytest.mark.dfdb_exact
@conformance_test
async def test_unreadable_change_record_yields_a_scoped_resync(
    exact_nb: NbApi, caplog: pytest.LogCaptureFixture
) -> None:
    nb = exact_nb
    writer = UNREADABLE_RECORD_WRITERS.get(nb.url.scheme)
    if writer is None:
        pytest.skip(f"no way to write an unreadable change record for {nb.url.scheme}://")
    table = Item.__table__
    async with nb.watch([Item, Link]) as stream:
        await nb.create(Item(id="a", topic="t1"))
        await writer(nb, table, "bad")
        await nb.create(Item(id="b", topic="t1"))
        await nb.create(Link(id="l", topic="t1"))
        got = [await next_event(stream) for _ in range(4)]
        summary = [(ev.action, ev.model, ev.id) for ev in got]
        assert summary == [
            (Action.CREATE, Item, "a"),
            (Action.RESYNC, Item, ""),  # scoped to the record's table; the stream goes on
            (Action.CREATE, Item, "b"),
            (Action.CREATE, Link, "l"),
        ], summary
        assert got[0].revision < got[1].revision < got[2].revision
        assert stream.records_malformed == 1, stream.records_malformed
        assert "bad" in caplog.text and table in caplog.text


HOSTILE_ID_WRITERS: dict[str, UnreadableRecordWriter] = {}
"""For each URL scheme, how to put a well-formed ``delete`` record of topic ``t1`` whose id
dfdb refuses (such as ``..``) into the backend's change log, as another program could:
``await writer(nb, table, id)``."""


async def _memory_hostile(nb: NbApi, table: str, id: str) -> None:
    from dfdb.drivers.memory import MemoryDriver

    assert isinstance(nb.driver, MemoryDriver)
    nb.driver.inject_change(table, id, "t1", "delete", b"{}")


async def _sqlite_hostile(nb: NbApi, table: str, id: str) -> None:
    with contextlib.closing(sqlite3.connect(nb.url.path, timeout=10)) as db, db:
        db.execute(
            "INSERT INTO dfdb_changelog (tbl, id, topic, action, value, at) VALUES (?, ?, 't1', 'delete', ?, 0)",
            (table, id, b"{}"),
        )


async def _redis_hostile(nb: NbApi, table: str, id: str) -> None:
    await _redis_append(nb, {"a": "delete", "b": table, "i": id, "p": "t1", "v": b"{}"}, ("", "/t/t1"))


HOSTILE_ID_WRITERS.update(memory=_memory_hostile, sqlite=_sqlite_hostile, redis=_redis_hostile)


@pytest.mark.dfdb_exact
@pytest.mark.parametrize("hostile", ["..", "../../etc/passwd", "a\x00b", "x" * 300])
@conformance_test
async def test_change_record_with_a_refused_id_is_reported_not_delivered(
    exact_nb: NbApi, hostile: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A record naming an id that dfdb refuses never reaches the application as an event
    (a controller may build a path from it): it is an unreadable record, made whole by a
    resync of its table."""
    nb = exact_nb
    writer = HOSTILE_ID_WRITERS.get(nb.url.scheme)
    if writer is None:
        pytest.skip(f"no way to write a change record with a refused id for {nb.url.scheme}://")
    async with nb.watch(Item) as stream:
        await writer(nb, Item.__table__, hostile)
        await nb.create(Item(id="b", topic="t1"))
        got = [await next_event(stream) for _ in range(2)]
        assert [(ev.action, ev.id) for ev in got] == [(Action.RESYNC, ""), (Action.CREATE, "b")]
        assert stream.records_malformed == 1, stream.records_malformed
        assert Item.__table__ in caplog.text


@conformance_test
async def test_stream_closed_by_a_cancelled_consumer_stops_at_once(nb: NbApi) -> None:
    """A consumer cancelled by its task group while it waits in ``async for``: when its
    ``async with nb.watch`` has exited, nothing of the stream is left running (a task
    group's cancellation reaches every await of the closing stream too)."""
    baseline = ResourceSnapshot.take()
    started = anyio.Event()

    async def consume() -> None:
        async with nb.watch(Item) as stream:
            started.set()
            async for _ in stream:
                pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await started.wait()
        await nb.create(Item(id="a", topic="t1"))
        tg.cancel_scope.cancel()
    left = [leak for leak in ResourceSnapshot.take().leaks_since(baseline) if leak.startswith("task")]
    assert not left, f"the closed stream left running: {left}"


# --------------------------------------------------------------------- cursors


async def _cursor_reaches(stream: ChangeStream, revision: int, within: float = WAIT) -> list[ChangeEvent]:
    """Read ``stream`` with short time-outs, as an idle consumer does, until its cursor is at
    ``revision`` or ``within`` seconds passed; the events it yielded meanwhile."""
    got: list[ChangeEvent] = []
    with anyio.move_on_after(within):
        while parse_cursor(stream.cursor)[1] < revision:
            with contextlib.suppress(TimeoutError):
                got.append(await _read_within(stream, 0.1))
    return got


_QUIET_SCOPES: list[set[str | None] | None] = [None, {"t1"}, set()]
"""Scopes that the writes outside them below leave quiet: none, every topic, one topic."""


async def _writes_outside(nb: NbApi, scope: set[str | None] | None, n: int) -> int:
    """Changes that ``scope`` of a watch of ``Item`` does not hold; the revision of the last."""
    last: dfdb.NbModel = await nb.create(Link(id=f"outside{n}", topic="t1"))  # another table
    if scope is not None:
        last = await nb.create(Item(id=f"outside{n}", topic="t2"))  # another topic
    revision = dfdb.revision_of(last)
    assert revision is not None
    return revision


@conformance_test
async def test_an_idle_cursor_moves_past_changes_outside_the_scope(nb: NbApi) -> None:
    """A watch read by an idle consumer while only changes outside its scope happen (other
    tables, other topics; an empty scope holds none) yields nothing, and its cursor moves
    past them: a Replica's ``wait_for`` and a resumed watch need not wait for, or read
    again, what the scope never held. After an event, the cursor is the event's."""
    for n, scope in enumerate(_QUIET_SCOPES):
        async with nb.watch(Item, topics=scope) as stream:
            start = parse_cursor(stream.cursor)[1]
            revision = await _writes_outside(nb, scope, n)
            got = await _cursor_reaches(stream, revision)
            assert not got, f"scope {scope}: events of changes outside it: {got}"
            at = parse_cursor(stream.cursor)[1]
            assert at >= revision, f"scope {scope}: the cursor stayed at {at} (from {start}), below {revision}"
            if scope != set():
                created = await nb.create(Item(id=f"inside{n}", topic="t1"))
                ev = await next_event(stream)
                assert (ev.action, ev.id, ev.revision) == (Action.CREATE, created.id, dfdb.revision_of(created))
                assert stream.cursor == ev.cursor and parse_cursor(ev.cursor)[1] == ev.revision


@pytest.mark.dfdb_exact
@conformance_test
async def test_a_watch_resumed_from_an_idle_cursor_loses_nothing(exact_nb: NbApi) -> None:
    """The cursor an idle watch moved past changes outside its scope is a resume point: a
    watch resumed there (and, for an empty scope, given a topic from there) delivers the
    scope's next change, and nothing before it, with no RESYNC."""
    nb = exact_nb
    for n, scope in enumerate(_QUIET_SCOPES):
        async with nb.watch(Item, topics=scope) as stream:
            revision = await _writes_outside(nb, scope, n)
            await _cursor_reaches(stream, revision)
            cursor = stream.cursor
        created = await nb.create(Item(id=f"inside{n}", topic="t1"))
        async with nb.watch(Item, topics=scope, since=cursor) as resumed:
            if scope == set():
                await resumed.add_topics({"t1"}, since=cursor)
            ev = await next_event(resumed)
            assert (ev.action, ev.id, ev.revision) == (Action.CREATE, created.id, dfdb.revision_of(created)), ev
