"""Polling change streams that serve any driver.

:class:`ChangeLogPoller` reads a change log "after revision R" (drivers with a
change log but no push). :class:`SnapshotPoller` lists and diffs (drivers with
neither, or ``connect(url, notifications="poll")``): it lists the watched tables
every ``interval`` seconds and diffs the result by revision (deletes included). It
promises convergence — each key's latest state arrives — not every intermediate
change. Both read in the consumer's own task (no background task): a round is
re-readable, and its state moves only once its events are buffered, so a cancelled
read loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

import anyio

from dfdb.drivers.base import Driver, Entry, Listing, RawEvent
from dfdb.drivers.sources import BufferedSource
from dfdb.retry import Backoff, checkpoint_if_cancelled

__all__ = ["ChangeBatch", "ChangeLogPoller", "ChangeReader", "SnapshotPoller"]

log = logging.getLogger(__name__)

_Key = tuple[str, str]
_ALL = "\x00all"  # marks a listing of every topic (no topic can contain a control character)
_HEAD = "dfdb-head"  # a topic listed only for its revision, when the scope has no topic to list
_ACTIONS = frozenset(("create", "update", "delete"))


class SnapshotPoller(BufferedSource):
    """An :class:`EventSource` that lists and diffs; see the module documentation.

    Call :meth:`start` before iterating: it takes the first snapshot, so the source
    is subscribed when it returns. A round waits until the next poll is due, lists,
    diffs against the last listing and buffers the differences; the last listing is
    replaced only then, so a round cancelled while it lists changes nothing.
    """

    def __init__(
        self,
        driver: Driver,
        tables: Collection[str],
        topics: Collection[str | None] | None,
        since: int | None,
        *,
        interval: float = 0.5,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(0, topics=topics, what="polling", backoff=backoff)
        self._driver = driver
        self._tables = sorted(set(tables))
        self._since = since
        self._interval = interval
        self._state: dict[_Key, Entry] = {}
        self._listed_at: dict[tuple[str, str | None], int] = {}
        self._lock = anyio.Lock()  # one snapshot-and-diff at a time (rounds, add_topics)
        self._due = 0.0
        self._closing = anyio.Event()  # set by aclose: a round waiting for its time ends at once

    async def _snapshot(
        self, topics: frozenset[str | None] | None
    ) -> tuple[dict[_Key, Entry], int, dict[tuple[str, str | None], int]]:
        """List the scope: (entries by key, the highest listing revision, each listing's revision)."""
        state: dict[_Key, Entry] = {}
        revision = 0
        listed_at: dict[tuple[str, str | None], int] = {}
        for table in self._tables:
            if topics is None or None in topics:
                listing = await self._list(table, None)
                entries = [e for e in listing.entries if topics is None or e.topic in topics]
                revision = max(revision, listing.revision)
                listed_at[(table, _ALL)] = listing.revision
            else:
                entries = []
                for topic in sorted(t for t in topics if t is not None):
                    listing = await self._list(table, topic)
                    entries.extend(listing.entries)
                    revision = max(revision, listing.revision)
                    listed_at[(table, topic)] = listing.revision
            self._count_read(entries)
            for entry in entries:
                state[(entry.table, entry.id)] = entry
        if not listed_at and self._tables:
            # an empty scope lists nothing, yet the stream is caught up with the backend's head:
            # one listing of an (unlikely) topic tells that revision, its entries are not watched
            revision = (await self._list(self._tables[0], _HEAD)).revision
        return state, revision, listed_at

    async def _list(self, table: str, topic: str | None) -> Listing:
        """``driver.list``; a cancellation that the client library swallowed is raised here."""
        listing = await self._driver.list(table, topic)
        await checkpoint_if_cancelled()
        return listing

    async def start(self) -> None:
        """Take the first snapshot; subscribed when this returns."""
        async with self._lock:
            self._state, self._read_position, self._listed_at = await self._snapshot(self._topics)
            self._due = anyio.current_time() + self._interval
        if self._since is not None and self._since < self._read_position and self._topics != frozenset():
            # What changed since that cursor cannot be told apart (deletes are gone); in an
            # empty scope nothing did.
            self._push(RawEvent.resync(self._read_position))

    async def _read_round(self) -> RawEvent | None:
        delay = self._due - anyio.current_time()
        if delay > 0:
            with anyio.move_on_after(delay):
                await self._closing.wait()
        if self._closing.is_set():
            return None  # closed (a reopened stream goes on with its new source now)
        async with self._lock:
            state, revision, listed_at = await self._snapshot(self._topics)
            events = self._diff(state, listed_at, revision)
            self._state, self._listed_at = state, listed_at
            self._read_position = max(self._read_position, revision)
            self._due = anyio.current_time() + self._interval
            self._push_all(events)
        return None

    def _diff(
        self, state: dict[_Key, Entry], listed_at: dict[tuple[str, str | None], int], revision: int
    ) -> list[RawEvent]:
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
                # a delete's revision is unknown: use that of the listing that no longer held the
                # key, so that a re-creation listed later (at a higher revision) is never taken as older
                at = listed_at.get((before.table, _ALL), listed_at.get((before.table, before.topic), revision))
                events.append(RawEvent("delete", before.table, before.id, before.topic, before.value, at))
        return events

    async def _follow(self, topics: frozenset[str | None], since: int) -> None:
        """Their current objects join the snapshot now (so that their later changes and
        deletes are diffed); those changed after ``since`` are delivered."""
        async with self._lock:
            listed: list[Entry] = []
            for table in self._tables:
                for topic in sorted(t for t in topics if t is not None):
                    listed.extend((await self._list(table, topic)).entries)
            for entry in listed:
                self._state[(entry.table, entry.id)] = entry
                if entry.revision > since:  # changed after `since`: deliver it
                    self._push(RawEvent("create", entry.table, entry.id, entry.topic, entry.value, entry.revision))

    async def _release(self) -> None:
        self._closing.set()


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


class ChangeLogPoller(BufferedSource):
    """An :class:`EventSource` for any driver with a change log it can read "after R".

    It asks only for the changes after its position, so an idle poll costs one
    index search whatever the table size. It wakes at once when ``wake`` is set (by
    writes of the same process) and every ``interval`` seconds otherwise (for writes
    of other processes). A position below the log's trim point yields ``resync``; a
    record with an unknown action yields a ``resync`` of its table. Read failures are
    retried with backoff, resuming from the same position.
    """

    def __init__(
        self,
        read: ChangeReader,
        position: int,
        *,
        topics: frozenset[str | None] | None = None,
        interval: float,
        waiters: set[anyio.Event],
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(position, topics=topics, what="reading the change log", backoff=backoff)
        self._read = read
        self._interval = interval
        self._waiters = waiters
        self._wake = anyio.Event()
        waiters.add(self._wake)

    def _rearm(self) -> None:
        """A fresh wake-up for this round once the last one fired (anyio events are set once)."""
        if self._wake.is_set():
            self._waiters.discard(self._wake)
            self._wake = anyio.Event()
            self._waiters.add(self._wake)

    async def _read_round(self) -> RawEvent | None:
        self._rearm()
        topics, after = self._topics, self._read_position
        batch = await self._read(after, topics)
        if topics is not self._topics or after != self._read_position:
            return None  # topics were added (or another round moved on) meanwhile: read again
        if after < batch.trimmed:
            self._read_position = max(batch.position, batch.trimmed)
            log.debug("the change log was trimmed past %d; resync from %d", after, self._read_position)
            return RawEvent.resync(self._read_position)
        self._read_position = max(after, batch.position)
        self._count_read(batch.events)
        if batch.events:
            self._push_all(self._readable(batch.events))
            return None
        with anyio.move_on_after(self._interval):
            await self._wake.wait()
        return None

    def _readable(self, events: list[RawEvent]) -> list[RawEvent]:
        """``events``, each record with an unknown action replaced by a resync of its table.
        A ``resync`` in a batch is the reader's own report of a record it could not read
        (it logged it): counted here and passed on."""
        readable = []
        for ev in events:
            if ev.action == "resync":
                self.records_malformed += 1
            elif ev.action not in _ACTIONS:
                ev = self._malformed(ev.table, f"{ev.table}/{ev.id}", ev.revision, f"unknown action {ev.action!r}")
            readable.append(ev)
        return readable

    async def _follow(self, topics: frozenset[str | None], since: int) -> None:
        backlog: list[RawEvent] = []
        after = since
        while after < self._read_position:
            batch = await self._read(after, topics)
            if after < batch.trimmed:
                self._push(RawEvent.resync(self._read_position))
                return
            self._count_read(batch.events)
            backlog.extend(ev for ev in batch.events if ev.revision <= self._read_position)
            if not batch.events or batch.position <= after:
                break
            after = batch.position
        self._push_all(self._readable(backlog))

    async def _release(self) -> None:
        self._waiters.discard(self._wake)
        self._wake.set()
