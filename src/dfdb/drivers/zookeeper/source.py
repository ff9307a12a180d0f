"""The change source: reads the change logs after a position, woken by watches.

A watch reads the logs of its topics (all topics of its tables when none are given):
each log from the first change after its position, then an ``exists`` watch on the
next change's path and a data watch on the log wake it. ZooKeeper delivers a watch
event before any reply to a later request, so a log whose watches have not fired is
complete up to the latest reply: that is how far the stream has read.
"""

from __future__ import annotations

import asyncio
import builtins
import heapq
import itertools
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from aiozk import exc, protocol

from dfdb.drivers.base import EventSource, RawEvent
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
)
from dfdb.errors import BackendUnavailableError
from dfdb.retry import Backoff, checkpoint, raise_if_cancelling

__all__ = ["LogAccess", "ZooKeeperSource"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LogAccess:
    """What a :class:`ZooKeeperSource` needs of its driver: the change logs (with the calls
    and the layout beneath them) and the period of the safety re-read."""

    logs: ChangeLogs
    idle: float
    """Seconds between safety re-reads of every log."""

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


class ZooKeeperSource(EventSource):
    """Reads change logs after a position, woken by watches; see the module documentation."""

    def __init__(
        self, access: LogAccess, tables: builtins.list[str], topics: Collection[str | None] | None, since: int
    ) -> None:
        self._access = access
        self._calls = access.calls
        self._tables = tables
        self._topics = None if topics is None else set(topics)
        self._since = since
        self._logs: dict[str, _Log] = {}
        self._buffer: builtins.list[tuple[int, int, RawEvent]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._discover = topics is None
        self._closed = False
        self._backoff = Backoff()
        self._connection: tuple[int, int] | None = None
        self._identity = access.calls.known_identity
        self._callbacks: dict[WatchKey, Callable[[str], None]] = {}
        self._resync_at = 0
        self._idle_frontier = since

    @property
    def position(self) -> int:
        """Every change at or below this revision has been returned."""
        delivered = self._read_up_to()
        if self._buffer:
            delivered = min(delivered, self._buffer[0][0] - 1)
        return delivered

    def caught_up(self) -> int:
        return self.position

    def _push(self, event: RawEvent) -> None:
        heapq.heappush(self._buffer, (event.revision, next(self._seq), event))

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
        """Find every log's position after ``since``; subscribed when this returns."""
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
        self._logs[path] = entry
        await self._seek(entry, since)

    async def _seek(self, entry: _Log, since: int) -> None:
        try:
            entry.at = await self._access.logs.seek(entry.path, since)
        except Pruned as pruned:
            self._lost(entry, pruned.trim)

    def _lost(self, entry: _Log, trim: int) -> None:
        log.info("change log %s was pruned past position %d", entry.path, entry.frontier)
        self._resync_at = max(self._resync_at, trim)

    def _read_up_to(self) -> int:
        """Every change at or below this revision has been read (returned or buffered)."""
        return min((lg.frontier for lg in self._logs.values()), default=self._idle_frontier)

    async def _round(self) -> None:
        """Read every dirty log to its end and re-arm its watches; then every clean log is
        complete up to the last reply."""
        calls, layout = self._calls, self._access.layout
        connection = calls.connection()
        if connection != self._connection:  # a new connection or session: watches may have been lost
            if self._connection is not None and await calls.identity() != self._identity:
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
                    await self._add_log(table, None if loc == "n" else loc[2:], self._since)
        last = 0
        for entry in builtins.list(self._logs.values()):
            if entry.dirty:
                last = max(last, await self._read_log(entry))
        if self._resync_at:
            return
        last = max(last, await calls.current_revision())
        self._idle_frontier = max(self._idle_frontier, last)
        for entry in self._logs.values():
            if not entry.dirty:
                entry.frontier = max(entry.frontier, last)

    async def _read_log(self, entry: _Log) -> int:
        """Read ``entry`` from its position to its end and arm its watches; returns the
        zxid up to which it is complete."""
        calls, logs, layout = self._calls, self._access.logs, self._access.layout
        entry.dirty = False
        while True:
            batch = await logs.read_batch(entry.path, entry.at)
            for got in batch:
                self._take(entry, got)
                entry.at.seq += 1
            if len(batch) == READ_AHEAD:
                continue  # more to read
            next_path = layout.change(layout.bucket(entry.path, entry.at.bucket), entry.at.seq)
            for key in entry.armed:
                callback = self._callbacks.pop(key, None)
                if callback is not None:
                    calls.remove_watch(key, callback)
            entry.armed = [(protocol.WatchEvent.CREATED, next_path), (protocol.WatchEvent.DATA_CHANGED, entry.path)]
            for key in entry.armed:
                self._watch(key, self._dirty(entry.path))
            if await calls.exists(next_path, watch=True) is not None:
                continue  # it appeared meanwhile
            found = await logs.read_meta(entry.path, watch=True)
            if found is None:  # no log yet: it starts at bucket 0
                return await calls.current_revision()
            try:
                if await logs.next_bucket(entry.path, entry.at, found[0], entry.frontier):
                    continue  # the log moved on: this bucket is closed
            except Pruned as pruned:  # pruned before this reader got to it
                self._lost(entry, pruned.trim)
                return 0
            zxid = await calls.current_revision()
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
        entry.frontier = revision
        try:
            change = Change.decode(data)
        except MalformedChange:
            log.warning("skipping malformed change %s/c%010d of %s", entry.path, entry.at.seq, entry.table)
            return
        self._push(RawEvent(change.action, entry.table, change.id, entry.topic, change.value, revision))

    async def __anext__(self) -> RawEvent:
        failures = 0
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._resync_at:
                return await self._restart(self._resync_at)
            if self._buffer:
                return heapq.heappop(self._buffer)[2]
            try:
                if not any(entry.dirty for entry in self._logs.values()) and not self._discover:
                    self._wake.clear()
                    try:
                        async with asyncio.timeout(self._access.idle):
                            await self._wake.wait()
                    except TimeoutError:  # a safety re-read of every log
                        for entry in self._logs.values():
                            entry.dirty = True
                await self._round()
                checkpoint()
                failures = 0
                identity = self._calls.known_identity
                if identity != self._identity and identity is not None:
                    self._identity = identity
                    return await self._restart(await self._calls.current_revision(), identity)
            except (BackendUnavailableError, exc.ZKError, OSError) as error:
                raise_if_cancelling(error)
                if self._closed:
                    raise StopAsyncIteration from None
                await self._backoff.pause(failures, "reading the zookeeper change logs", error)
                failures += 1
                for entry in self._logs.values():
                    entry.dirty = True

    async def _restart(self, revision: int, identity: str | None = None) -> RawEvent:
        """History is gone: start every log after ``revision`` and say so."""
        self._resync_at = 0
        self._buffer.clear()
        now = max(revision, await self._calls.current_revision())
        for entry in self._logs.values():
            entry.frontier = now
            await self._seek(entry, now)
            entry.dirty = True
        self._since = now
        return RawEvent.resync(now, identity)

    async def add_topics(self, topics: Collection[str | None], since: int) -> None:
        if self._topics is None:
            return
        for topic in topics:
            if topic in self._topics:
                continue
            self._topics.add(topic)
            for table in self._tables:
                await self._add_log(table, topic, since)
        self._wake.set()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for key, callback in self._callbacks.items():
            self._calls.remove_watch(key, callback)
        self._callbacks.clear()
        self._wake.set()
