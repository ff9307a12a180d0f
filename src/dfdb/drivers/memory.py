"""``memory://[name][?history=N]``: the embedded in-process driver.

Revisions come from one counter. Its change stream is native and ordered, with a
bounded history (at least ``history`` recent changes, default 10,000) so that
``watch(since=…)`` resumes without gaps; an older position yields ``resync``.
All ``connect("memory://name")`` of one process share the store ``name`` while at
least one of them is open; ``memory://`` alone is a private store.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
import uuid
from collections import defaultdict
from collections.abc import Collection

from dfdb.drivers.base import (
    Capability,
    Driver,
    Entry,
    EventSource,
    Expect,
    Listing,
    RawEvent,
    check_delete,
    check_put,
)
from dfdb.errors import InvalidURL
from dfdb.url import DatabaseURL

__all__ = ["MemoryDriver"]


class _Store:
    def __init__(self, name: str, history: int) -> None:
        self.name = name
        self.identity = f"memory-{uuid.uuid4().hex[:16]}"
        self.history = history
        self.tables: defaultdict[str, dict[str, Entry]] = defaultdict(dict)
        self.revision = 0
        self.log: list[RawEvent] = []  # contiguous: log[i].revision == trimmed + 1 + i
        self.trimmed = 0  # the highest discarded revision
        self.counters: defaultdict[str, itertools.count[int]] = defaultdict(lambda: itertools.count(1))
        self.waiters: set[asyncio.Event] = set()
        self.users = 0

    def append(self, event: RawEvent) -> None:
        self.log.append(event)
        if len(self.log) >= 2 * self.history:
            drop = len(self.log) - self.history
            self.trimmed = self.log[drop - 1].revision
            del self.log[:drop]
        for waiter in self.waiters:
            waiter.set()

    def compact(self) -> None:
        if self.log:
            self.trimmed = self.log[-1].revision
            self.log.clear()

    def after(self, position: int) -> list[RawEvent]:
        start = position - self.trimmed
        return self.log[start:] if start >= 0 else self.log


_STORES: dict[str, _Store] = {}


class MemoryDriver(Driver):
    """The embedded in-process driver; see the module documentation."""

    capabilities = Capability.NATIVE_STREAM | Capability.CHANGE_LOG | Capability.ORDERED | Capability.TOPIC_FILTER
    max_value_size = 16 * 1024 * 1024  # a bound of our own: the store keeps each value in its history too

    def __init__(self, url: DatabaseURL) -> None:
        super().__init__(url)
        if (url.hosts and len(url.hosts) > 1) or any(p is not None for _, p in url.hosts):
            raise InvalidURL(f"memory:// takes a store name, not hosts: {url}")
        self._name = (url.hosts[0][0] if url.hosts else "") + url.path
        self._history = url.int_option("history", 10_000, minimum=1)
        unknown = set(url.options) - {"history"}
        if unknown:
            raise InvalidURL(f"unknown memory:// option(s): {', '.join(sorted(unknown))}")
        self._store: _Store | None = None

    async def open(self) -> None:
        await super().open()
        if self._store is not None:
            return
        store = _STORES.get(self._name) if self._name else None
        if store is None:
            store = _Store(self._name, self._history)
            if self._name:
                _STORES[self._name] = store
        store.users += 1
        self._store = store

    async def _release(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.users -= 1
            if store.users == 0 and _STORES.get(store.name) is store:
                del _STORES[store.name]

    def _s(self) -> _Store:
        self._check_open()
        if self._store is None:
            raise RuntimeError("the driver is not open; use 'async with' or 'await open()'")
        return self._store

    async def identity(self) -> str:
        return self._s().identity

    async def get(self, table: str, id: str) -> Entry | None:
        return self._s().tables[table].get(id) if table in self._s().tables else None

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        store = self._s()
        rows = store.tables[table]
        old = rows.get(id)
        check_put(table, id, topic, None if old is None else (old.topic, old.revision), expect)
        store.revision += 1
        rows[id] = Entry(table, id, topic, value, store.revision)
        store.append(RawEvent("create" if old is None else "update", table, id, topic, value, store.revision))
        return store.revision

    async def delete(self, table: str, id: str, expect: int | None = None) -> Entry:
        store = self._s()
        rows = store.tables.get(table, {})
        old = rows.get(id)
        check_delete(table, id, None if old is None else old.revision, expect)
        assert old is not None
        store.revision += 1
        del rows[id]
        store.append(RawEvent("delete", table, id, old.topic, old.value, store.revision))
        return Entry(table, id, old.topic, old.value, store.revision)

    async def list(self, table: str, topic: str | None = None) -> Listing:
        store = self._s()
        rows = store.tables.get(table, {})
        entries = [e for e in rows.values() if topic is None or e.topic == topic]
        return Listing(entries, store.revision)

    async def watch(
        self,
        tables: Collection[str],
        topics: Collection[str | None] | None = None,
        since: int | None = None,
    ) -> EventSource:
        store = self._s()
        return self._track(_MemorySource(store, tables, topics, store.revision if since is None else since))

    async def tables(self) -> builtins.list[str]:
        return sorted(name for name, rows in self._s().tables.items() if rows)

    async def allocate_unique_key(self, table: str) -> int:
        return next(self._s().counters[table])

    async def compact(self) -> None:
        self._s().compact()


class _MemorySource(EventSource):
    def __init__(
        self,
        store: _Store,
        tables: Collection[str],
        topics: Collection[str | None] | None,
        position: int,
    ) -> None:
        self._store = store
        self._tables = frozenset(tables)
        self._topics = None if topics is None else frozenset(topics)
        self._position = position
        self._wake = asyncio.Event()
        self._closed = False
        self._buffer: list[RawEvent] = []
        store.waiters.add(self._wake)

    async def __anext__(self) -> RawEvent:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._buffer:
                return self._buffer.pop()
            store = self._store
            if self._position < store.trimmed or self._position > store.revision:
                self._position = store.revision
                return RawEvent.resync(store.revision)
            self._wake.clear()
            tables, topics = self._tables, self._topics
            found = [
                ev
                for ev in store.after(self._position)
                if ev.table in tables and (topics is None or ev.topic in topics)
            ]
            self._position = store.revision
            self._count_read(found)
            if found:
                found.reverse()
                self._buffer = found
                continue
            await self._wake.wait()

    def caught_up(self) -> int:
        return self._below(self._buffer, self._position)

    async def add_topics(self, topics: Collection[str | None], since: int) -> None:
        if self._topics is None:
            return
        new = frozenset(topics) - self._topics
        if not new:
            return
        store = self._store
        if since < store.trimmed:
            self._buffer.append(RawEvent.resync(self._position))
        else:
            backlog = [
                ev
                for ev in store.after(since)
                if ev.revision <= self._position and ev.table in self._tables and ev.topic in new
            ]
            self._count_read(backlog)
            self._buffer.extend(reversed(backlog))  # popped from the end: oldest first
        self._topics = self._topics | new

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._store.waiters.discard(self._wake)
        self._wake.set()
