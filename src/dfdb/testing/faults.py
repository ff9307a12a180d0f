"""A fault-injecting driver wrapper, to prove the conformance suite can fail.

``faulty://NAME?fault=F&inner=SCHEME[&other options]`` wraps the driver
``SCHEME://NAME?other options`` and injects one fault ``F``:

``drop``
    drops every 1,000th event of each change stream.
``reorder``
    swaps two consecutive events of the same key.
``ignore_expect``
    ignores the expected revision of updates and deletes (no compare-and-swap).
``trim``
    loses the history a resumed watch asks for, without announcing it.
``leak``
    leaves a task running for every watch.
``lose_reply``
    performs every first write attempt, then reports the connection as lost
    (a fault the NbApi must absorb: its retries are idempotent).

Without ``fault=`` the wrapper injects nothing by itself; with any fault,
:meth:`FaultyDriver.cut` drops the change streams' connections when a test says so,
:meth:`FaultyDriver.drop_next` silently drops the next change event a stream reads, and
:meth:`FaultyDriver.trip` makes the Nth call of some reads fail or hang (a :class:`Trip`).
The wrapper has the inner driver's capabilities (but leases), value-size limit and
identities, so that a write the inner backend refuses is refused the same way here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import TypeVar

import anyio

from dfdb.drivers import driver_class, register_driver
from dfdb.drivers.base import ANY, Capability, Digest, Driver, Entry, EventSource, Expect, KeyListing, Listing, RawEvent
from dfdb.errors import BackendUnavailableError, InvalidURL
from dfdb.url import DatabaseURL

__all__ = ["FAULTS", "FaultyDriver", "Trip"]

FAULTS = ("drop", "reorder", "ignore_expect", "trim", "leak", "lose_reply")

_leaked: set[asyncio.Task[None]] = set()

T = TypeVar("T")

TRIPPABLE = ("digest", "digest_keys", "get", "identity", "list")
"""The reads a :class:`Trip` counts (``digest`` and ``digest_keys``: of several tables at once too)."""


class Trip:
    """The calls of some reads of a :class:`FaultyDriver`, counted from when it was set
    (:meth:`FaultyDriver.trip`): from the ``at``-th on, ``times`` calls raise ``error``
    (a new one each time) or, without ``error``, hang until :meth:`heal` (or until
    cancelled: ``cancelled`` counts those). ``late``: the call is made first, and its reply
    is what fails or hangs (a reply that comes late, telling of the data as it was)."""

    def __init__(
        self, methods: Collection[str], at: int, error: type[Exception] | None, times: int, late: bool = False
    ) -> None:
        unknown = set(methods) - set(TRIPPABLE)
        if unknown:
            raise ValueError(f"a trip counts only {', '.join(TRIPPABLE)}, not {', '.join(sorted(unknown))}")
        self.methods = frozenset(methods)
        self.at = at
        self.error = error
        self.times = times
        self.late = late
        self.calls: list[str] = []
        """The methods called, in order."""
        self.tripped = 0
        """Calls that failed or hung."""
        self.cancelled = 0
        """Hanging calls that ended by cancellation."""
        self.reached = anyio.Event()
        """Set by the first call that fails or hangs."""
        self._healed = anyio.Event()

    def heal(self) -> None:
        """No call fails or hangs from now on; the hanging ones go on."""
        self.times = 0
        self._healed.set()

    async def passing(self, method: str) -> None:
        """Count a call of ``method``: return, raise or hang as set."""
        if method not in self.methods:
            return
        self.calls.append(method)
        if len(self.calls) < self.at or self.times <= 0:
            return
        self.times -= 1
        self.tripped += 1
        self.reached.set()
        if self.error is not None:
            raise self.error(f"{method} failed (injected)")
        try:
            await self._healed.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise


class FaultyDriver(Driver):
    """Wraps another driver and injects one fault; see the module documentation."""

    def __init__(self, url: DatabaseURL) -> None:
        super().__init__(url)
        fault = url.option("fault")
        if fault is not None and fault not in FAULTS:
            raise InvalidURL(f"faulty:// needs fault= one of {', '.join(FAULTS)}")
        self.fault = fault
        inner_scheme = url.option("inner", "memory") or "memory"
        inner_url = DatabaseURL(
            inner_scheme,
            url.hosts,
            url.username,
            url.password,
            url.path,
            {k: v for k, v in url.options.items() if k not in ("fault", "inner")},
        )
        self.inner = driver_class(inner_url)(inner_url)
        self.capabilities = self.inner.capabilities & ~Capability.LEASES  # type: ignore[misc]
        self.unnamed_identities = self.inner.unnamed_identities  # type: ignore[misc]
        self.max_value_size = self.inner.max_value_size  # type: ignore[misc]
        self._lost: set[tuple[str, str]] = set()
        self._open_sources: set[_FaultySource] = set()
        self._history_lost_upto = -1  # a watch resumed from a cursor at or below it gets a resync
        self._drops = [0]  # change events still to drop silently, shared by the sources
        self._trip: Trip | None = None

    def drop_next(self, count: int = 1) -> None:
        """Drop the next ``count`` change events the change streams read, silently: no
        ``resync``, the stream goes on as if they had never happened."""
        self._drops[0] += count

    def trip(
        self,
        methods: Collection[str],
        at: int,
        error: type[Exception] | None = None,
        times: int = 1,
        *,
        late: bool = False,
    ) -> Trip:
        """Count the calls of ``methods`` (of :data:`TRIPPABLE`) from now on, and make the
        ``at``-th and the next ``times - 1`` raise ``error`` or, without it, hang until the
        trip is healed (``late``: once made, their replies); replaces the trip set before
        (healing it)."""
        if self._trip is not None:
            self._trip.heal()
        self._trip = Trip(methods, at, error, times, late)
        return self._trip

    async def _through(self, method: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, counted by the trip set (before it is made, or after when late)."""
        trip = self._trip
        if trip is None:
            return await call()
        if not trip.late:
            await trip.passing(method)
            return await call()
        result = await call()
        await trip.passing(method)
        return result

    async def cut(self, *, lose_history: bool = False) -> int:
        """Drop the connection of every open change stream, as a server that goes away
        does: each one's next (or current) read raises ``BackendUnavailableError`` once, and
        the stream is over. With ``lose_history``, the history up to now is gone too: a
        watch resumed from a cursor at or below the current revision starts with a
        ``resync``, as after a server that came back without its change log.

        Returns:
            How many streams were cut.
        """
        head = -1
        if lose_history:
            head = await self._head({t for source in self._open_sources for t in source.tables}, -1)
        # no await from here to the cuts: a watch opened meanwhile (a stream reopening) is cut
        # too, or opens after the history is gone and starts with its resync
        sources = list(self._open_sources)
        self._open_sources.clear()
        self._history_lost_upto = max(self._history_lost_upto, head)
        for source in sources:
            await source.cut()
        return len(sources)

    async def open(self) -> None:
        await super().open()
        await self.inner.open()

    async def _release(self) -> None:
        await self.inner.aclose()

    async def identity(self) -> str:
        return await self._through("identity", self.inner.identity)

    async def continues(self, identity: str, revision: int) -> bool:
        return await self.inner.continues(identity, revision)

    async def get(self, table: str, id: str) -> Entry | None:
        return await self._through("get", lambda: self.inner.get(table, id))

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        if self.fault == "ignore_expect" and isinstance(expect, int):
            expect = ANY
        revision = await self.inner.put(table, id, topic, value, expect)
        if self.fault == "lose_reply" and (table, id) not in self._lost:
            self._lost.add((table, id))
            raise BackendUnavailableError("connection lost (injected)")
        return revision

    async def delete(self, table: str, id: str, expect: int | None = None) -> Entry:
        if self.fault == "ignore_expect":
            expect = None
        return await self.inner.delete(table, id, expect)

    async def list(self, table: str, topic: str | None = None) -> Listing:
        return await self._through("list", lambda: self.inner.list(table, topic))

    async def tables(self) -> Sequence[str] | None:
        return await self.inner.tables()

    async def digest(self, table: str, topics: Collection[str | None] | None, buckets: int) -> Digest:
        return await self._through("digest", lambda: self.inner.digest(table, topics, buckets))

    async def digest_keys(
        self, table: str, topics: Collection[str | None] | None, buckets: int, wanted: Collection[int]
    ) -> KeyListing:
        return await self._through("digest_keys", lambda: self.inner.digest_keys(table, topics, buckets, wanted))

    async def digest_many(self, buckets: Mapping[str, int], topics: Collection[str | None] | None) -> dict[str, Digest]:
        return await self._through("digest", lambda: self.inner.digest_many(buckets, topics))

    async def digest_keys_many(self, scopes: Mapping[str, Collection[str | None] | None]) -> dict[str, KeyListing]:
        return await self._through("digest_keys", lambda: self.inner.digest_keys_many(scopes))

    async def watch(
        self,
        tables: Collection[str],
        topics: Collection[str | None] | None = None,
        since: int | None = None,
    ) -> EventSource:
        if self.fault == "leak":
            task = asyncio.create_task(asyncio.sleep(3600), name="dfdb-injected-leak")
            _leaked.add(task)
        if self.fault == "trim" and since is not None:
            since = None  # start from now: whatever happened after `since` is silently gone
        forgotten: RawEvent | None = None
        if since is not None and since <= self._history_lost_upto:
            forgotten, since = RawEvent.resync(await self._head(tables, since)), None
        inner = await self.inner.watch(tables, topics, since)
        source = _FaultySource(inner, self.fault, self._open_sources, tables, self._drops)
        if forgotten is not None:
            source._pending.append(forgotten)
        return source

    async def _head(self, tables: Collection[str], default: int) -> int:
        return max([(await self.inner.list(t)).revision for t in tables], default=default)

    async def allocate_unique_key(self, table: str) -> int:
        return await self.inner.allocate_unique_key(table)

    async def compact(self) -> None:
        await self.inner.compact()


class _FaultySource(EventSource):
    def __init__(
        self,
        inner: EventSource,
        fault: str | None,
        registry: set[_FaultySource],
        tables: Collection[str],
        drops: list[int],
    ) -> None:
        self._drops = drops
        self.tables = frozenset(tables)
        self._inner = inner
        self._fault = fault
        self._count = 0
        self._pending: list[RawEvent] = []
        self._registry = registry
        self._cut = False
        registry.add(self)

    async def cut(self) -> None:
        self._cut = True
        await self._inner.aclose()  # wakes a read waiting on it

    async def __anext__(self) -> RawEvent:
        if self._cut:
            self._cut = False
            raise BackendUnavailableError("connection cut (injected)")
        if self._pending:
            return self._pending.pop()
        while True:
            try:
                event = await self._inner.__anext__()
            except StopAsyncIteration:
                if not self._cut:
                    raise
                self._cut = False
                raise BackendUnavailableError("connection cut (injected)") from None
            if event.action == "resync":
                if self._fault == "trim":
                    continue
                return event
            self._count += 1
            if self._fault == "drop" and self._count % 1000 == 0:
                continue
            if self._drops[0] > 0:
                self._drops[0] -= 1
                continue
            if self._fault == "reorder":
                nxt: RawEvent | None = None
                with contextlib.suppress(TimeoutError):
                    nxt = await asyncio.wait_for(self._inner.__anext__(), 0.05)
                if nxt is not None:
                    if (nxt.table, nxt.id) == (event.table, event.id):
                        self._pending.append(event)
                        return nxt
                    self._pending.append(nxt)
            return event

    @property
    def position(self) -> int:
        return self._inner.position

    def caught_up(self) -> int | None:
        return self._inner.caught_up()

    async def add_topics(self, topics: Collection[str | None], since: int) -> None:
        await self._inner.add_topics(topics, since)

    async def aclose(self) -> None:
        self._registry.discard(self)
        await self._inner.aclose()


register_driver("faulty", FaultyDriver)
