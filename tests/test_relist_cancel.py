"""A relist by keys (after a ``RESYNC`` of the dataset held) interrupted at each read it makes
(the keys, each value, the identity): cancelled, or failing with the driver's deadline, or on
a server that stops answering. The Replica serves its old contents meanwhile (never half a
relist), a failed relist is done again until it is done, each change's event comes once, and
a cancellation goes through. On every backend, through the fault-injecting wrapper."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
import pytest

import dfdb
from dfdb import Action, NbApi, Replica, revision_of
from dfdb.drivers import register_driver
from dfdb.errors import BackendTimeoutError
from dfdb.replica.events import ReplicaEvents
from dfdb.replica.pacing import RelistLimiter
from dfdb.replica.relist import FEW
from dfdb.servers import LocalServer
from dfdb.testing.faults import FaultyDriver
from dfdb.testing.plugin import SERVER_PLACEHOLDERS
from topic_resync import TopicResyncDriver

WAIT = 10
READS = ("digest_keys", "get", "identity")
FAILED = "relisting the replica's scope failed"
INJECTED = "failed (injected)"


class Net(dfdb.NbModel, table="rc_net"):
    name: str = ""


Change = tuple[Action, str]


async def _until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not check():
            await asyncio.sleep(0.01)


def _driver(nb: NbApi) -> FaultyDriver:
    driver = nb.driver
    assert isinstance(driver, FaultyDriver)
    return driver


def _gave_up(caplog: pytest.LogCaptureFixture, why: str = "") -> bool:
    """Whether a relist failed (with ``why`` in its message) and waits to be done again."""
    return any(FAILED in r.getMessage() and why in r.getMessage() for r in caplog.records)


def _dumps(objs: list[Net]) -> list[dict[str, object]]:
    return sorted((o.model_dump() for o in objs), key=lambda d: str(d["id"]))


async def _fill(nb: NbApi) -> None:
    await nb.create_many([Net(id=f"{kind}{i}", topic="t") for kind in "nd" for i in range(8)])


async def _missed(nb: NbApi, limiter: RelistLimiter, turn: int) -> list[Change]:
    """An update, a delete and a create whose events the stream drops, then the history is
    lost: the Replica's relist by keys waits for its turn (the caller holds the limiter's
    slot). Returns the changes its relist must tell."""
    driver = _driver(nb)
    driver.drop_next(3)
    await nb.patch(Net, "n0", name=f"turn {turn}")
    await nb.delete(Net, f"d{turn}")
    await nb.create(Net(id=f"c{turn}", topic="t"))
    await _until(lambda: driver._drops[0] == 0)  # each dropped as the stream read it
    assert await driver.cut(lose_history=True) == 1
    await _until(lambda: limiter.waiting == 1)
    return [(Action.UPDATE, "n0"), (Action.DELETE, f"d{turn}"), (Action.CREATE, f"c{turn}")]


async def _told(events: ReplicaEvents, expected: list[Change], nb: NbApi, probe: str, topic: str = "t") -> None:
    """The events of ``expected``, each once: after them comes the next write's, and nothing else."""
    got = [await asyncio.wait_for(anext(events), WAIT) for _ in expected]
    assert sorted((e.action, e.id) for e in got) == sorted(expected)
    await nb.create(Net(id=probe, topic=topic))
    ev = await asyncio.wait_for(anext(events), WAIT)
    assert (ev.action, ev.id) == (Action.CREATE, probe)  # no change told twice


async def _reads_of_a_relist(nb: NbApi, limiter: RelistLimiter) -> list[str]:
    """The reads one relist by keys makes, in order (on a Replica of its own)."""
    async with Replica(nb, [Net], relists=limiter, check_interval=None) as replica:
        events = replica.events()
        async with limiter.slot():
            expected = await _missed(nb, limiter, 0)
            trip = _driver(nb).trip(READS, at=1, times=0)  # counts, never trips
        got = [await asyncio.wait_for(anext(events), WAIT) for _ in expected]
        calls = list(trip.calls)
        assert sorted((e.action, e.id) for e in got) == sorted(expected)
        assert replica.stats().relisted == 2  # by keys: the values of the update and the create
        await events.aclose()
    assert calls[0] == "digest_keys" and calls.count("get") == 2 and set(calls) <= set(READS)
    return calls


async def test_a_relist_cancelled_at_each_read_goes_through_and_leaves_the_old_contents(faulty_nb: NbApi) -> None:
    """The Replica closed while its relist waits on each read in turn: the read is cancelled
    and the close returns at once; the Replica still serves the contents it held, with
    nothing of the relist applied nor told; its relist slot is given back."""
    nb = faulty_nb
    await _fill(nb)
    limiter = RelistLimiter(rate=1000, burst=1, jitter=0)
    calls = await _reads_of_a_relist(nb, limiter)
    for turn, _ in enumerate(calls, 1):
        replica = Replica(nb, [Net], relists=limiter, check_interval=None)
        async with replica:
            events = replica.events()
            async with limiter.slot():  # a slot not given back by the last turn's relist: stuck here
                await _missed(nb, limiter, turn)
                before = _dumps(replica.get_all(Net))
                trip = _driver(nb).trip(READS, at=turn)  # the turn-th read hangs
            await asyncio.wait_for(trip.reached.wait(), WAIT)
            assert trip.calls[-1] == calls[turn - 1]
            assert replica.stats().stale and _dumps(replica.get_all(Net)) == before
            with anyio.fail_after(5):
                await replica.aclose()
        assert trip.cancelled == 1  # the cancellation reached the read, and was not swallowed
        assert _dumps(replica.get_all(Net)) == before  # readable, as it was: no half relist
        with anyio.fail_after(5):
            assert [e async for e in events] == []  # nothing told, and the events end
        trip.heal()
    async with Replica(nb, [Net], relists=limiter, check_interval=None) as replica:
        assert _dumps(replica.get_all(Net)) == _dumps(await nb.get_all(Net))


async def test_a_relist_failing_with_the_deadline_at_each_read_is_done_again(
    faulty_nb: NbApi, caplog: pytest.LogCaptureFixture
) -> None:
    """Each read of a relist in turn fails with the driver's deadline until the NbApi gives
    up: the Replica serves its old contents (stale), tries the whole relist again, and once
    the reads succeed tells each change once and equals the database."""
    nb = faulty_nb
    await _fill(nb)
    limiter = RelistLimiter(rate=1000, burst=1, jitter=0)
    calls = await _reads_of_a_relist(nb, limiter)
    timeout = nb.timeout
    async with Replica(nb, [Net], relists=limiter, check_interval=None) as replica:
        events = replica.events()
        for turn, _ in enumerate(calls, 1):
            resyncs = replica.stats().resyncs
            caplog.clear()
            async with limiter.slot():
                expected = await _missed(nb, limiter, turn)
                before = _dumps(replica.get_all(Net))
                trip = _driver(nb).trip(READS, at=turn, error=BackendTimeoutError, times=1_000_000)
                nb.timeout = 0.3
            try:
                await _until(lambda: _gave_up(caplog, INJECTED))  # given up: done again later
                assert trip.calls[turn - 1] == calls[turn - 1]
                stats = replica.stats()
                assert stats.stale and stats.resyncs == resyncs and _dumps(replica.get_all(Net)) == before
            finally:
                nb.timeout = timeout
                trip.heal()
            await _told(events, expected, nb, f"p{turn}")
            assert replica.stats().resyncs == resyncs + 1 and not replica.stats().stale
            assert _dumps(replica.get_all(Net)) == _dumps(await nb.get_all(Net))
        await events.aclose()


def _server(request: pytest.FixtureRequest) -> LocalServer:
    """The session's server of the URL under test (skips a backend without one)."""
    url = request.getfixturevalue("dfdb_url")
    for placeholder, fixture in SERVER_PLACEHOLDERS.items():
        if placeholder in url:
            server = request.getfixturevalue(fixture)
            assert isinstance(server, LocalServer) and len(server.processes) == 1
            return server
    pytest.skip("no server to pause")


async def test_a_relist_on_a_paused_server_converges_once_it_answers_and_closes_at_once(
    faulty_nb: NbApi, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """The server stops answering (SIGSTOP) while a Replica relists: its relist fails and is
    tried again until the server answers (SIGCONT), then the Replica converges; a Replica
    closed while its relist waits on a paused server closes at once."""
    server = _server(request)
    nb = faulty_nb
    await _fill(nb)
    limiter = RelistLimiter(rate=1000, burst=1, jitter=0)
    timeout = nb.timeout
    async with Replica(nb, [Net], relists=limiter, check_interval=None) as replica:
        events = replica.events()
        async with limiter.slot():
            expected = await _missed(nb, limiter, 1)
            before = _dumps(replica.get_all(Net))
            nb.timeout = 0.5
            server.pause()
        try:
            await _until(lambda: _gave_up(caplog))
            assert replica.stats().stale and _dumps(replica.get_all(Net)) == before
        finally:
            server.resume()
        await _told(events, expected, nb, "p1")
        assert _dumps(replica.get_all(Net)) == _dumps(await nb.get_all(Net))
        caplog.clear()
        async with limiter.slot():
            await _missed(nb, limiter, 2)
            before = _dumps(replica.get_all(Net))
            server.pause()
        try:
            await _until(lambda: _gave_up(caplog))
            with anyio.fail_after(2):
                await replica.aclose()
        finally:
            server.resume()
            nb.timeout = timeout
        assert _dumps(replica.get_all(Net)) == before
        with anyio.fail_after(5):
            assert [(e.action, e.id) async for e in events] == []


HOSTILE = [
    "é", "e\u0301", "😀", "a:b", "%2F", "a%b", "_", "*", "[x]", " a b ", "\u2028", "\ufeff", "x" * 255, "\ue000",
    "\ufff0", "@1", "n0@x", "...", "\\", "'", '"', "a\u200bb", "%", "a,b", "{x}", "ß", "SS", "İ", "i̇",
]  # fmt: skip
"""Ids a relist by keys must read back as they are (no "/", control character or lone
surrogate: ids may not hold them)."""
TOPICS = ["t%", "t_", "tx", "t*", "t:1", "é", "e\u0301", "t", "t[]"]


async def test_a_relist_by_keys_reads_hostile_ids_and_topics_back_as_they_are(faulty_nb: NbApi) -> None:
    """Every id and topic changed while the stream was lost, and a few deleted: the relist by
    keys tells each change once and the Replica equals the database for its scope (a topic
    whose name is a pattern of another's does not bring that one's objects)."""
    nb = faulty_nb
    made = await nb.create_many([Net(id=id, topic=TOPICS[i % len(TOPICS)]) for i, id in enumerate(HOSTILE)])
    objs = [o for o in made if isinstance(o, Net)]  # ZooKeeper refuses a few characters in names
    assert len(objs) >= len(HOSTILE) - 3
    await nb.create_many([Net(id=f"q{i}", topic=t) for i, t in enumerate(TOPICS)])
    topics = {"t%", "t_", "é", "t:1"}
    limiter = RelistLimiter(rate=1000, burst=1, jitter=0)
    async with Replica(
        nb, [Net], mode=dfdb.SyncMode.SELECTIVE, topics=topics, relists=limiter, check_interval=None
    ) as replica:
        scope = [o for o in objs if o.topic in topics]
        truth = [o for o in await nb.get_all(Net) if o.topic in topics]
        assert _dumps(replica.get_all(Net)) == _dumps(truth)  # loaded as they are
        events = replica.events()
        driver = _driver(nb)
        changed = objs[::2]
        gone = objs[1::6]
        async with limiter.slot():
            driver.drop_next(len([o for o in changed + gone if o in scope]))  # the stream reads its scope's
            for obj in changed:
                await nb.patch(Net, obj.id, name="changed")
            for obj in gone:
                await nb.delete(Net, obj.id)
            await _until(lambda: driver._drops[0] == 0)
            assert await driver.cut(lose_history=True) == 1
            await _until(lambda: limiter.waiting == 1)
        expected = [(Action.UPDATE, o.id) for o in changed if o in scope]
        expected += [(Action.DELETE, o.id) for o in gone if o in scope]
        await _told(events, expected, nb, "probe", "t_")
        assert replica.stats().relisted <= len(expected) + 1  # by keys
        truth = [o for o in await nb.get_all(Net) if o.topic in topics]
        assert _dumps(replica.get_all(Net)) == _dumps(truth)
        await events.aclose()


@pytest.mark.parametrize("race", ["delete", "recreate", "create-then-delete"])
async def test_a_write_of_the_id_a_relist_is_reading_is_told_once(faulty_nb: NbApi, race: str) -> None:
    """The object a relist by keys reads is written between its keys and its value (held at
    the read): the Replica ends equal to the database, each change told once, and the
    stream's own event of the racing write neither repeats nor undoes the relist's."""
    nb = faulty_nb
    await _fill(nb)
    limiter = RelistLimiter(rate=1000, burst=1, jitter=0)
    async with Replica(nb, [Net], relists=limiter, check_interval=None) as replica:
        events = replica.events()
        async with limiter.slot():
            expected = await _missed(nb, limiter, 1)
            at = 2 if race == "create-then-delete" else 3  # the read of c1, or of n0
            trip = _driver(nb).trip(READS, at=at)
        await asyncio.wait_for(trip.reached.wait(), WAIT)
        assert trip.calls == ["digest_keys", "get", "get"][:at]  # the keys, then c1's value, then n0's
        if race == "delete":
            await nb.delete(Net, "n0")
            expected[0] = (Action.DELETE, "n0")
        elif race == "recreate":
            await nb.delete(Net, "n0")
            await nb.create(Net(id="n0", topic="t", name="again"))
        else:
            await nb.delete(Net, "c1")  # created and deleted while the stream was lost: nothing to tell
            expected.remove((Action.CREATE, "c1"))
        trip.heal()
        await _told(events, expected, nb, "probe")
        assert _dumps(replica.get_all(Net)) == _dumps(await nb.get_all(Net))
        held = replica.get(Net, "n0")
        assert (held and held.name) == {"delete": None, "recreate": "again"}.get(race, "turn 1")
        await events.aclose()


async def test_a_resync_storm_while_topics_come_and_go_tells_every_change_once(faulty_nb: NbApi) -> None:
    """Streams cut with their history lost again and again while topics are added and
    removed and a writer changes every topic: a consumer that applies the Replica's events
    to a copy of its own ends with the Replica's contents (no create of an object it has,
    no update or delete of one it lacks), and both equal the database for the scope."""
    nb = faulty_nb
    topics = [f"s{i}" for i in range(6)]
    await nb.create_many([Net(id=f"{t}-{i}", topic=t) for t in topics for i in range(4)])
    limiter = RelistLimiter(rate=1000, burst=2, jitter=0.01)
    driver = _driver(nb)
    async with Replica(
        nb, [Net], mode=dfdb.SyncMode.SELECTIVE, topics={"s0", "s1"}, relists=limiter, check_interval=None
    ) as replica:
        events = replica.events()
        copy = {o.id: o for o in replica.get_all(Net)}
        wrong: list[str] = []

        async def consume() -> None:
            async for ev in events:
                assert ev.action is not Action.RESYNC
                if ev.action is Action.CREATE:
                    wrong.extend([f"create of {ev.id} held"] if ev.id in copy else [])
                elif ev.id not in copy:
                    wrong.append(f"{ev.action.value} of {ev.id} not held")
                if ev.new is None:
                    copy.pop(ev.id, None)
                else:
                    copy[ev.id] = ev.new  # type: ignore[assignment]

        async def write(turns: int) -> None:
            for n in range(turns):
                t = topics[n % len(topics)]
                await nb.patch(Net, f"{t}-{n % 4}", name=f"w{n}")

        async def storm(turns: int) -> None:
            for _ in range(turns):
                await _until(lambda: bool(driver._open_sources))  # reopened after the last cut
                assert await driver.cut(lose_history=True) >= 1  # two while remove_topic reopens the stream

        async def churn(turns: int) -> None:
            for n in range(turns):
                t = topics[2 + n % 4]
                await (replica.remove_topic(t) if t in replica.topics else replica.add_topic(t))

        async with asyncio.TaskGroup() as tg:
            consumer = tg.create_task(consume())
            await asyncio.gather(write(60), storm(5), churn(12))
            probe = await nb.create(Net(id="probe", topic="s0"))
            await asyncio.wait_for(replica.wait_for(revision_of(probe) or 0), WAIT)
            await _until(lambda: "probe" in copy)
            await events.aclose()
            consumer.cancel()
        assert not wrong
        scope = {None, *replica.topics}
        truth = [o for o in await nb.get_all(Net) if o.topic in scope]
        assert _dumps(replica.get_all(Net)) == _dumps(truth)
        assert _dumps(list(copy.values())) == _dumps(truth)
        assert replica.stats().resyncs >= 1


async def test_a_check_whose_reply_comes_after_a_whole_relist_does_not_bring_a_deleted_object_back(
    faulty_nb: NbApi,
) -> None:
    """A consistency check reads a suspect's value; the reply comes late: meanwhile the
    object was deleted (the Replica applied it) and a whole relist replaced the scope (its
    tombstones with it). The late value is older than the relist: not applied, no event."""
    nb = faulty_nb
    await nb.create_many([Net(id=f"n{i:02}", topic="t") for i in range(40)])
    driver = _driver(nb)
    async with Replica(nb, [Net], check_interval=None, relists=RelistLimiter(rate=1000, jitter=0)) as replica:
        events = replica.events()
        driver.drop_next(1)
        await nb.patch(Net, "n00", name="missed")  # a change the stream loses silently: a check finds it
        await _until(lambda: driver._drops[0] == 0)
        trip = driver.trip(("get",), at=1, late=True)  # the check's read of n00: its reply comes late
        check = asyncio.create_task(replica.check(settle=0.5))
        try:
            await asyncio.wait_for(trip.reached.wait(), WAIT)
            await nb.delete(Net, "n00")
            await _until(lambda: replica.get(Net, "n00") is None)  # the stream's delete, applied
            driver.drop_next(FEW + 2)  # more lost than a relist by keys reads one by one: a whole listing
            for i in range(1, FEW + 3):
                await nb.patch(Net, f"n{i:02}", name="lost")
            await _until(lambda: driver._drops[0] == 0)
            assert await driver.cut(lose_history=True) == 1
            await _until(lambda: replica.stats().resyncs == 1 and not replica.stats().stale)
        finally:
            trip.heal()
        report = await asyncio.wait_for(check, WAIT)
        assert report.repaired == 0
        assert replica.get(Net, "n00") is None
        assert _dumps(replica.get_all(Net)) == _dumps(await nb.get_all(Net))
        told = [await asyncio.wait_for(anext(events), WAIT) for _ in range(FEW + 3)]
        assert sorted((e.action, e.id) for e in told) == sorted(
            [(Action.DELETE, "n00")] + [(Action.UPDATE, f"n{i:02}") for i in range(1, FEW + 3)]
        )
        await _told(events, [], nb, "probe")
        await events.aclose()


async def test_a_reactive_relist_that_fails_part_way_keeps_what_it_held(
    faulty_nb: NbApi, caplog: pytest.LogCaptureFixture
) -> None:
    """A REACTIVE Replica fetches again what it holds after a ``RESYNC``: a read failing part
    way (the driver's deadline, until the NbApi gives up) leaves every held object served
    meanwhile; once the reads succeed it holds them all, fresh, each change told once."""
    nb = faulty_nb
    await _fill(nb)
    limiter = RelistLimiter(rate=1000, burst=1, jitter=0)
    driver = _driver(nb)
    timeout = nb.timeout
    async with Replica(nb, [Net], mode=dfdb.SyncMode.REACTIVE, relists=limiter, check_interval=None) as replica:
        ids = [f"n{i}" for i in range(6)]
        for id in ids:
            assert await replica.fetch(Net, id) is not None
        events = replica.events()
        async with limiter.slot():
            driver.drop_next(1)
            await nb.patch(Net, "n0", name="missed")
            await _until(lambda: driver._drops[0] == 0)
            assert await driver.cut(lose_history=True) == 1
            await _until(lambda: limiter.waiting == 1)
            trip = driver.trip(("get",), at=3, error=BackendTimeoutError, times=1_000_000)
            nb.timeout = 0.3
        try:
            await _until(lambda: _gave_up(caplog, INJECTED))
            assert [id for id in ids if replica.get(Net, id) is None] == []  # served, stale
        finally:
            nb.timeout = timeout
            trip.heal()
        ev = await asyncio.wait_for(anext(events), WAIT)
        assert (ev.action, ev.id) == (Action.UPDATE, "n0")
        await nb.patch(Net, "n1", name="probe")
        ev = await asyncio.wait_for(anext(events), WAIT)
        assert (ev.action, ev.id) == (Action.UPDATE, "n1")  # nothing told twice, nothing dropped
        assert _dumps(replica.get_all(Net)) == _dumps([await nb.get(Net, id) for id in ids])
        await events.aclose()


async def test_a_check_cancelled_at_each_read_changes_nothing_and_the_next_one_repairs(faulty_nb: NbApi) -> None:
    """``check()`` cancelled while it waits on each of its reads (the digest, the keys of
    the differing buckets, the suspect's value): the cancellation goes through, nothing is
    repaired nor told, and the next check repairs the change the stream lost, told once."""
    nb = faulty_nb
    await _fill(nb)
    driver = _driver(nb)
    async with Replica(nb, [Net], check_interval=None) as replica:
        events = replica.events()
        driver.drop_next(1)
        lost = await nb.patch(Net, "n3", name="lost")
        await _until(lambda: driver._drops[0] == 0)
        held = replica.get(Net, "n3")
        reads = ["digest", "digest_keys", "get"]
        for turn, read in enumerate(reads, 1):
            trip = driver.trip(reads, at=turn)
            check = asyncio.create_task(replica.check(settle=0.2))
            await asyncio.wait_for(trip.reached.wait(), WAIT)
            assert trip.calls[-1] == read
            check.cancel()
            with anyio.fail_after(5), pytest.raises(asyncio.CancelledError):
                await check
            assert trip.cancelled == 1 and replica.get(Net, "n3") == held
            trip.heal()
        report = await asyncio.wait_for(replica.check(settle=0.2), WAIT)
        assert report.repaired == 1 and replica.get(Net, "n3") == lost
        ev = await asyncio.wait_for(anext(events), WAIT)
        assert (ev.action, ev.id, ev.new) == (Action.UPDATE, "n3", lost)
        await _told(events, [], nb, "probe")
        await events.aclose()


async def test_closing_the_nbapi_while_a_relist_waits_on_a_read_ends_the_replica_at_once(
    dfdb_leak_check: None, dfdb_fresh_url: str
) -> None:
    """The NbApi closed under a Replica whose relist waits on a read: the close returns at
    once, the Replica stops (its old contents still readable) and closes at once too."""
    scheme, rest = dfdb_fresh_url.split("://", 1)
    nb = await dfdb.connect(f"faulty://{rest}{'&' if '?' in rest else '?'}inner={scheme}")
    if not nb.exact:
        await nb.aclose()
        pytest.skip("snapshot polling promises convergence, not every change")
    limiter = RelistLimiter(rate=1000, burst=1, jitter=0)
    replica = Replica(nb, [Net], relists=limiter, check_interval=None)
    try:
        await _fill(nb)
        await replica.__aenter__()
        async with limiter.slot():
            await _missed(nb, limiter, 1)
            before = _dumps(replica.get_all(Net))
            trip = _driver(nb).trip(READS, at=1)
        await asyncio.wait_for(trip.reached.wait(), WAIT)
        with anyio.fail_after(5):
            await nb.aclose()
        await _until(lambda: not replica.synced and trip.cancelled == 1)
        assert _dumps(replica.get_all(Net)) == before
        with anyio.fail_after(5):
            await replica.aclose()
    finally:
        await replica.aclose()
        await nb.aclose()


async def test_an_object_fetched_while_a_reactive_relist_reads_stays_held(faulty_nb: NbApi) -> None:
    """A reader fetches an object a REACTIVE Replica did not hold while its relist reads the
    held ones again: the relist keeps it (read after the ``RESYNC``), with no event of its own."""
    nb = faulty_nb
    await _fill(nb)
    limiter = RelistLimiter(rate=1000, burst=1, jitter=0)
    driver = _driver(nb)
    async with Replica(nb, [Net], mode=dfdb.SyncMode.REACTIVE, relists=limiter, check_interval=None) as replica:
        for id in ("n0", "n1", "n2"):
            await replica.fetch(Net, id)
        events = replica.events()
        async with limiter.slot():
            assert await driver.cut(lose_history=True) == 1
            await _until(lambda: limiter.waiting == 1)
            trip = driver.trip(("get",), at=2)  # the relist's second read waits
        try:
            await asyncio.wait_for(trip.reached.wait(), WAIT)
            fetched = await replica.fetch(Net, "n5")
        finally:
            trip.heal()
        ev = await asyncio.wait_for(anext(events), WAIT)
        assert (ev.action, ev.id) == (Action.CREATE, "n5")
        await _until(lambda: replica.stats().resyncs == 1)
        assert replica.get(Net, "n5") == fetched
        await nb.patch(Net, "n5", name="probe")
        ev = await asyncio.wait_for(anext(events), WAIT)
        assert (ev.action, ev.id, ev.new and ev.new.name) == (Action.UPDATE, "n5", "probe")  # followed, told once
        await events.aclose()


register_driver("test-rc-topic-resync", TopicResyncDriver)


async def test_an_object_moved_to_another_followed_topic_survives_a_relist_of_its_old_topic() -> None:
    """One topic's history is lost while an object moved from it to another topic the
    Replica follows: the relist by keys of the old topic finds it gone from there, and the
    other topic's change that brings it (after the relist) must still be applied."""
    limiter = RelistLimiter(rate=1000, burst=1, jitter=0)
    async with dfdb.connect("test-rc-topic-resync://moved?history=100") as nb:
        driver = nb.driver
        assert isinstance(driver, TopicResyncDriver)
        await nb.create_many([Net(id="x", topic="t"), Net(id="y", topic="t"), Net(id="z", topic="u")])
        async with Replica(
            nb, [Net], mode=dfdb.SyncMode.SELECTIVE, topics={"t", "u"}, relists=limiter, check_interval=None
        ) as replica:
            events = replica.events()
            async with limiter.slot():
                del driver._open_store().tables[Net.__table__]["x"]  # its delete from "t" is in the history lost
                driver.inject_change(Net.__table__, "", "t", "topic-resync", None)
                await _until(lambda: limiter.waiting == 1)  # the relist of "t" waits for its turn
                moved = await nb.create(Net(id="x", topic="u", name="moved"))
            ev = await asyncio.wait_for(anext(events), WAIT)
            assert (ev.action, ev.id) == (Action.DELETE, "x")  # gone from "t", as the relist found
            ev = await asyncio.wait_for(anext(events), WAIT)
            assert (ev.action, ev.id, ev.new) == (Action.CREATE, "x", moved)  # and in "u", by the stream
            assert replica.get(Net, "x") == moved
            await events.aclose()
