"""Polling change streams that serve any driver.

:class:`ChangeLogPoller` reads a change log "after revision R" (drivers with a
change log but no push). :class:`SnapshotPoller` lists and diffs (drivers with
neither), as follows.

Snapshot-diff polling: a change stream for any driver, from repeated listings.

Used for drivers with neither a native stream nor a change log, or when asked with
``connect(url, notifications="poll")``. It lists the watched tables every
``interval`` seconds and diffs the result by revision (deletes included). It
promises convergence — each key's latest state arrives — not every intermediate
change. One background task feeds a bounded queue; when the consumer is slow the
task waits, and changes made meanwhile merge into the next diff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from dfdb.drivers.base import Driver, Entry, EventSource, RawEvent
from dfdb.errors import DriverError
from dfdb.retry import Backoff, checkpoint

__all__ = ["ChangeBatch", "ChangeLogPoller", "ChangeReader", "SnapshotPoller"]

log = logging.getLogger(__name__)

_Key = tuple[str, str]
_ALL = "\x00all"  # marks a listing of every topic (no topic can contain a control character)


class SnapshotPoller(EventSource):
    """An :class:`EventSource` that lists and diffs; see the module documentation.

    Call :meth:`start` before iterating: it takes the first snapshot, so the source
    is subscribed when it returns.
    """

    def __init__(
        self,
        driver: Driver,
        tables: Collection[str],
        topics: Collection[str | None] | None,
        since: int | None,
        *,
        interval: float = 0.5,
        queue_size: int = 1024,
        backoff: Backoff | None = None,
    ) -> None:
        self._driver = driver
        self._tables = sorted(set(tables))
        self._topics = None if topics is None else frozenset(topics)
        self._since = since
        self._interval = interval
        self._backoff = backoff or Backoff()
        self._queue: asyncio.Queue[RawEvent] = asyncio.Queue(queue_size)
        self._state: dict[_Key, Entry] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._listed_at: dict[tuple[str, str | None], int] = {}
        self._lock = asyncio.Lock()  # one snapshot-and-diff at a time (the task, add_topics)
        self._extra: list[RawEvent] = []  # events found by add_topics, delivered first
        self.position = 0
        """The revision the last snapshot was consistent with."""

    async def _snapshot(self) -> tuple[dict[_Key, Entry], int]:
        state: dict[_Key, Entry] = {}
        revision = 0
        self._listed_at = {}
        for table in self._tables:
            if self._topics is None or None in self._topics:
                listing = await self._driver.list(table)
                entries = [e for e in listing.entries if self._topics is None or e.topic in self._topics]
                revision = max(revision, listing.revision)
                self._listed_at[(table, _ALL)] = listing.revision
            else:
                entries = []
                for topic in sorted(t for t in self._topics if t is not None):
                    listing = await self._driver.list(table, topic)
                    entries.extend(listing.entries)
                    revision = max(revision, listing.revision)
                    self._listed_at[(table, topic)] = listing.revision
            self._count_read(entries)
            for entry in entries:
                state[(entry.table, entry.id)] = entry
        return state, revision

    def _deleted_at(self, entry: Entry, fallback: int) -> int:
        """A delete's revision is unknown: use that of the listing that no longer held the key,
        so that a re-creation listed later (at a higher revision) is never taken as older."""
        listed = self._listed_at
        at = listed.get((entry.table, _ALL), listed.get((entry.table, entry.topic)))
        return fallback if at is None else at

    async def start(self) -> None:
        """Take the first snapshot and start the polling task."""
        self._state, self.position = await self._snapshot()
        if self._since is not None and self._since < self.position:
            # What changed since that cursor cannot be told apart (deletes are gone).
            self._queue.put_nowait(RawEvent.resync(self.position))
        self._task = asyncio.create_task(self._run(), name="dfdb-snapshot-poller")

    async def _run(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self._interval)
            try:
                async with self._lock:
                    state, revision = await self._snapshot()
                    events = self._diff(state, revision)
                    self._state = state
                    self.position = max(self.position, revision)
                checkpoint()
            except DriverError as exc:
                await self._backoff.pause(failures, "polling", exc)
                failures += 1
                continue
            failures = 0
            for event in events:
                await self._queue.put(event)

    def _diff(self, state: dict[_Key, Entry], revision: int) -> list[RawEvent]:
        events: list[RawEvent] = []
        old = self._state
        for key, entry in state.items():
            before = old.get(key)
            if before is None:
                events.append(RawEvent("create", entry.table, entry.id, entry.topic, entry.value, entry.revision))
            elif before.revision != entry.revision:
                events.append(RawEvent("update", entry.table, entry.id, entry.topic, entry.value, entry.revision))
        for key, before in old.items():
            if key not in state:
                at = self._deleted_at(before, revision)
                events.append(RawEvent("delete", before.table, before.id, before.topic, before.value, at))
        events.sort(key=lambda ev: ev.revision)
        return events

    async def __anext__(self) -> RawEvent:
        if self._closed:
            raise StopAsyncIteration
        if self._task is None:
            raise RuntimeError("SnapshotPoller.start() was not awaited")
        if self._extra:
            return self._extra.pop(0)
        getter = asyncio.ensure_future(self._queue.get())
        try:
            done, _ = await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
        if getter in done:
            return getter.result()
        if self._closed:
            raise StopAsyncIteration
        self._task.result()  # re-raise what stopped the task
        raise StopAsyncIteration

    async def add_topics(self, topics: Collection[str | None], since: int) -> None:
        """Add topics: their current objects join the snapshot now (so that their later
        changes and deletes are diffed); changes arrive with the next snapshot."""
        if self._topics is None:
            return
        new = frozenset(topics) - self._topics
        async with self._lock:
            found: list[RawEvent] = []
            for table in self._tables:
                for topic in sorted(t for t in new if t is not None):
                    for entry in (await self._driver.list(table, topic)).entries:
                        self._state[(entry.table, entry.id)] = entry
                        if entry.revision > since:  # changed after `since`: deliver it
                            found.append(
                                RawEvent("create", entry.table, entry.id, entry.topic, entry.value, entry.revision)
                            )
            found.sort(key=lambda ev: ev.revision)
            self._extra.extend(found)
            self._topics = self._topics | new

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """One read of a change log: "the changes after revision R".

    Attributes:
        events: the matching changes after R, in revision order.
        position: every matching change up to this revision is in ``events``.
        trimmed: the highest revision the log has discarded; a reader whose
            position is below it has lost changes.
    """

    events: list[RawEvent]
    position: int
    trimmed: int


ChangeReader = Callable[[int, frozenset[str | None] | None], Awaitable[ChangeBatch]]
"""``read(after, topics)``: the changes after revision ``after`` of ``topics`` (``None``: all)."""


class ChangeLogPoller(EventSource):
    """An :class:`EventSource` for any driver with a change log it can read "after R".

    It asks only for the changes after its position, so an idle poll costs one
    index search whatever the table size. It wakes at once when ``wake`` is set (by
    writes of the same process) and every ``interval`` seconds otherwise (for writes
    of other processes). A position below the log's trim point yields ``resync``.
    Read failures are retried with backoff, resuming from the same position.
    """

    def __init__(
        self,
        read: ChangeReader,
        position: int,
        *,
        topics: frozenset[str | None] | None = None,
        interval: float,
        waiters: set[asyncio.Event],
        backoff: Backoff | None = None,
    ) -> None:
        self._read = read
        self._topics = topics
        self.position = position
        self._interval = interval
        self._waiters = waiters
        self._wake = asyncio.Event()
        self._backoff = backoff or Backoff()
        self._buffer: list[RawEvent] = []
        self._closed = False
        waiters.add(self._wake)

    async def __anext__(self) -> RawEvent:
        failures = 0
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._buffer:
                return self._buffer.pop()
            self._wake.clear()
            try:
                batch = await self._read(self.position, self._topics)
                checkpoint()
            except DriverError as exc:
                await self._backoff.pause(failures, "reading the change log", exc)
                failures += 1
                continue
            failures = 0
            if self._closed:
                raise StopAsyncIteration
            if self.position < batch.trimmed:
                self.position = max(batch.position, batch.trimmed)
                return RawEvent.resync(self.position)
            self.position = max(self.position, batch.position)
            self._count_read(batch.events)
            if batch.events:
                self._buffer = batch.events[::-1]
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()

    def caught_up(self) -> int:
        return self._below(self._buffer, self.position)

    async def add_topics(self, topics: Collection[str | None], since: int) -> None:
        if self._topics is None:
            return
        new = frozenset(topics) - self._topics
        if not new:
            return
        backlog: list[RawEvent] = []
        after = since
        while after < self.position:
            batch = await self._read(after, new)
            if after < batch.trimmed:
                backlog = [RawEvent.resync(self.position)]
                break
            self._count_read(batch.events)
            backlog.extend(ev for ev in batch.events if ev.revision <= self.position)
            if not batch.events or batch.position <= after:
                break
            after = batch.position
        self._buffer.extend(reversed(backlog))  # popped from the end: oldest first
        self._topics = self._topics | new

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._waiters.discard(self._wake)
        self._wake.set()
