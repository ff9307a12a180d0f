"""The buffered sources' read loop, with a scripted change log: topics added during a
round, history trimmed under an added topic, unreadable records, cancelled rounds; and a
snapshot poller of an empty scope."""

from __future__ import annotations

import asyncio
import contextlib

from dfdb import DatabaseURL
from dfdb.drivers import ABSENT, RawEvent
from dfdb.drivers.memory import MemoryDriver
from dfdb.drivers.polling import ChangeBatch, ChangeLogPoller, SnapshotPoller


class ScriptedLog:
    """A change log read "after R", whose reads can be held until released."""

    def __init__(self, events: list[RawEvent], trimmed: int = 0) -> None:
        self.events = events
        self.trimmed = trimmed
        self.hold: asyncio.Event | None = None
        self.reading = asyncio.Event()
        self.reads: list[tuple[int, frozenset[str | None] | None]] = []

    async def read(self, after: int, topics: frozenset[str | None] | None) -> ChangeBatch:
        self.reads.append((after, topics))
        self.reading.set()
        head = max((ev.revision for ev in self.events), default=0)
        hold, self.hold = self.hold, None  # only the next read is held
        if hold is not None:
            await hold.wait()
        found = [ev for ev in self.events if ev.revision > after and (topics is None or ev.topic in topics)]
        return ChangeBatch(found, head, self.trimmed)


def change(revision: int, topic: str, action: str = "create") -> RawEvent:
    return RawEvent(action, "t", f"k{revision}", topic, b"{}", revision)  # type: ignore[arg-type]


async def test_topics_added_during_a_round_lose_nothing() -> None:
    log = ScriptedLog([change(1, "a"), change(2, "b"), change(3, "a"), change(4, "b")])
    source = ChangeLogPoller(log.read, 2, topics=frozenset({"a"}), interval=10, waiters=set())
    hold = log.hold = asyncio.Event()
    reader = asyncio.create_task(anext(source))  # a round reads topic a after 2, and is held
    await log.reading.wait()
    await source.add_topics({"b"}, since=1)  # its backlog is read while the round is in flight
    hold.set()
    got = [await asyncio.wait_for(reader, 5)]
    got += [await asyncio.wait_for(anext(source), 5) for _ in range(2)]
    # the round that began before b was added was read again: b's change at 4 is not skipped
    assert [ev.revision for ev in got] == [2, 3, 4]
    await source.aclose()


async def test_a_trimmed_log_under_an_added_topic_resyncs_once() -> None:
    log = ScriptedLog([change(5, "a"), change(6, "b")], trimmed=4)
    source = ChangeLogPoller(log.read, 6, topics=frozenset({"a"}), interval=10, waiters=set())
    await source.add_topics({"b"}, since=2)
    ev = await asyncio.wait_for(anext(source), 5)
    assert (ev.action, ev.table, ev.revision) == ("resync", None, 6)
    assert source.records_malformed == 0
    await source.aclose()


async def test_an_unknown_action_resyncs_its_table_and_reading_goes_on() -> None:
    log = ScriptedLog([change(1, "a"), change(2, "a", action="frobnicate"), change(3, "a")])
    source = ChangeLogPoller(log.read, 0, topics=None, interval=10, waiters=set())
    got = [await asyncio.wait_for(anext(source), 5) for _ in range(3)]
    assert [(ev.action, ev.table, ev.revision) for ev in got] == [
        ("create", "t", 1),
        ("resync", "t", 2),
        ("create", "t", 3),
    ]
    assert source.records_malformed == 1
    await source.aclose()


async def test_a_cancelled_round_is_read_again() -> None:
    log = ScriptedLog([change(1, "a"), change(2, "a")])
    source = ChangeLogPoller(log.read, 0, topics=None, interval=10, waiters=set())
    log.hold = asyncio.Event()
    reader = asyncio.create_task(anext(source))
    await log.reading.wait()
    reader.cancel()  # cancelled while the backend read is in flight
    await asyncio.gather(reader, return_exceptions=True)
    assert source.position == 0
    got = [await asyncio.wait_for(anext(source), 5) for _ in range(2)]
    assert [ev.revision for ev in got] == [1, 2]
    assert source.reconnects == 0
    await source.aclose()


async def test_a_snapshot_poller_of_no_topic_follows_the_head_and_never_resyncs() -> None:
    async with MemoryDriver(DatabaseURL.parse("memory://")) as driver:
        await driver.put("t", "a", "elsewhere", b"{}", ABSENT)
        poller = SnapshotPoller(driver, ["t"], frozenset(), 0, interval=0.01)
        await poller.start()  # from revision 0, with a change since: nothing of the scope changed
        assert poller.position == 1
        revision = await driver.put("t", "b", "elsewhere", b"{}", ABSENT)
        async with asyncio.timeout(5):
            while poller.caught_up() != revision:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        ev = await anext(poller)
                        raise AssertionError(f"an event of no topic followed: {ev}")
        await poller.aclose()
