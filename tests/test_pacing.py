"""Storm control: relists after a RESYNC are jittered and rate-limited per process, cover only
the RESYNC's scope, and a waiting Replica stays readable and says it is stale."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Collection

import anyio
import pytest

import dfdb
from dfdb import NbApi, Replica, SyncMode
from dfdb.codec import encode
from dfdb.drivers import ABSENT, Entry, Listing, register_driver
from dfdb.drivers.digest import KeyListing
from dfdb.drivers.memory import MemoryDriver
from dfdb.errors import BackendUnavailableError
from dfdb.replica import pacing
from dfdb.replica.pacing import RELISTS, RelistLimiter
from dfdb.retry import Backoff
from dfdb.testing.leaks import ResourceSnapshot
from topic_resync import TopicResyncDriver as _TopicResyncDriver

WAIT = 20


class Net(dfdb.NbModel, table="pacing_net"):
    name: str = ""


class Vm(dfdb.NbModel, table="pacing_vm"):
    net: dfdb.Ref[Net] | None = None


class RecordingLimiter(RelistLimiter):
    """A limiter that notes when each relist asked for its turn, when the bucket's token for it
    was due, and when it started. A loaded machine may start a relist later than its token
    allows (and several at once after a pause): its timing is checked on the due times, and
    each start only against its own due time."""

    def __init__(self, rate: float, burst: int, jitter: float, relists: int = 0) -> None:
        super().__init__(rate=rate, burst=burst, jitter=jitter)
        self.asks: list[float] = []
        self.dues: list[float] = []
        self.starts: list[float] = []
        self.slots: list[tuple[float, float]] = []
        """(asked, started) of each relist."""
        self.all_asked = asyncio.Event()
        """Set once ``relists`` relists have asked for their turn."""
        self.relists = relists

    def _reserve(self) -> float:
        delay = super()._reserve()
        self.dues.append(self._stamp + delay)  # the bucket's clock when it reserved, plus the wait
        return delay

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        asked = time.monotonic()
        self.asks.append(asked)
        if len(self.asks) == self.relists:
            self.all_asked.set()
        async with super().slot() as waited:
            started = time.monotonic()
            self.starts.append(started)
            self.slots.append((asked, started))
            yield waited


def not_before(later: list[float], earlier: list[float]) -> bool:
    """Whether the values of ``later`` can be paired with those of ``earlier`` so that none is
    smaller than its pair (sorted, each is at least the one of the same rank)."""
    return len(later) == len(earlier) and all(a >= b for a, b in zip(sorted(later), sorted(earlier), strict=True))


async def lose_history(nb: NbApi, n: int) -> None:
    """Write ``n`` changes straight through the memory driver, which never yields inside a
    write: every stream falls behind its short history at once and gets RESYNC."""
    for i in range(n):
        _, value, _ = encode(Net(id=f"lost{i}", topic="t"), 1)
        await nb.driver.put(Net.__table__, f"lost{i}", "t", value, ABSENT)


async def converged(replicas: list[Replica], nb: NbApi) -> None:
    expected = {(n.id, n.name) for n in await nb.get_all(Net)}
    probe = await nb.create(Net(id="probe", topic="t"))
    expected.add((probe.id, probe.name))
    for replica in replicas:
        await asyncio.wait_for(replica.wait_for(dfdb.revision_of(probe) or 0), WAIT)
        assert {(n.id, n.name) for n in replica.get_all(Net)} == expected


async def test_many_replicas_relist_at_the_bucket_rate_and_stay_readable() -> None:
    rate, burst, count = 20.0, 4, 24
    limiter = RecordingLimiter(rate=rate, burst=burst, jitter=0.05, relists=count)
    async with dfdb.connect("memory://?history=5") as nb, contextlib.AsyncExitStack() as stack:
        await nb.create_many([Net(id=f"n{i}", topic="t") for i in range(10)])
        replicas = [await stack.enter_async_context(Replica(nb, [Net], relists=limiter)) for _ in range(count)]
        assert not any(r.stats().stale for r in replicas)
        await lose_history(nb, 12)
        # the streams see the RESYNC; most Replicas then wait for their turn, stale but readable
        await asyncio.wait_for(limiter.all_asked.wait(), WAIT)
        waiting = [r for r in replicas if r.stats().stale]
        assert all(len(r.get_all(Net)) == 10 for r in waiting)  # the old contents, still served
        # all but the burst wait, less the tokens the bucket made since the first asked (none
        # unless the machine is so loaded that the Replicas took 50 ms to see their RESYNC)
        made = int(rate * (time.monotonic() - limiter.asks[0]))
        assert len(waiting) >= count - burst - 1 - made, (len(waiting), made)
        await converged(replicas, nb)
    assert [r.stats().resyncs for r in replicas] == [1] * count
    assert not any(r.stats().stale for r in replicas)
    assert limiter.granted == count and limiter.waiting == 0 and limiter.active == 0
    assert limiter.peak_active <= burst
    dues = sorted(limiter.dues)
    for i, first in enumerate(dues):  # in any window, at most the burst plus the window's tokens
        for j in range(i, len(dues)):
            window = dues[j] - first
            assert j - i + 1 <= burst + rate * window + 1, (j - i + 1, window)
    # the whole took at least the time the bucket needs to hand out the tokens beyond the burst
    assert dues[-1] - dues[0] >= (count - burst - 1) / rate * 0.9
    assert not_before(limiter.starts, limiter.dues)  # and no relist started before its token
    assert sum(r.stats().relist_wait for r in replicas) > 0


async def test_a_faster_bucket_relists_sooner() -> None:
    """The rate is tunable: the same storm passes faster with a higher rate."""
    spans = []
    for rate in (10.0, 80.0):
        limiter = RecordingLimiter(rate=rate, burst=1, jitter=0)
        async with dfdb.connect("memory://?history=5") as nb, contextlib.AsyncExitStack() as stack:
            replicas = [await stack.enter_async_context(Replica(nb, [Net], relists=limiter)) for _ in range(9)]
            await lose_history(nb, 12)
            await converged(replicas, nb)
        spans.append(max(limiter.dues) - min(limiter.dues))
        assert not_before(limiter.starts, limiter.dues)
    assert spans[0] >= 8 / 10 * 0.9  # 8 tokens beyond the burst at 10/s
    assert spans[1] < spans[0] / 2


async def test_a_resync_of_one_table_relists_only_that_table() -> None:
    async with dfdb.connect("memory://?history=100") as nb:
        net = await nb.create(Net(id="n", topic="t", name="before"))
        await nb.create(Vm(id="v", topic="t", net="n"))
        async with Replica(nb, [Net, Vm], relists=RelistLimiter(jitter=0)) as replica:
            driver = nb.driver
            assert isinstance(driver, MemoryDriver)
            store = driver._open_store()
            # a new value stored without a change record: only a relist of Net would see it
            _, value, _ = encode(net.model_copy(update={"name": "unseen"}), 2)
            revision = driver.inject_change("pacing_other", "x", None, "create", b"{}")  # the log stays whole
            store.tables[Net.__table__]["n"] = Entry(Net.__table__, "n", "t", value, revision)
            vm2 = await nb.create(Vm(id="v2", topic="t", net="n"))
            driver.inject_change(Vm.__table__, "v", None, "frobnicate", b"{}")  # unreadable: Vm's RESYNC
            probe = await nb.create(Vm(id="probe", topic="t"))
            await asyncio.wait_for(replica.wait_for(dfdb.revision_of(probe) or 0), WAIT)
            assert replica.stats().resyncs == 1
            assert replica.stats().relisted == 1  # what the relist read: the one Vm not held at its revision
            assert {v.id for v in replica.get_all(Vm)} == {"v", "v2", "probe"}
            assert replica.get(Vm, "v2") == vm2
            net_held = replica.get(Net, "n")
            assert net_held is not None and net_held.name == "before"  # Net was not relisted


class AwayDriver(MemoryDriver):
    """The memory driver, whose lists fail while ``away`` is set (a server that cannot be
    reached for a while)."""

    away = False
    refused = 0

    async def list(self, table: str, topic: str | None = None) -> Listing:
        if self.away:
            self.refused += 1
            raise BackendUnavailableError("the server is away")
        return await super().list(table, topic)

    async def digest_keys(
        self, table: str, topics: Collection[str | None] | None, buckets: int, wanted: Collection[int]
    ) -> KeyListing:
        if self.away:
            self.refused += 1
            raise BackendUnavailableError("the server is away")
        return await super().digest_keys(table, topics, buckets, wanted)


register_driver("test-away", AwayDriver)


async def test_a_relist_that_fails_is_tried_again_until_it_is_done() -> None:
    async with dfdb.connect("test-away://away?history=5", timeout=0.2) as nb:
        driver = nb.driver
        assert isinstance(driver, AwayDriver)
        await nb.create_many([Net(id=f"n{i}", topic="t") for i in range(3)])
        async with Replica(nb, [Net], relists=RelistLimiter(jitter=0)) as replica:
            driver.away = True
            await lose_history(nb, 12)
            deadline = time.monotonic() + WAIT
            while driver.refused < 3 and time.monotonic() < deadline:  # the relist failed, more than once
                await asyncio.sleep(0.01)
            assert driver.refused >= 3
            stats = replica.stats()
            assert stats.stale and stats.resyncs == 0 and len(replica) == 3  # the old contents, served
            driver.away = False
            await converged([replica], nb)  # the lost changes too: the relist was not forgotten
            assert replica.stats().resyncs == 1 and not replica.stats().stale


def test_backoff_grows_and_is_jittered() -> None:
    backoff = Backoff(initial=0.1, maximum=1.6)
    for attempt in range(6):
        cap = min(1.6, 0.1 * 2**attempt)
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 40  # jittered: no two Replicas wait alike
    assert backoff.delay(0) > 0  # even the first reconnect waits a little


class Draws(random.Random):
    """Random numbers, each ``uniform`` draw noted."""

    def __init__(self) -> None:
        super().__init__()
        self.drawn: list[float] = []

    def uniform(self, a: float, b: float) -> float:
        value = super().uniform(a, b)
        self.drawn.append(value)
        return value


async def test_the_relist_jitter_spreads_the_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each relist waits its own random delay first. Checked against the delays drawn: a loaded
    machine may wake several waiters at once, late, but never one before its delay."""
    draws = Draws()
    monkeypatch.setattr(pacing, "random", draws)
    limiter = RecordingLimiter(rate=1000.0, burst=100, jitter=0.3)
    async with dfdb.connect("memory://?history=5") as nb, contextlib.AsyncExitStack() as stack:
        replicas = [await stack.enter_async_context(Replica(nb, [Net], relists=limiter)) for _ in range(12)]
        await lose_history(nb, 12)
        await converged(replicas, nb)
    delays = draws.drawn
    assert len(delays) == 12 and all(0 <= d <= 0.3 for d in delays)
    assert len(set(delays)) == len(delays) and max(delays) - min(delays) > 0.05  # no two alike
    assert not_before([started - asked for asked, started in limiter.slots], delays)
    waits = [r.stats().relist_wait for r in replicas]
    assert len(set(waits)) == len(waits) and not_before(waits, delays)  # each Replica counts its wait


def test_limiter_settings_are_checked_and_tunable() -> None:
    with pytest.raises(ValueError):
        RelistLimiter(rate=0)
    with pytest.raises(ValueError):
        RelistLimiter(burst=0)
    with pytest.raises(ValueError):
        RelistLimiter(jitter=-1)
    limiter = RelistLimiter(rate=5, burst=2, jitter=0)
    limiter.configure(rate=50, burst=20, jitter=0.5)
    assert (limiter.rate, limiter.burst, limiter.jitter) == (50, 20, 0.5)
    assert isinstance(RELISTS, RelistLimiter)


async def test_closing_the_nbapi_ends_the_replicas_waiting_for_a_relist() -> None:
    """Replicas left open when their NbApi closes end at once, even those waiting for their
    relist's turn: no task stays behind, and the shared bucket is not held for them."""
    limiter = RelistLimiter(rate=0.1, burst=1, jitter=0)
    baseline = ResourceSnapshot.take()
    async with dfdb.connect("memory://?history=5") as nb:
        await nb.create_many([Net(id=f"n{i}", topic="t") for i in range(3)])
        replicas = [await Replica(nb, [Net], relists=limiter, check_interval=None).__aenter__() for _ in range(4)]
        await lose_history(nb, 12)
        deadline = time.monotonic() + WAIT
        while limiter.waiting < 3 and time.monotonic() < deadline:  # one relisted, three wait 10 s or more
            await asyncio.sleep(0.01)
        assert limiter.waiting == 3
    try:
        assert not await ResourceSnapshot.wait_clean(baseline, grace=2)
        assert limiter.waiting == 0 and not any(r.synced for r in replicas)
    finally:
        for replica in reversed(replicas):
            await replica.aclose()


async def test_relists_cancelled_while_waiting_for_a_running_slot_give_their_tokens_back() -> None:
    """Relists that took their token and then wait for one of the ``burst`` running slots
    are cancelled (their Replica closed): the tokens come back, so the next relists start at once."""
    limiter = RelistLimiter(rate=0.001, burst=2, jitter=0)  # a token taken is not made again in this test
    gate = limiter._gate()
    for _ in range(2):  # every running slot taken: the bucket still holds its two tokens
        await gate.acquire()

    async def relist() -> None:
        async with limiter.slot():
            pass

    async with asyncio.TaskGroup() as tg:
        waiters = [tg.create_task(relist()) for _ in range(2)]
        deadline = time.monotonic() + WAIT
        while gate.statistics().tasks_waiting < 2 and time.monotonic() < deadline:  # tokens taken, at the gate
            await asyncio.sleep(0.01)
        assert gate.statistics().tasks_waiting == 2
        for waiter in waiters:
            waiter.cancel()
    assert all(w.cancelled() for w in waiters) and limiter.waiting == 0
    for _ in range(2):
        gate.release()
    with anyio.fail_after(5):  # without the tokens back, the next relist would wait 1,000 s
        for _ in range(2):
            async with limiter.slot() as waited:
                assert waited < 1


class TopicResyncDriver(_TopicResyncDriver):
    """A driver whose change log can name one topic's history lost (``topic-resync``); it
    notes its listings."""

    listed: list[tuple[str, str | None]]

    async def list(self, table: str, topic: str | None = None) -> Listing:
        self.listed.append((table, topic))
        return await super().list(table, topic)

    async def digest_keys(
        self, table: str, topics: Collection[str | None] | None, buckets: int, wanted: Collection[int]
    ) -> KeyListing:
        self.listed += [(table, topic) for topic in (topics or [None])]  # a relist by keys
        return await super().digest_keys(table, topics, buckets, wanted)


register_driver("test-topic-resync", TopicResyncDriver)


async def test_a_resync_of_one_topic_relists_only_that_topic() -> None:
    async with dfdb.connect("test-topic-resync://topics?history=100") as nb:
        driver = nb.driver
        assert isinstance(driver, TopicResyncDriver)
        driver.listed = []
        mine = await nb.create(Net(id="a", topic="t1", name="before"))
        other = await nb.create(Net(id="b", topic="t2", name="before"))
        await nb.create(Vm(id="v", topic="t1", net="a"))
        topics = {"t1", "t2"}
        async with Replica(nb, [Net, Vm], mode=SyncMode.SELECTIVE, topics=topics, relists=RelistLimiter(jitter=0)) as r:
            events = r.events()
            store = driver._open_store()
            for obj in (mine, other):  # new values stored without a change record: only a relist sees them
                _, value, _ = encode(obj.model_copy(update={"name": "unseen"}), 2)
                revision = driver.inject_change("pacing_other", "x", None, "create", b"{}")
                store.tables[Net.__table__][obj.id] = Entry(Net.__table__, obj.id, obj.topic, value, revision)
            driver.listed.clear()
            driver.inject_change(Net.__table__, "", "t1", "topic-resync", None)
            ev = await asyncio.wait_for(anext(events), WAIT)  # the relist's difference
            await events.aclose()
            assert (ev.action, ev.id, ev.new and ev.new.name) == (dfdb.Action.UPDATE, "a", "unseen")
            assert r.stats().resyncs == 1 and r.stats().relisted == 1  # t1's Net, stored anew (Vm unchanged)
            assert sorted(driver.listed) == [(Net.__table__, "t1"), (Vm.__table__, "t1")]  # t1 only
            held = r.get(Net, "b")
            assert held is not None and held.name == "before"  # t2 was not relisted
            assert r.get(Vm, "v") is not None and r.topics == topics


class GatedLimiter(RelistLimiter):
    """A limiter whose relists wait until ``opened`` is set; ``asked`` is set by the first."""

    def __init__(self) -> None:
        super().__init__(jitter=0)
        self.asked = anyio.Event()
        self.opened = anyio.Event()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        self.asked.set()
        await self.opened.wait()
        async with super().slot() as waited:
            yield waited


@pytest.mark.parametrize("change", ["add", "remove"])
async def test_a_relist_covers_the_topics_followed_when_it_runs(change: str) -> None:
    """A relist waiting for its turn while a topic is added (or removed) lists the topics
    followed once its turn comes: an added topic's objects stay, a removed one's do not come back."""
    limiter = GatedLimiter()
    async with dfdb.connect("memory://?history=5") as nb:
        await nb.create(Net(id="a", topic="t"))
        await nb.create(Net(id="b", topic="t1", name="kept"))
        topics = {"t"} if change == "add" else {"t", "t1"}
        async with Replica(nb, [Net], mode=SyncMode.SELECTIVE, topics=topics, relists=limiter) as r:
            await lose_history(nb, 12)  # a RESYNC: its relist waits at the gate
            await asyncio.wait_for(limiter.asked.wait(), WAIT)
            if change == "add":
                await r.add_topic("t1")
            else:
                await r.remove_topic("t1")
            assert (r.get(Net, "b") is not None) == (change == "add")
            limiter.opened.set()
            probe = await nb.create(Net(id="probe", topic="t"))
            await asyncio.wait_for(r.wait_for(dfdb.revision_of(probe) or 0), WAIT)
            assert r.stats().resyncs == 1
            held = r.get(Net, "b")
            if change == "add":
                assert held is not None and held.name == "kept" and r.topics == {"t", "t1"}
            else:
                assert held is None and r.topics == {"t"}
            assert {n.id for n in r.get_all(Net)} == {"a", "probe"} | ({"b"} if change == "add" else set()) | {
                f"lost{i}" for i in range(12)
            }


async def test_changes_older_than_a_relist_are_not_applied_after_it() -> None:
    """Changes the stream delivers after a relist but from before its listing (here: made
    while the relist waited for its turn) are not applied again: an object the listing found
    deleted does not come back, not even for a moment (a snapshot poller's next round, which
    tells the delete again, may be an interval away)."""
    limiter = GatedLimiter()
    async with dfdb.connect("memory://?history=5") as nb:
        b = await nb.create(Net(id="b", topic="t", name="first"))
        async with Replica(nb, [Net], relists=limiter) as r:
            await lose_history(nb, 12)  # a RESYNC: its relist waits at the gate
            await asyncio.wait_for(limiter.asked.wait(), WAIT)
            await nb.update(b.model_copy(update={"name": "second"}))
            await nb.delete(Net, "b")
            probe = await nb.create(Net(id="probe", topic="t"))
            applied = r.stats().events
            limiter.opened.set()
            await asyncio.wait_for(r.wait_for(dfdb.revision_of(probe) or 0), WAIT)
            assert r.get(Net, "b") is None and r.stats().resyncs == 1
            assert {n.id for n in r.get_all(Net)} == {"probe"} | {f"lost{i}" for i in range(12)}
            # the relist (by keys: the rows as stored stay) told 13 creates and b's delete; b's update
            # (a create once b was gone) and delete, and the probe's create, were not applied again
            assert r.stats().events - applied == 13 + 1


async def test_relist_marks_of_another_dataset_are_forgotten() -> None:
    """The revisions a relist noted belong to its dataset: after a relist in a new dataset
    (a server back without its data, whose revisions start again), the old marks must not
    make the new dataset's changes look older than a listing (they would be dropped)."""
    from dfdb.nb import ListResult
    from dfdb.replica.relist import note_relisted

    async with dfdb.connect("memory://marks") as nb:
        async with Replica(nb, [Net]) as r:
            r._relisted_in = note_relisted(
                r._relisted, r._relisted_in, [(Net, ListResult([], "old-dataset@5000"))], None
            )
            r._relisted_in = note_relisted(r._relisted, r._relisted_in, [(Net, ListResult([], "new-dataset@3"))], None)
            assert r._relisted == {(Net, None): 3}
            r._relisted_in = note_relisted(r._relisted, r._relisted_in, [(Net, ListResult([], "new-dataset@9"))], "t")
            assert r._relisted == {(Net, None): 3, (Net, "t"): 9}


class GatedListDriver(MemoryDriver):
    """The memory driver whose listings can be held: once :meth:`arm` was called, the first
    listing of a whole table (every topic) after a listing of one topic waits until ``opened``
    is set (a snapshot poller of a scope with topic-less objects lists only whole tables:
    a Replica's relist is held); ``asked`` is set when it waits."""

    gate: tuple[anyio.Event, anyio.Event] | None = None
    primed = False

    def arm(self) -> tuple[anyio.Event, anyio.Event]:
        self.gate, self.primed = (anyio.Event(), anyio.Event()), False
        return self.gate

    async def list(self, table: str, topic: str | None = None) -> Listing:
        gate = self.gate
        if gate is not None and topic is not None:
            self.primed = True
        elif gate is not None and self.primed:
            self.gate = None
            asked, opened = gate
            asked.set()
            await opened.wait()
        return await super().list(table, topic)

    async def digest_keys(
        self, table: str, topics: Collection[str | None] | None, buckets: int, wanted: Collection[int]
    ) -> KeyListing:
        """As a driver that reads the values to know the keys: a relist lists the scope."""
        keys = await super().digest_keys(table, topics, buckets, wanted)
        return dataclasses.replace(keys, values_read=len(keys.revisions))


register_driver("test-gated-list", GatedListDriver)


async def test_wait_for_after_a_relist_waits_for_changes_its_first_listings_missed() -> None:
    """A relist lists a SELECTIVE scope one listing at a time (each topic, then the topic-less
    objects): a change made between two listings is in none that covers it, and comes by the
    stream. ``wait_for`` a later revision returns only once it is applied: the relist covers
    the scope up to its oldest listing, not its newest."""
    url = "test-gated-list://gated?notifications=poll&poll_interval=1"
    async with dfdb.connect(url) as nb:
        driver = nb.driver
        assert isinstance(driver, GatedListDriver)
        await nb.create(Net(id="a", topic="t"))
        await nb.create(Net(id="b", topic="t1"))
        topics = {"t", "t1"}
        limiter = RelistLimiter(jitter=0)
        async with Replica(nb, [Net], mode=SyncMode.SELECTIVE, topics=topics, relists=limiter) as r:
            await nb.create(Net(id="c", topic="t"))
            # the snapshot poller is reopened without t1: it cannot tell what changed since its
            # cursor, so a RESYNC comes and the Replica relists t, then the topic-less objects
            asked, opened = driver.arm()
            await r.remove_topic("t1")
            await asyncio.wait_for(asked.wait(), WAIT)  # t listed (a held), the whole table not yet
            await nb.delete(Net, "a")
            probe = await nb.create(Net(id="probe"))
            opened.set()
            await asyncio.wait_for(r.wait_for(dfdb.revision_of(probe) or 0), WAIT)
            assert r.get(Net, "a") is None
            assert {n.id for n in r.get_all(Net)} == {"c", "probe"} and r.stats().resyncs == 1


class FlakyTopicDriver(MemoryDriver):
    """The memory driver, whose next listing of topic ``fail_topic`` fails (a server restarted
    while a topic is added)."""

    fail_topic: str | None = None

    async def list(self, table: str, topic: str | None = None) -> Listing:
        if topic is not None and topic == self.fail_topic:
            self.fail_topic = None
            raise BackendUnavailableError("the server is restarting")
        return await super().list(table, topic)


register_driver("test-flaky-topic", FlakyTopicDriver)


async def test_a_topic_added_while_the_server_restarts_is_tried_again() -> None:
    """A polling stream lists an added topic itself: a failed listing is tried again within the
    NbApi's timeout, as every other read of ``add_topic`` is, not raised at once."""
    async with dfdb.connect("test-flaky-topic://flaky?notifications=poll&poll_interval=0.02", timeout=5) as nb:
        await nb.create_many([Vm(id="a1", topic="a"), Vm(id="b1", topic="b")])
        async with Replica(nb, [Vm], mode=SyncMode.SELECTIVE, topics={"a"}) as replica:
            driver = nb.driver
            assert isinstance(driver, FlakyTopicDriver)
            driver.fail_topic = "b"
            await asyncio.wait_for(replica.add_topic("b"), WAIT)
            assert driver.fail_topic is None  # the failure happened, and was tried again
            assert {v.id for v in replica.get_all(Vm)} == {"a1", "b1"}
            b2 = await nb.create(Vm(id="b2", topic="b"))
            await asyncio.wait_for(replica.wait_for(dfdb.revision_of(b2) or 0), WAIT)
            assert replica.get(Vm, "b2") == b2
