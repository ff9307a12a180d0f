"""The change source: reads the change logs after a position, woken by watches.

A watch reads the logs of its topics (all topics of its tables when none are given):
each log from the first change after its position, then an ``exists`` watch on the
next change's path and a data watch on the log wake it. ZooKeeper delivers a watch
event before any reply to a later request, so a log whose watches have not fired is
complete up to the latest reply: that is how far the stream has read. Without topics,
a children watch on each table's topic logs and an ``exists`` watch on its topic-less
log announce a new log; until a round has found it, the stream reads no further than
the last reply before it (its first change may be below changes of other logs).

The rounds run in the source's reader task (:class:`~dfdb.drivers.sources.ReaderTaskSource`):
a round moves through the logs over many requests and watch registrations, so a
cancelled ``__anext__`` cancels only its wait, never a round.
"""

from __future__ import annotations

import asyncio
import builtins
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from aiozk import exc, protocol

from dfdb.drivers.base import RawEvent
from dfdb.drivers.sources import ReaderTaskSource
from dfdb.drivers.zookeeper.client import Calls, WatchKey
from dfdb.drivers.zookeeper.layout import (
    READ_AHEAD,
    Change,
    ChangeLogs,
    Cursor,
    Layout,
    MalformedChange,
    Pruned,
    location,
    topic_of,
)
from dfdb.errors import DriverError

__all__ = ["REAP_EVERY", "LogAccess", "ZooKeeperSource"]

log = logging.getLogger(__name__)

REAP_EVERY = 0.5
"""Seconds between two reaping rounds of a watching client."""
_FIRST_READ = 2
"""Change nodes read first when a log is woken (most often by one new change); more,
up to ``READ_AHEAD``, while every one asked for is there."""


@dataclass(frozen=True, slots=True)
class LogAccess:
    """What a :class:`ZooKeeperSource` needs of its driver: the change logs (with the calls
    and the layout beneath them) and the period of the safety re-read."""

    logs: ChangeLogs
    idle: float
    """Seconds between safety re-reads of every log."""
    reap: Callable[[], Awaitable[object]] | None = None
    """Ends the leases that are due (at most every :data:`REAP_EVERY` seconds); every
    source runs it at least that often."""

    @property
    def calls(self) -> Calls:
        return self.logs.calls

    @property
    def layout(self) -> Layout:
        return self.logs.layout


@dataclass
class _Log:
    """The reading position in one change log."""

    path: str
    table: str
    topic: str | None
    at: Cursor = field(default_factory=Cursor)
    frontier: int = 0
    """Every change of this log up to here has been read."""
    dirty: bool = True
    armed: builtins.list[WatchKey] = field(default_factory=builtins.list)


class ZooKeeperSource(ReaderTaskSource):
    """Reads change logs after a position, woken by watches; see the module documentation."""

    _retryable = (DriverError, exc.ZKError, OSError)

    def __init__(
        self, access: LogAccess, tables: builtins.list[str], topics: Collection[str | None] | None, since: int
    ) -> None:
        super().__init__(since, topics=topics, what="reading the zookeeper change logs")
        self._access = access
        self._calls = access.calls
        self._tables = tables
        self._since = since
        self._logs: dict[str, _Log] = {}
        self._taken: builtins.list[RawEvent] = []  # read in the current round
        self._held: builtins.list[tuple[int, int, RawEvent]] = []  # read, above what every log has been read to
        self._order = itertools.count()
        self._unreadable: builtins.list[tuple[str, str, int, str]] = []  # (table, key, revision, reason)
        self._wake = asyncio.Event()
        self._discover = topics is None
        self._connection: tuple[int, int] | None = None
        self._identity = access.calls.known_identity
        self._callbacks: dict[WatchKey, Callable[[str], None]] = {}
        self._resync_at = 0
        self._known_up_to = since
        """Every log with a change at or below this revision is in ``_logs``: a log made
        later fires a discovery watch (``_discover``), and position stays below it until
        a round has found the log."""
        self._safety_at = 0.0

    def _read_up_to(self) -> int:
        """Every change at or below this revision has been read (returned, buffered, or
        taken by the round under way)."""
        read = self._read_up_to_logs()
        if self._taken:
            read = min(read, min(ev.revision for ev in self._taken) - 1)
        if self._held:
            read = min(read, self._held[0][0] - 1)
        return read

    def _dirty(self, key: str) -> Callable[[str], None]:
        def mark(_path: str) -> None:
            target = self._logs.get(key)
            if target is not None:
                target.dirty = True
            elif key == "":
                self._discover = True
            self._wake.set()

        return mark

    def _watch(self, key: WatchKey, callback: Callable[[str], None]) -> None:
        old = self._callbacks.pop(key, None)
        if old is not None:
            self._calls.remove_watch(key, old)
        self._callbacks[key] = callback
        self._calls.add_watch(key, callback)

    async def start(self) -> None:
        """Find every log's position after ``since`` and read them once, arming their
        watches; subscribed when this returns."""
        if self._topics is not None:
            for table in self._tables:
                for topic in self._topics:
                    await self._add_log(table, topic, self._since)
        await self._round()

    async def _add_log(self, table: str, topic: str | None, since: int) -> None:
        path = self._access.layout.log(table, location(topic))
        if path in self._logs:
            return
        entry = _Log(path, table, topic, frontier=since)
        await self._seek(entry, since)
        if path not in self._logs:  # placed only once sought: a round never reads it from nowhere
            self._logs[path] = entry

    async def _seek(self, entry: _Log, since: int) -> None:
        try:
            entry.at = await self._access.logs.seek(entry.path, since)
        except Pruned as pruned:
            self._lost(entry, pruned.trim)

    def _lost(self, entry: _Log, trim: int) -> None:
        log.info("change log %s was pruned past position %d", entry.path, entry.frontier)
        self._resync_at = max(self._resync_at, trim)

    async def _read_round(self) -> RawEvent | None:
        """Wait for a watch (or the idle period), read every log a watch marked, and say
        when history is gone."""
        if self._resync_at:
            return await self._restart(self._resync_at)
        reap = self._access.reap
        if reap is not None:
            await reap()
        if not any(entry.dirty for entry in self._logs.values()) and not self._discover:
            self._wake.clear()
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(min(self._access.idle, REAP_EVERY if reap else self._access.idle)):
                    await self._wake.wait()
            except TimeoutError:
                if loop.time() - self._safety_at >= self._access.idle:  # a safety re-read of every log
                    self._safety_at = loop.time()
                    for entry in self._logs.values():
                        entry.dirty = True
        await self._round()
        if self._resync_at:
            return await self._restart(self._resync_at)
        identity = self._calls.known_identity
        if identity != self._identity and identity is not None:
            self._identity = identity
            return await self._restart(await self._calls.current_revision(), identity)
        return None

    async def _after_failure(self, exc: BaseException) -> None:
        for entry in self._logs.values():
            entry.dirty = True

    async def _round(self) -> None:
        """Read every dirty log to its end and re-arm its watches; then every clean log is
        complete up to the last reply. At the end of the round (also one that failed
        half-way) what it read is buffered up to where every log has been read, so the
        stream is in revision order across logs; the rest waits for the next round."""
        try:
            await self._read_logs()
        finally:
            position = self._read_up_to_logs()
            for table, key, revision, reason in self._unreadable:
                # in the record's place, but never past a change not read yet
                self._taken.append(self._malformed(table, key, min(revision, position), reason))
            self._unreadable.clear()
            for event in self._taken:
                heapq.heappush(self._held, (event.revision, next(self._order), event))
            self._taken.clear()
            while self._held and self._held[0][0] <= position:
                self._push(heapq.heappop(self._held)[2])

    def _read_up_to_logs(self) -> int:
        return min([self._known_up_to, *(lg.frontier for lg in self._logs.values())])

    async def _read_logs(self) -> None:
        calls, layout = self._calls, self._access.layout
        connection = calls.connection()
        if connection != self._connection:  # a new connection or session: watches may have been lost
            if self._connection is not None:
                log.debug("zookeeper change logs: a new connection; reading every log again")
                if await calls.identity() != self._identity:
                    self._resync_at = await calls.current_revision()  # a server that lost its data
                    self._identity = calls.known_identity
                    return
            self._connection = connection
            for entry in self._logs.values():
                entry.dirty = True
            self._discover = self._topics is None
        if self._discover:
            self._discover = False
            for table in self._tables:
                for key in [
                    (protocol.WatchEvent.CHILDREN_CHANGED, layout.topic_logs(table)),
                    (protocol.WatchEvent.CREATED, layout.log(table, "n")),
                ]:
                    if key not in self._callbacks:
                        self._watch(key, self._dirty(""))
                await calls.exists(layout.log(table, "n"), watch=True)
                await calls.ensure(layout.topic_logs(table))
                for loc in await self._access.logs.locations(table, watch=True):
                    await self._add_log(table, topic_of(loc), self._since)
        last = 0
        for entry in builtins.list(self._logs.values()):
            if entry.dirty:
                last = max(last, await self._read_log(entry))
        if self._resync_at:
            return
        if last == 0:  # no log was read to its end: ask how far the server is
            last = await calls.current_revision()
        # else the last reply's zxid: a log whose watches have not fired before it is complete up to it
        if not self._discover:  # no log was made before that reply that this round did not find
            self._known_up_to = max(self._known_up_to, last)
        # else a table's new log, whose first change may be below changes of other logs read
        # in this round: they wait for the next round, which finds it
        for entry in self._logs.values():
            if not entry.dirty:
                entry.frontier = max(entry.frontier, last)

    async def _read_log(self, entry: _Log) -> int:
        """Read ``entry`` from its position to its end and arm its watches; returns the
        zxid up to which it is complete."""
        calls, logs, layout = self._calls, self._access.logs, self._access.layout
        entry.dirty = False
        last_read = 0
        count = _FIRST_READ
        while True:
            batch = await logs.read_batch(entry.path, entry.at, count)
            for got in batch:
                self._take(entry, got)
                entry.at.seq += 1
                last_read = int(got[1].created_zxid)
            if len(batch) == count:
                count = min(count * 4, READ_AHEAD)
                continue  # more to read
            # at the bucket's end: a multi's changes are created together, so none of the
            # last one's is left unread (until here, only the changes below it are read)
            entry.frontier = max(entry.frontier, last_read)
            next_path = layout.change(layout.bucket(entry.path, entry.at.bucket), entry.at.seq)
            for key in entry.armed:
                callback = self._callbacks.pop(key, None)
                if callback is not None:
                    calls.remove_watch(key, callback)
            entry.armed = [(protocol.WatchEvent.CREATED, next_path), (protocol.WatchEvent.DATA_CHANGED, entry.path)]
            for key in entry.armed:
                self._watch(key, self._dirty(entry.path))
            # both watches in one round trip; the log's reply tells up to where it is complete
            there, (zxid, found) = await asyncio.gather(
                calls.exists(next_path, watch=True), logs.read_meta_at(entry.path, watch=True)
            )
            if there is not None:
                continue  # it appeared meanwhile
            if found is None:  # no log yet: it starts at bucket 0
                return await calls.current_revision()
            try:
                if await logs.next_bucket(entry.path, entry.at, found[0], entry.frontier):
                    continue  # the log moved on: this bucket is closed
            except Pruned as pruned:  # pruned before this reader got to it
                self._lost(entry, pruned.trim)
                return 0
            if not entry.dirty:  # no watch fired before this reply: complete up to it
                entry.frontier = max(entry.frontier, zxid)
            return zxid

    def _take(self, entry: _Log, got: tuple[bytes, Any]) -> None:
        data, stat = got
        revision = int(stat.created_zxid)
        self.records_read += 1
        self.bytes_read += len(data)
        if revision <= entry.frontier:
            return
        # the changes of one multi (a batch of creates) share its zxid: the rest may follow
        entry.frontier = revision - 1
        try:
            change = Change.decode(data)
        except MalformedChange as error:
            key = self._access.layout.change(self._access.layout.bucket(entry.path, entry.at.bucket), entry.at.seq)
            named = data.split(b"\n", 2)[1:2]
            if named:
                key += f" (id {named[0][:300].decode(errors='replace')!r})"
            self._unreadable.append((entry.table, key, revision, str(error)))
            return
        table, topic, expired = entry.table, entry.topic, change.expired
        self._taken.append(RawEvent(change.action, table, change.id, topic, change.value, revision, None, expired))

    async def _restart(self, revision: int, identity: str | None = None) -> RawEvent:
        """History is gone: start every log after ``revision`` and say so."""
        self._resync_at = 0
        self._clear_buffer()
        self._held.clear()
        now = max(revision, await self._calls.current_revision())
        log.debug("zookeeper change logs: history gone, every log starts again after %d", now)
        for entry in self._logs.values():
            entry.frontier = now
            await self._seek(entry, now)
            entry.dirty = True
        self._since = now
        # a log found later starts after `now` too: the resync stands for every change up to it
        self._known_up_to = max(self._known_up_to, now)
        return RawEvent.resync(now, identity)

    async def _follow(self, topics: frozenset[str | None], since: int) -> None:
        for topic in topics:
            for table in self._tables:
                await self._add_log(table, topic, since)
        self._wake.set()

    async def _release(self) -> None:
        for key, callback in self._callbacks.items():
            self._calls.remove_watch(key, callback)
        self._callbacks.clear()
        self._wake.set()
