"""``memory://[name][?history=N]``: the embedded in-process driver.

Revisions come from one counter. Its change stream is native and ordered, with a
bounded history (at least ``history`` recent changes, default 10,000) so that
``watch(since=…)`` resumes without gaps; an older position yields ``resync``.
All ``connect("memory://name")`` of one process share the store ``name`` while at
least one of them is open; ``memory://`` alone is a private store.

Leases live in the store with deadlines on the process's monotonic clock. Every call
on the store reaps the leases whose deadline passed first (their objects go with
ordinary logged deletes marked ``expired``), and a watcher wakes at the next deadline
to reap it, so an expiry is seen at most a few milliseconds after the TTL.
"""

from __future__ import annotations

import builtins
import itertools
import logging
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence

import anyio

from dfdb.drivers.base import (
    Capability,
    Digest,
    Driver,
    Entry,
    EventSource,
    Expect,
    Guard,
    KeyListing,
    Listing,
    PutRequest,
    RawEvent,
    check_delete,
    check_put,
)
from dfdb.drivers.digest import digest_of, keys_of
from dfdb.drivers.sources import BufferedSource
from dfdb.errors import InvalidURL, LeaseLostError
from dfdb.url import DatabaseURL

__all__ = ["MemoryDriver"]

log = logging.getLogger(__name__)

_ACTIONS = frozenset(("create", "update", "delete"))


class _Lease:
    __slots__ = ("deadline", "keys", "ttl")

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.deadline = time.monotonic() + ttl
        self.keys: dict[tuple[str, str], int] = {}  # bound objects and the revision they were bound at


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
        self.waiters: set[anyio.Event] = set()
        self.users = 0
        self.leases: dict[str, _Lease] = {}
        self.locks: dict[str, tuple[str | None, int]] = {}  # name -> (holder lease, last token)
        self.next_deadline = math.inf

    def write(self, table: str, id: str, topic: str | None, value: bytes | None, *, expired: bool = False) -> int:
        """Apply and log one change (``value`` ``None``: a delete); returns its revision."""
        rows = self.tables[table]
        old = rows.get(id)
        self.revision += 1
        if value is None:
            assert old is not None
            del rows[id]
            event = RawEvent("delete", table, id, old.topic, old.value, self.revision, expired=expired)
        else:
            rows[id] = Entry(table, id, topic, value, self.revision)
            event = RawEvent("create" if old is None else "update", table, id, topic, value, self.revision)
        self.append(event)
        return self.revision

    def reap(self) -> int:
        """End every lease whose deadline passed; returns how many."""
        now = time.monotonic()
        if now < self.next_deadline:
            return 0
        due = [lease for lease, row in self.leases.items() if row.deadline < now]
        for lease in due:
            self.end(lease)
        self.next_deadline = min((row.deadline for row in self.leases.values()), default=math.inf)
        return len(due)

    def end(self, lease: str) -> None:
        """Delete the lease's objects (as expiries) and release its locks."""
        row = self.leases.pop(lease, None)
        if row is None:
            return
        for (table, id), revision in row.keys.items():
            entry = self.tables.get(table, {}).get(id)
            if entry is not None and entry.revision == revision:  # not rewritten since without it
                self.write(table, id, None, None, expired=True)
        for name, (holder, token) in list(self.locks.items()):
            if holder == lease:
                self.locks[name] = (None, token)

    def alive(self, lease: str) -> _Lease:
        self.reap()
        row = self.leases.get(lease)
        if row is None or row.deadline < time.monotonic():
            raise LeaseLostError(f"lease {lease} ended")
        return row

    def check(self, guard: Guard | None) -> None:
        if guard is None:
            return
        self.alive(guard.lease)
        if guard.lock is not None and self.locks.get(guard.lock) != (guard.lease, guard.token):
            raise LeaseLostError(f"lock {guard.lock!r} is no longer held with token {guard.token}")

    def append(self, event: RawEvent) -> None:
        self.log.append(event)
        if len(self.log) >= 2 * self.history:
            drop = len(self.log) - self.history
            self.trimmed = self.log[drop - 1].revision
            del self.log[:drop]
        for waiter in list(self.waiters):
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

    capabilities = (
        Capability.NATIVE_STREAM
        | Capability.CHANGE_LOG
        | Capability.ORDERED
        | Capability.TOPIC_FILTER
        | Capability.LEASES
    )
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

    def _open_store(self) -> _Store:
        self._check_open()
        if self._store is None:
            raise RuntimeError("the driver is not open; use 'async with' or 'await open()'")
        self._store.reap()
        return self._store

    async def identity(self) -> str:
        return self._open_store().identity

    async def get(self, table: str, id: str) -> Entry | None:
        return self._open_store().tables[table].get(id) if table in self._open_store().tables else None

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        return await self.put_bound(table, id, topic, value, expect, None, None)

    async def put_bound(
        self,
        table: str,
        id: str,
        topic: str | None,
        value: bytes,
        expect: Expect,
        lease: str | None,
        guard: Guard | None,
    ) -> int:
        store = self._open_store()
        old = store.tables[table].get(id)
        store.check(guard)
        row = None if lease is None else store.alive(lease)
        check_put(table, id, topic, None if old is None else (old.topic, old.revision), expect)
        revision = store.write(table, id, topic, value)
        if row is not None:
            row.keys[table, id] = revision
        return revision

    async def put_many(self, writes: Sequence[PutRequest]) -> list[int | Exception]:
        if type(self).put is not MemoryDriver.put:  # a subclass's own put may wait: concurrently
            return await super().put_many(writes)
        # one after the other: this put never waits, so a task per write (the default) only adds cost
        results: list[int | Exception] = []
        for w in writes:
            try:
                results.append(await self.put(w.table, w.id, w.topic, w.value, w.expect))
            except Exception as exc:  # the write's outcome, in its place
                results.append(exc)
        return results

    async def delete(self, table: str, id: str, expect: int | None = None) -> Entry:
        store = self._open_store()
        old = store.tables.get(table, {}).get(id)
        check_delete(table, id, None if old is None else old.revision, expect)
        assert old is not None
        revision = store.write(table, id, None, None)
        return Entry(table, id, old.topic, old.value, revision)

    async def delete_guarded(self, table: str, id: str, guard: Guard) -> Entry:
        self._open_store().check(guard)
        return await self.delete(table, id)

    async def lease_grant(self, ttl: float) -> str:
        store = self._open_store()
        lease = uuid.uuid4().hex
        store.leases[lease] = row = _Lease(ttl)
        store.next_deadline = min(store.next_deadline, row.deadline)
        return lease

    async def lease_keepalive(self, lease: str) -> None:
        row = self._open_store().alive(lease)
        row.deadline = time.monotonic() + row.ttl

    async def lease_revoke(self, lease: str) -> None:
        self._open_store().end(lease)

    async def lock_acquire(self, name: str, lease: str) -> int | None:
        store = self._open_store()
        store.alive(lease)
        holder, token = store.locks.get(name, (None, 0))
        if holder == lease:
            return token
        if holder is not None:
            return None
        store.locks[name] = (lease, token + 1)
        return token + 1

    async def lock_release(self, name: str, lease: str, token: int) -> None:
        store = self._open_store()
        if store.locks.get(name) == (lease, token):
            store.locks[name] = (None, token)

    async def reap(self) -> int:
        self._check_open()
        return 0 if self._store is None else self._store.reap()

    async def list(self, table: str, topic: str | None = None) -> Listing:
        store = self._open_store()
        rows = store.tables.get(table, {})
        entries = [e for e in rows.values() if topic is None or e.topic == topic]
        return Listing(entries, store.revision)

    async def digest(self, table: str, topics: Collection[str | None] | None, buckets: int) -> Digest:
        store = self._open_store()
        pairs = [(e.id, e.revision) for e in self._scope(table, topics)]
        return Digest(digest_of(pairs, buckets), store.revision, round_trips=0)

    async def digest_keys(
        self, table: str, topics: Collection[str | None] | None, buckets: int, wanted: Collection[int]
    ) -> KeyListing:
        store = self._open_store()
        entries = self._scope(table, topics)
        chosen = keys_of(((e.id, e.revision) for e in entries), buckets, wanted)
        return KeyListing(
            chosen, store.revision, round_trips=0, topics={e.id: e.topic for e in entries if e.id in chosen}
        )

    def _scope(self, table: str, topics: Collection[str | None] | None) -> builtins.list[Entry]:
        rows = self._open_store().tables.get(table, {})
        return [e for e in rows.values() if topics is None or e.topic in topics]

    async def watch(
        self,
        tables: Collection[str],
        topics: Collection[str | None] | None = None,
        since: int | None = None,
    ) -> EventSource:
        store = self._open_store()
        return self._track(_MemorySource(store, tables, topics, store.revision if since is None else since))

    async def tables(self) -> builtins.list[str]:
        return sorted(name for name, rows in self._open_store().tables.items() if rows)

    async def allocate_unique_key(self, table: str) -> int:
        return next(self._open_store().counters[table])

    async def compact(self) -> None:
        self._open_store().compact()

    def inject_change(self, table: str, id: str, topic: str | None, action: str, value: bytes | None) -> int:
        """Append a change record to the store's log exactly as given, without checking it
        or storing a value: a hook for tests of records a source cannot read (``action``
        may be anything). Returns the record's revision."""
        store = self._open_store()
        store.revision += 1
        store.append(RawEvent(action, table, id, topic, value, store.revision))  # type: ignore[arg-type]
        return store.revision


class _MemorySource(BufferedSource):
    """Reads the store's change log after its position; woken by every write."""

    def __init__(
        self,
        store: _Store,
        tables: Collection[str],
        topics: Collection[str | None] | None,
        position: int,
    ) -> None:
        super().__init__(position, topics=topics, what="reading the memory change log")
        self._store = store
        self._tables = frozenset(tables)
        self._wake: anyio.Event | None = None

    async def _read_round(self) -> RawEvent | None:
        store = self._store
        store.reap()
        if self._read_position < store.trimmed or self._read_position > store.revision:
            self._read_position = store.revision
            log.debug("memory store %r: history after %d is gone; resync", store.name, self._read_position)
            return RawEvent.resync(store.revision)
        found = self._matching(store.after(self._read_position), self._topics)
        self._read_position = store.revision
        self._count_read(found)
        if found:
            self._push_all(found)
            return None
        wake = self._wake = anyio.Event()
        store.waiters.add(wake)
        try:
            with anyio.move_on_after(store.next_deadline - time.monotonic() + 0.005):  # reap the next expiry
                await wake.wait()
        finally:
            store.waiters.discard(wake)
        return None

    def _matching(self, events: Iterable[RawEvent], topics: Collection[str | None] | None) -> list[RawEvent]:
        """The events of the watched tables and ``topics``; a malformed one becomes a resync."""
        found: list[RawEvent] = []
        for ev in events:
            if ev.table in self._tables and (topics is None or ev.topic in topics):
                if ev.action not in _ACTIONS:
                    ev = self._malformed(ev.table, f"{ev.table}/{ev.id}", ev.revision, f"unknown action {ev.action!r}")
                found.append(ev)
        return found

    async def _follow(self, topics: frozenset[str | None], since: int) -> None:
        store = self._store
        if since < store.trimmed:
            self._push(RawEvent.resync(self._read_position))
            return
        backlog = [ev for ev in self._matching(store.after(since), topics) if ev.revision <= self._read_position]
        self._count_read(backlog)
        self._push_all(backlog)

    async def _release(self) -> None:
        if self._wake is not None:
            self._wake.set()
