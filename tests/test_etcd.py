"""The etcd driver against real etcd: restarts, a 3-member cluster losing its leader or a
hung member, compaction, foreign data, URLs."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
from collections.abc import Iterator

import anyio
import pytest

import dfdb
from dfdb.events import Action, parse_cursor
from dfdb.servers import EtcdServer, free_port
from dfdb.testing.chaos import run_stepped
from watching import Watcher, check_server_run, serve, watchers


class Port(dfdb.NbModel, table="etcd_port"):
    n: int = 0


@pytest.fixture
def single() -> Iterator[EtcdServer]:
    yield from serve(lambda: EtcdServer(1))


@pytest.fixture
def cluster() -> Iterator[EtcdServer]:
    yield from serve(lambda: EtcdServer(3))


async def server_history(server: EtcdServer, last: int, table: str = "etcd_port") -> list[tuple[str, int]]:
    """The server's own record up to revision ``last``: every change of the table's data
    keys, read with a raw aetcd watch from revision 1."""
    import aetcd

    alive = next(i for i, proc in enumerate(server.processes) if proc is not None and proc.poll() is None)
    host, port = "127.0.0.1", server.client_ports[alive]
    pairs: list[tuple[str, int]] = []
    async with aetcd.Client(host, int(port), timeout=5) as client:
        watch = await client.watch_prefix(b"dfdb/d/", start_revision=1)
        try:
            async with asyncio.timeout(30):
                async for event in watch:
                    *_, key_table, key_id = event.kv.key.decode().split("/")
                    if key_table == table:
                        pairs.append((key_id, event.kv.mod_revision))
                    if event.kv.mod_revision >= last:
                        break
        finally:
            await watch.cancel()
    return pairs


async def write_ports(nb: dfdb.NbApi, count: int, at: int, reached: asyncio.Event) -> int:
    """Creates and updates over 50 keys and 4 topics; sets ``reached`` after write ``at``.
    Returns the revision of the last write."""
    live: dict[str, Port] = {}
    for n in range(count):
        key = f"p{n % 50}"
        if key in live:
            live[key] = await nb.update(live[key].model_copy(update={"n": n}))
        else:
            live[key] = await nb.create(Port(id=key, topic=f"t{n % 4}", n=n))
        if n == at:
            reached.set()
    return dfdb.revision_of(live[f"p{(count - 1) % 50}"]) or 0


async def check_watchers(ws: list[Watcher], server: EtcdServer, writes: int, last: int) -> None:
    history = await server_history(server, last)
    assert len(history) == writes
    for w in ws:
        await w.wait_past(history[-1][1])
        assert w.resyncs == 0
        assert w.pairs == history


async def test_restart_of_a_single_member_loses_nothing(single: EtcdServer) -> None:
    async with dfdb.connect(single.url, timeout=30) as nb, watchers(nb, Port, 2) as ws:
        reached = asyncio.Event()

        async def restarter() -> None:
            await reached.wait()
            await asyncio.to_thread(single.restart)  # kill -9, then start with the same data

        last, _ = await asyncio.gather(write_ports(nb, 2000, 700, reached), restarter())
        await check_watchers(ws, single, 2000, last)


async def test_leader_killed_during_writes_and_watches(cluster: EtcdServer) -> None:
    async with dfdb.connect(cluster.url, timeout=30) as nb, watchers(nb, Port, 3) as ws:
        reached = asyncio.Event()

        async def killer() -> None:
            await reached.wait()
            leader = await asyncio.to_thread(cluster.leader)
            cluster.kill(leader)

        # a spurious AlreadyExistsError or ConflictError after the election would raise here
        last, _ = await asyncio.gather(write_ports(nb, 1000, 300, reached), killer())
        await check_watchers(ws, cluster, 1000, last)


async def test_watch_leaves_a_hung_member_within_ten_seconds(cluster: EtcdServer) -> None:
    async with dfdb.connect(cluster.url, timeout=30) as nb, watchers(nb, Port, 1) as ws:
        watcher = ws[0]
        await nb.create(Port(id="before", topic="t"))
        await watcher.wait_past(1)
        serving = [i for i in range(cluster.members) if await asyncio.to_thread(cluster.watchers, i)]
        assert len(serving) == 1, serving  # the stream reads from one member: hang that one
        hung = serving[0]
        cluster.pause(hung)
        try:
            loop = asyncio.get_running_loop()
            paused_at = loop.time()
            created = await nb.create(Port(id="during", topic="t"))  # through another member
            revision = dfdb.revision_of(created)
            assert revision is not None
            await watcher.wait_past(revision, within=10 - (loop.time() - paused_at))
            assert watcher.pairs[-1] == ("during", revision)
        finally:
            cluster.resume(hung)
        assert watcher.resyncs == 0
        assert [p for p, _ in watcher.pairs] == ["before", "during"]


async def test_compaction_resyncs_a_stalled_watcher_only(single: EtcdServer) -> None:
    async with dfdb.connect(single.url, timeout=30) as nb:
        await nb.create(Port(id="q0", topic="quiet"))
        async with nb.watch(Port, topics={"quiet"}) as idle, nb.watch(Port) as stalled:
            quiet_events: asyncio.Queue[dfdb.ChangeEvent] = asyncio.Queue()

            async def consume() -> None:
                async for ev in idle:
                    quiet_events.put_nowait(ev)

            consumer = asyncio.create_task(consume())
            try:
                await nb.create(Port(id="first", topic="busy"))
                assert (await asyncio.wait_for(anext(stalled), 10)).id == "first"
                cursor = stalled.cursor  # this watcher stalls here: it reads nothing more
                last = None
                for n in range(50):
                    last = await nb.create(Port(id=f"b{n}", topic="busy"))
                await nb.delete(Port, "b0")
                revision = dfdb.revision_of(last) or 0
                # progress notifications (every second on the test server) move the idle cursor on
                async with asyncio.timeout(10):
                    while parse_cursor(idle.cursor)[1] < revision:
                        await asyncio.sleep(0.05)
                await nb.driver.compact()
                await asyncio.to_thread(single.restart)  # the idle stream must reconnect
                later = await nb.create(Port(id="q1", topic="quiet"))
                ev = await asyncio.wait_for(quiet_events.get(), 20)
                assert (ev.action, ev.id, ev.revision) == (dfdb.Action.CREATE, "q1", dfdb.revision_of(later))
                assert quiet_events.empty()  # no RESYNC before it
            finally:
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
        async with nb.watch(Port, since=cursor) as resumed:
            ev = await asyncio.wait_for(anext(resumed), 10)
            assert ev.action == dfdb.Action.RESYNC
            listing = await nb.list(Port)
            assert sorted(p.id for p in listing.items) == sorted(
                ["q0", "q1", "first", *(f"b{n}" for n in range(1, 50))]
            )
            await nb.create(Port(id="after", topic="busy"))
            ev = await asyncio.wait_for(anext(resumed), 10)
            assert (ev.action, ev.id) == (dfdb.Action.CREATE, "after")


async def test_foreign_value_is_reported_and_skipped(single: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    endpoint = single.url.split("://")[1]
    async with dfdb.connect(single.url) as nb, nb.watch(Port) as stream:
        await nb.create(Port(id="good", topic="t"))
        assert (await asyncio.wait_for(anext(stream), 10)).id == "good"
        for key, value in [
            ("dfdb/d/t/t/etcd_port/alien", '{"id": "alien", "topic": "t", "n": "many"}'),
            ("dfdb/d/t/t/etcd_port/junk", "not json"),
            ("dfdb/d/odd", "not even a dfdb key"),
        ]:
            await asyncio.to_thread(
                subprocess.run,
                ["etcdctl", "--endpoints", endpoint, "put", key, value],
                check=True, capture_output=True, env={"ETCDCTL_API": "3"},
            )  # fmt: skip
        await nb.create(Port(id="after", topic="t"))
        ev = await asyncio.wait_for(anext(stream), 10)
        assert ev.id == "after"
        assert "alien" in caplog.text and "junk" in caplog.text and "etcd_port" in caplog.text
        assert stream.corrupt == 2
        assert stream.records_malformed == 1 and "dfdb/d/odd" in caplog.text  # reported, belongs to no table
        assert sorted(p.id for p in await nb.get_all(Port)) == ["after", "good"]


def test_password_never_shown() -> None:
    nb = dfdb.connect("etcd://root:hunter2@127.0.0.1:1,127.0.0.1:2/pre")
    assert "hunter2" not in str(nb.url) and "hunter2" not in repr(nb.url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("etcd://127.0.0.1:1?bogus=1", "unknown etcd:// option"),
        ("etcd://user@127.0.0.1:1", "names the user .user. but no password"),
        ("etcd://127.0.0.1:1?timeout=soon", "timeout"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(dfdb.InvalidURL, match=message):
        dfdb.connect(url)


async def test_unreachable_cluster_is_one_clear_error() -> None:
    ports = [free_port(), free_port()]
    url = f"etcd://u:secret@127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
    with pytest.raises(dfdb.BackendUnavailableError, match=r"127\.0\.0\.1") as info:
        async with dfdb.connect(url, timeout=2):
            pass
    assert "secret" not in str(info.value)


async def test_prefix_separates_datasets(single: EtcdServer) -> None:
    async with dfdb.connect(single.url + "/one") as one, dfdb.connect(single.url + "/two") as two:
        await one.create(Port(id="a", topic="t"))
        with pytest.raises(dfdb.NotFoundError):
            await two.get(Port, "a")
        assert await one.driver.identity() != await two.driver.identity()


async def test_authentication(single: EtcdServer) -> None:
    endpoint = single.url.split("://")[1]

    def ctl(*args: str, user: str | None = None) -> None:
        command = ["etcdctl", "--endpoints", endpoint, *args]
        if user:
            command[1:1] = ["--user", user]
        subprocess.run(command, check=True, capture_output=True, env={"ETCDCTL_API": "3"})

    await asyncio.to_thread(ctl, "user", "add", "root:rootpw")
    await asyncio.to_thread(ctl, "auth", "enable")
    try:
        with pytest.raises(dfdb.DriverError) as info:
            async with dfdb.connect(single.url.replace("://", "://root:wrong@"), timeout=3):
                pass
        assert "wrong" not in str(info.value)
        async with dfdb.connect(single.url.replace("://", "://root:rootpw@")) as nb, nb.watch(Port) as stream:
            await nb.create(Port(id="a", topic="t"))
            assert (await asyncio.wait_for(anext(stream), 10)).id == "a"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            await asyncio.to_thread(ctl, "auth", "disable", user="root:rootpw")


async def test_server_run_command_starts_a_cluster() -> None:
    await check_server_run(EtcdServer, "etcd", "etcd", Port, members=3)


async def test_topic_watch_reads_only_its_topics(single: EtcdServer) -> None:
    async with dfdb.connect(single.url) as nb, nb.watch(Port, topics={"t7", "t8"}) as stream:
        for n in range(400):
            await nb.create(Port(id=f"p{n}", topic=f"t{n % 20}"))
        mine = [await asyncio.wait_for(anext(stream), 10) for _ in range(40)]
        assert sorted(ev.id for ev in mine) == sorted(f"p{n}" for n in range(400) if n % 20 in (7, 8))
        assert [ev.revision for ev in mine] == sorted(ev.revision for ev in mine)
        assert stream.records_read == 40
        # the cursor covers every change of both topics: both watches are in sync
        assert parse_cursor(stream.cursor)[1] >= mine[-1].revision


async def test_a_key_that_moved_topic_keeps_its_order_when_a_stream_catches_up(single: EtcdServer) -> None:
    """A stream of two topics resumed from a cursor: each topic's watch catches up on its
    own, and etcd sends a watch's history in batches of at most 1000 revisions, so the
    topic-less watch's history arrives before the end of t0's. A key created in t0,
    deleted, and created again without a topic still arrives in order, every change of it
    (none dropped as an older duplicate of its last one), and each event's cursor is its
    own revision (a stream resumed from it repeats nothing)."""
    # a hold long enough for a loaded machine: the test is about order, not the bound
    async with dfdb.connect(single.url + "/moved?watch_hold=15", timeout=30) as nb:
        async with nb.watch(Port, topics={"t0", None}) as stream:
            start = stream.cursor
        filler = await nb.create_many([Port(id=f"f{n}", topic="t0") for n in range(1000)])
        assert not [r for r in filler if isinstance(r, Exception)]
        first = await nb.create(Port(id="k", topic="t0"))
        await nb.delete(Port, "k")
        again = await nb.create(Port(id="k"))
        async with nb.watch(Port, topics={"t0", None}, since=start) as stream:
            events = []
            async with asyncio.timeout(20):
                while parse_cursor(stream.cursor)[1] < (dfdb.revision_of(again) or 0):
                    with contextlib.suppress(TimeoutError):  # a quiet watch moves on with progress notifications
                        events.append(await asyncio.wait_for(anext(stream), 0.5))
        moved = [(ev.action, ev.revision) for ev in events if ev.id == "k"]
        assert [action for action, _ in moved] == [Action.CREATE, Action.DELETE, Action.CREATE], moved
        assert (moved[0][1], moved[2][1]) == (dfdb.revision_of(first), dfdb.revision_of(again))
        assert [ev.revision for ev in events] == sorted(ev.revision for ev in events)
        assert [parse_cursor(ev.cursor)[1] for ev in events] == [ev.revision for ev in events]


async def test_a_forced_release_resyncs_the_topic_whose_older_changes_come_late(single: EtcdServer) -> None:
    """The scenario above with ``watch_hold`` so short that k's last create (topic-less) is
    returned before t0's watch sends the end of its history: k's older changes in t0 are
    not passed on (they would be dropped silently as older than its last one); a
    ``RESYNC`` of t0 takes their place, and the stream goes on (or, when etcd happened to
    send t0's history first, every change comes in order). (Two batches of fillers:
    etcd sends the topic-less watch's event with t0's first or second batch, in either
    order, and t0's last batch at least one sync round later.)"""
    async with dfdb.connect(single.url + "/forced?watch_hold=0.001", timeout=30) as nb:
        async with nb.watch(Port, topics={"t0", None}) as stream:
            start = stream.cursor
        filler = await nb.create_many([Port(id=f"f{n}", topic="t0") for n in range(2000)])
        assert not [r for r in filler if isinstance(r, Exception)]
        created = await nb.create(Port(id="k", topic="t0"))
        await nb.delete(Port, "k")
        again = await nb.create(Port(id="k"))
        later = await nb.create(Port(id="after", topic="t0"))
        async with nb.watch(Port, topics={"t0", None}, since=start) as stream:
            events = []
            async with asyncio.timeout(20):
                while not events or events[-1].id != "after":
                    with contextlib.suppress(TimeoutError):
                        events.append(await asyncio.wait_for(anext(stream), 0.5))
            source = stream._source
            assert source is not None and getattr(source, "forced_releases", 0) >= 1
        tail = [(ev.action, ev.id, ev.topic, ev.revision) for ev in events if not ev.id.startswith("f")]
        resynced = [
            (Action.CREATE, "k", None, dfdb.revision_of(again)),
            (Action.RESYNC, "", "t0", dfdb.revision_of(again)),
            (Action.CREATE, "after", "t0", dfdb.revision_of(later)),
        ]
        # on a quick machine etcd may send t0's history before the topic-less event even so
        # (the forced release then met other changes): every change, in order, is as good
        in_order = [
            (Action.CREATE, "k", "t0", dfdb.revision_of(created)),
            (Action.DELETE, "k", "t0", (dfdb.revision_of(created) or 0) + 1),
            (Action.CREATE, "k", None, dfdb.revision_of(again)),
            (Action.CREATE, "after", "t0", dfdb.revision_of(later)),
        ]
        assert tail in (resynced, in_order), tail
        assert events[1].model is Port


@pytest.fixture
def rare_progress() -> Iterator[EtcdServer]:
    yield from serve(lambda: EtcdServer(1, progress_interval="60s"))


async def test_a_quiet_topic_holds_the_others_only_watch_hold_seconds(rare_progress: EtcdServer) -> None:
    """etcd sends progress notifications every minute: a stream of a quiet topic and a
    busy one, resumed from a cursor, passes on the busy topic's changes after about
    ``watch_hold`` seconds, not at the quiet watch's first notification."""
    async with dfdb.connect(rare_progress.url + "/quiet?watch_hold=0.5") as nb:
        async with nb.watch(Port, topics={"quiet", "busy"}) as stream:
            start = stream.cursor
        made = [await nb.create(Port(id=f"b{n}", topic="busy")) for n in range(3)]
        async with nb.watch(Port, topics={"quiet", "busy"}, since=start) as stream:
            async with asyncio.timeout(5):
                got = [await anext(stream) for _ in made]
    assert [(ev.id, ev.revision) for ev in got] == [(m.id, dfdb.revision_of(m)) for m in made]


async def test_a_cancelled_write_never_lands_after_the_caller_returned(single: EtcdServer) -> None:
    """A create cancelled by its caller's timeout has happened, or never will: when a read
    right after the cancellation finds nothing, creating the key again succeeds."""
    rng = random.Random(7)
    cancelled = 0
    async with dfdb.connect(single.url + "/late") as nb:
        for i in range(400):
            try:
                await asyncio.wait_for(nb.create(Port(id=f"p{i}", topic="t")), rng.uniform(0, 0.004))
                continue
            except TimeoutError:
                cancelled += 1
            try:
                await nb.get(Port, f"p{i}")
            except dfdb.NotFoundError:
                await nb.create(Port(id=f"p{i}", topic="t"))  # AlreadyExistsError: it landed late
    assert cancelled > 0, "no create was cancelled; the test proved nothing"


@pytest.mark.parametrize("rewritten", ["index", "data"])
async def test_a_value_another_tool_rewrote_is_replaced_by_put(single: EtcdServer, rewritten: str) -> None:
    """One of the two keys holding an object rewritten by another tool (so their revisions
    differ): ``put`` by id still replaces the object."""
    endpoint = single.url.split("://")[1]
    async with dfdb.connect(single.url + "/rw") as nb:
        await nb.create(Port(id="a", topic="t"))
        key, value = {
            "index": ("rw/i/etcd_port/a", 't/t\n{"id": "a", "topic": "t", "n": "many"}'),
            "data": ("rw/d/t/t/etcd_port/a", "not json"),
        }[rewritten]
        await asyncio.to_thread(
            subprocess.run,
            ["etcdctl", "--endpoints", endpoint, "put", key, value],
            check=True, capture_output=True, env={"ETCDCTL_API": "3"},
        )  # fmt: skip
        fixed = await nb.put(Port(id="a", topic="t", n=7))
        assert await nb.get(Port, "a") == fixed and fixed.n == 7


async def test_a_cancelled_add_topics_keeps_the_watch_stream(single: EtcdServer) -> None:
    """``add_topics`` cancelled at each of its await points while another task reads: the
    watch stream goes on (gRPC ends a whole stream when one of its writes is cancelled), and
    adding the topic again delivers the topic's change made after the cursor."""
    async with dfdb.connect(single.url + "/adding") as nb, nb.watch(Port, topics={"t0"}) as stream:
        arrived: dict[str, asyncio.Event] = {}

        async def read() -> None:
            async for ev in stream:
                arrived.setdefault(ev.id, asyncio.Event()).set()

        reader = asyncio.create_task(read())
        try:
            cancelled = 0
            for k in range(1, 4):
                cursor = stream.cursor
                obj = await nb.create(Port(id=f"p{k}", topic=f"x{k}"))
                run = await run_stepped(stream.add_topics({f"x{k}"}, since=cursor), cancel_at=k)
                assert not run.swallowed and run.error is None, run
                cancelled += run.cancelled
                await stream.add_topics({f"x{k}"}, since=cursor)
                await asyncio.wait_for(arrived.setdefault(obj.id, asyncio.Event()).wait(), 10)
            assert cancelled > 0, "no add_topics was cancelled; the test proved nothing"
            assert stream.reconnects == 0, f"the watch stream was dropped {stream.reconnects} times"
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


@pytest.mark.parametrize("repair", ["put", "delete", "put elsewhere"])
async def test_an_index_key_rewritten_to_garbage_is_repairable(single: EtcdServer, repair: str) -> None:
    """An index key another tool rewrote to a value that is not dfdb's (no topic line):
    ``get`` reports it corrupt, ``put`` replaces the object, ``delete`` removes it and its
    data key, and a watcher sees that delete."""
    endpoint = single.url.split("://")[1]
    async with dfdb.connect(single.url + "/gi") as nb, nb.watch(Port) as stream:
        await nb.create(Port(id="a", topic="t"))
        assert (await anext(stream)).id == "a"
        await asyncio.to_thread(
            subprocess.run,
            ["etcdctl", "--endpoints", endpoint, "put", "gi/i/etcd_port/a", "garbage"],
            check=True, capture_output=True, env={"ETCDCTL_API": "3"},
        )  # fmt: skip
        with pytest.raises(dfdb.CorruptObjectError):
            await nb.get(Port, "a")
        if repair == "put":
            fixed = await nb.put(Port(id="a", topic="t", n=7))
            assert await nb.get(Port, "a") == fixed and fixed.n == 7
        elif repair == "put elsewhere":  # the data key says topic t: topics are fixed
            with pytest.raises(ValueError, match="topic 't'"):
                await nb.put(Port(id="a", topic="u", n=7))
        else:
            await nb.delete(Port, "a")
            with pytest.raises(dfdb.NotFoundError):
                await nb.get(Port, "a")
            ev = await asyncio.wait_for(anext(stream), 10)
            assert (ev.action, ev.id, ev.topic) == (dfdb.Action.DELETE, "a", "t")
            assert await nb.get_all(Port) == []
            await nb.create(Port(id="a", topic="u"))  # the id is free again, under any topic


async def test_anyio_timeouts_around_calls_and_reads_end_inside_their_scope(single: EtcdServer) -> None:
    """A cancel scope's own cancellation of an etcd call or poll read ends at the scope: gRPC
    raises a CancelledError of its own when its call is cancelled, which anyio would not take
    for its scope's and let through."""
    rng = random.Random(7)
    async with dfdb.connect(single.url + "?notifications=poll&poll_interval=0.01") as nb:
        await nb.create(Port(id="p", topic="t"))
        async with nb.watch(Port) as stream:
            for i in range(150):
                with anyio.move_on_after(rng.uniform(0, 0.004)):
                    await nb.put(Port(id="p", topic="t", n=i))
                with anyio.move_on_after(rng.uniform(0, 0.004)):
                    await nb.get_all(Port)
                with anyio.move_on_after(rng.uniform(0, 0.004)):
                    await anext(stream)
        assert (await nb.get(Port, "p")).n >= 0  # the connection still works
