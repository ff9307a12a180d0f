"""The Replica: a local controller's in-memory copy of the database, kept in sync.

Three modes: ``FULL`` (every object of the chosen models), ``SELECTIVE`` (the
subscribed topics plus topic-less objects, topics added and removed at run time) and
``REACTIVE`` (nothing up front; objects fetched on first access and kept fresh while
held, least recently used ones evicted). A Replica loads with a list, follows one
change stream from the list's cursor (reopened from its cursor when it breaks), never
lets a lower revision overwrite a higher one (deletes included), and answers
``RESYNC`` by relisting its scope. ``events()`` tells what changed, in dependency
order, coalesced per key and bounded per consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import logging
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from dfdb.errors import BackendUnavailableError, NotFoundError, StreamClosedError
from dfdb.events import Action, ChangeEvent, ChangeStream, parse_cursor
from dfdb.nb import NbApi
from dfdb.nbmodel import NbModel, dependency_order, reference_targets, validate_key
from dfdb.retry import Backoff

__all__ = ["ChassisTopics", "Replica", "ReplicaEvent", "ReplicaEvents", "ReplicaStats", "SyncMode"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=NbModel)

_TOMBSTONES = 100_000


class SyncMode(enum.StrEnum):
    """How much of the database a :class:`Replica` holds."""

    FULL = "full"
    """Every object of the chosen models."""
    SELECTIVE = "selective"
    """The subscribed topics, plus topic-less objects."""
    REACTIVE = "reactive"
    """Objects fetched on first access (``Replica.fetch``), kept fresh while held."""


@dataclass(frozen=True, slots=True)
class ReplicaEvent:
    """A change the Replica applied: ``old`` is ``None`` for a create, ``new`` for a delete.

    ``RESYNC`` (``model`` ``None``) tells a consumer of ``events()`` that it fell too far
    behind: its pending events were dropped, and it should read the Replica's state again.
    """

    action: Action
    model: type[NbModel] | None
    id: str
    old: NbModel | None
    new: NbModel | None
    revision: int


@dataclass(frozen=True, slots=True)
class ReplicaStats:
    """Counters of a :class:`Replica` (``Replica.stats()``)."""

    objects: int
    """Objects held."""
    events: int
    """Changes applied."""
    deferred: int
    """Events held back until a reference target arrived (in all)."""
    deferred_now: int
    """Events waiting for a reference target now."""
    resyncs: int
    """Relists after a ``RESYNC``."""
    reconnects: int
    """Times the change stream was reopened from its cursor."""
    lag: int
    """Events applied but not yet taken by the slowest ``events()`` consumer."""
    position: int
    """Every change of the scope up to this revision is applied."""
    records_read: int
    """Change records the change streams read from the server (the initial lists not included)."""
    bytes_read: int
    """The size of those records as the driver received them."""
    evictions: int
    """Objects evicted to stay within ``max_objects`` (REACTIVE)."""


class _Consumer:
    """One ``events()`` consumer: pending events coalesced per key, at most ``limit`` keys;
    past that the pending events are replaced by one ``RESYNC``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending: dict[tuple[type[NbModel] | None, str], ReplicaEvent] = {}
        self.ready = asyncio.Event()
        self.overflows = 0

    def push(self, event: ReplicaEvent) -> None:
        key = (event.model, event.id)
        before = self.pending.pop(key, None)
        merged = event if before is None else _coalesce(before, event)
        if merged is not None:
            self.pending[key] = merged
        if len(self.pending) > self.limit:
            self.overflows += 1
            self.pending = {(None, ""): ReplicaEvent(Action.RESYNC, None, "", None, None, event.revision)}
        self.ready.set()

    async def get(self) -> ReplicaEvent:
        while not self.pending:
            self.ready.clear()
            await self.ready.wait()
        key = next(iter(self.pending))
        return self.pending.pop(key)


def _coalesce(first: ReplicaEvent, then: ReplicaEvent) -> ReplicaEvent | None:
    """One event with the effect of ``first`` followed by ``then`` on the same key (``None``:
    nothing happened, a create undone by a delete)."""
    if first.action == Action.RESYNC:
        return first
    if first.action == Action.CREATE:
        if then.action == Action.DELETE:
            return None
        return ReplicaEvent(Action.CREATE, then.model, then.id, None, then.new, then.revision)
    if first.action == Action.DELETE and then.action == Action.CREATE:
        return ReplicaEvent(Action.UPDATE, then.model, then.id, first.old, then.new, then.revision)
    return ReplicaEvent(then.action, then.model, then.id, first.old, then.new, then.revision)


class Replica:
    """An indexed local copy of ``models``; use it with ``async with``.

    Args:
        nb: an open :class:`NbApi`.
        models: the models to hold.
        mode: :attr:`SyncMode.FULL`, :attr:`SyncMode.SELECTIVE` or :attr:`SyncMode.REACTIVE`.
        topics: the first topics of a selective Replica.
        max_objects: the most objects a reactive Replica holds (least recently used
            ones are evicted).
        max_pending: the most keys an ``events()`` consumer may have pending before
            its pending events turn into one ``RESYNC``.
    """

    def __init__(
        self,
        nb: NbApi,
        models: Sequence[type[NbModel]],
        *,
        mode: SyncMode = SyncMode.FULL,
        topics: Iterable[str] = (),
        max_objects: int = 10_000,
        max_pending: int = 10_000,
    ) -> None:
        if not models:
            raise ValueError("a Replica needs at least one model")
        if max_objects < 1 or max_pending < 1:
            raise ValueError("max_objects and max_pending must be positive")
        self.nb = nb
        self.models = dependency_order(models)
        self.mode = SyncMode(mode)
        self.max_objects = max_objects
        self.max_pending = max_pending
        self._topics: set[str] = {validate_key(t, "topic") for t in topics}
        if self.mode is not SyncMode.SELECTIVE and self._topics:
            raise ValueError("topics are for SyncMode.SELECTIVE")
        self._held_topics: dict[str | None, int] = {}  # REACTIVE: objects held per topic
        self._partial: set[str] = set()  # SELECTIVE: removed topics whose referenced objects stay
        self._recent: dict[tuple[type[NbModel], str], None] = {}  # REACTIVE: least recent first
        self._waiting: dict[tuple[type[NbModel], str], list[tuple[ReplicaEvent, set[tuple[type[NbModel], str]]]]] = {}
        self._deferred_now = 0
        self.deferred = 0
        """Events held back until a reference target arrived (in all)."""
        self.reconnects = 0
        """Times the change stream was reopened from its cursor."""
        self.evictions = 0
        """Objects evicted to stay within ``max_objects``."""
        self.corrupt = 0
        """Changes whose value failed validation (their keys were evicted)."""
        self._records_before = 0
        self._bytes_before = 0
        self._background: set[asyncio.Task[None]] = set()
        self._reopened = asyncio.Event()
        self._muted = False
        self._store: dict[type[NbModel], dict[str, tuple[NbModel, int]]] = {m: {} for m in self.models}
        self._indexes: dict[type[NbModel], dict[tuple[str, ...], defaultdict[Hashable, set[str]]]] = {
            m: {index: defaultdict(set) for index in m.__indexes__} for m in self.models
        }
        self._tombstones: dict[tuple[type[NbModel], str], int] = {}
        self._position = 0
        self._synced = asyncio.Event()
        self._progress = asyncio.Event()
        self._stream: ChangeStream | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribers: set[_Consumer] = set()
        self._lock = asyncio.Lock()
        self._failure: BaseException | None = None
        self.resyncs = 0
        """How many times the Replica relisted its scope after a ``RESYNC``."""
        self.events_applied = 0
        """How many changes the Replica applied."""

    # ------------------------------------------------------------ lifecycle
    def _scope(self) -> set[str | None] | None:
        """The topics the stream follows (``None``: every topic)."""
        if self.mode is SyncMode.FULL:
            return None
        if self.mode is SyncMode.SELECTIVE:
            return {None, *self._topics, *self._partial}
        return set(self._held_topics)

    def _evict_corrupt(self, model: type[NbModel], id: str, revision: int) -> None:
        """A change of ``id`` failed validation: evict the key rather than keep an outdated copy."""
        self.corrupt += 1
        held = self._store.get(model, {}).get(id)
        log.warning("replica evicts %s/%s: its value at revision %d is not valid", model.__table__, id, revision)
        if held is not None and held[1] < revision:
            self._drop_row(model, id)
            self._remember_delete(model, id, revision)
            self._emit(ReplicaEvent(Action.DELETE, model, id, held[0], None, revision))

    def _watch(self, since: str | None = None) -> ChangeStream:
        stream = self.nb.watch(self.models, topics=self._scope(), since=since)
        stream.on_corrupt = self._evict_corrupt
        return stream

    async def __aenter__(self) -> Replica:
        stream = self._watch()
        await stream.open()
        self._stream = stream
        try:
            if self.mode is not SyncMode.REACTIVE:
                await self._load(self._topics if self.mode is SyncMode.SELECTIVE else None)
        except BaseException:
            await stream.aclose()
            raise
        self._synced.set()
        self._task = asyncio.create_task(self._follow(), name="dfdb-replica")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop following; idempotent."""
        for pending in list(self._background):
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()
        self._synced.clear()
        self._progress.set()

    # ------------------------------------------------------------ loading
    async def _load(self, topics: set[str] | None) -> None:
        """List the scope (all, or ``topics`` plus topic-less objects) into the store."""
        for model in self.models:
            if topics is None:
                listings = [await self.nb.list(model)]
            else:
                listings = [await self.nb.list(model, topic=t) for t in sorted(topics)]
                listings.append(await self.nb.list(model))  # topic-less objects are filtered below
            for listing in listings:
                self._position = max(self._position, parse_cursor(listing.cursor)[1])
                for obj in listing.items:
                    if topics is not None and obj.topic is not None and obj.topic not in topics:
                        continue
                    origin = obj._dfdb_origin
                    self._apply(model, obj.id, obj, origin[0] if origin else 0)

    def _apply(self, model: type[NbModel], id: str, obj: NbModel | None, revision: int) -> None:
        table = self._store[model]
        held = table.get(id)
        if held is not None and held[1] >= revision:
            return
        gone = self._tombstones.get((model, id))
        if gone is not None and gone >= revision:
            return
        if obj is None:
            if held is None:
                self._remember_delete(model, id, revision)
                return
            self._drop_row(model, id)
            self._remember_delete(model, id, revision)
            self._emit(ReplicaEvent(Action.DELETE, model, id, held[0], None, revision))
        else:
            self._tombstones.pop((model, id), None)
            self._put_row(model, id, obj, revision)
            action = Action.CREATE if held is None else Action.UPDATE
            self._emit(ReplicaEvent(action, model, id, held[0] if held else None, obj, revision))

    def _put_row(self, model: type[NbModel], id: str, obj: NbModel, revision: int) -> None:
        rows = self._store[model]
        held = rows.get(id)
        for index, entries in self._indexes[model].items():
            old_keys = _index_keys(held[0], index) if held is not None else set()
            new_keys = _index_keys(obj, index)
            for key in old_keys - new_keys:
                _discard(entries, key, id)
            for key in new_keys - old_keys:
                entries[key].add(id)
        rows[id] = (obj, revision)
        if self.mode is SyncMode.REACTIVE:
            if held is None:
                self._held_topics[obj.topic] = self._held_topics.get(obj.topic, 0) + 1
            self._recent.pop((model, id), None)
            self._recent[(model, id)] = None

    def _drop_row(self, model: type[NbModel], id: str) -> None:
        held = self._store[model].pop(id, None)
        if held is None:
            return
        for index, entries in self._indexes[model].items():
            for key in _index_keys(held[0], index):
                _discard(entries, key, id)
        if self.mode is SyncMode.REACTIVE:
            self._recent.pop((model, id), None)
            left = self._held_topics.get(held[0].topic, 0) - 1
            if left > 0:
                self._held_topics[held[0].topic] = left
            else:
                self._held_topics.pop(held[0].topic, None)

    def _remember_delete(self, model: type[NbModel], id: str, revision: int) -> None:
        self._tombstones[(model, id)] = revision
        if len(self._tombstones) > _TOMBSTONES:
            del self._tombstones[next(iter(self._tombstones))]

    def _emit(self, event: ReplicaEvent) -> None:
        self.events_applied += 1
        assert event.model is not None
        key = (event.model, event.id)
        if event.action == Action.DELETE:
            self._release(key, force=True)  # its own held-back events go first, never dropped
        elif event.new is not None:
            missing = {
                (target, ref)
                for target, ref in reference_targets(event.new)
                if target in self._store and ref not in self._store[target]
            }
            if missing and self.mode is not SyncMode.REACTIVE:
                self.deferred += 1
                self._deferred_now += 1
                entry = (event, missing)
                for ref in missing:
                    self._waiting.setdefault(ref, []).append(entry)
                return
        self._deliver(event)
        if event.action != Action.DELETE:
            self._release(key)

    def _release(self, key: tuple[type[NbModel], str], *, force: bool = False) -> None:
        """Deliver the events that waited for ``key`` (all of them when ``force``)."""
        for event, missing in self._waiting.pop(key, []):
            missing.discard(key)
            if missing and not force:
                continue
            for other in missing:
                waiting = self._waiting.get(other, [])
                waiting[:] = [(e, m) for e, m in waiting if e is not event]
                if not waiting:
                    self._waiting.pop(other, None)
            self._deferred_now -= 1
            self._deliver(event)
            assert event.model is not None
            self._release((event.model, event.id))

    def _deliver(self, event: ReplicaEvent) -> None:
        if self._muted:
            return
        for consumer in self._subscribers:
            consumer.push(event)

    async def _follow(self) -> None:
        """Apply the stream's events; reopen it from its cursor when it breaks or ends."""
        backoff = Backoff()
        failures = 0
        cursor: str | None = None
        while True:
            stream = self._stream
            assert stream is not None
            try:
                async for ev in stream:
                    await self._on_event(ev)
                    # the cursor, not the event's revision: on an unordered driver an older
                    # change of another topic may still be on its way
                    self._position = max(self._position, parse_cursor(ev.cursor)[1])
                    self._progress.set()
                    failures = 0
            except (BackendUnavailableError, StreamClosedError) as exc:
                log.warning("replica stream broke (%s); reopening from its cursor", exc)
            except Exception as exc:
                self._failure = exc
                self._synced.clear()
                self._progress.set()
                log.error("replica stopped following: %s", exc)
                raise
            self._synced.clear()
            with contextlib.suppress(StreamClosedError):  # a stream that never opened keeps the last one
                cursor = stream.cursor
            self._records_before += stream.records_read
            self._bytes_before += stream.bytes_read
            await stream.aclose()
            if failures:
                await asyncio.sleep(backoff.delay(failures))
            failures += 1
            self.reconnects += 1
            fresh = self._watch(cursor)
            self._stream = fresh  # from here on aclose() closes it, whatever happens below
            try:
                await fresh.open()
                missing = (self._scope() or set()) - (fresh.topics or set())
                if fresh.topics is not None and missing and cursor is not None:
                    await fresh.add_topics(missing, since=cursor)  # followed while it was reopening
            except BackendUnavailableError as exc:
                log.warning("reopening the replica stream failed (%s); retrying", exc)
                continue
            self._synced.set()
            self._reopened.set()

    async def _reopen(self) -> None:
        """Make the follower reopen its stream (with the current scope) from its cursor."""
        stream = self._stream
        source = getattr(stream, "_source", None)
        if source is None:
            return
        self._reopened.clear()
        await source.aclose()  # the stream ends; the follower reopens it
        while not self._reopened.is_set() and self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reopened.wait(), 1)

    async def _on_event(self, ev: ChangeEvent) -> None:
        if ev.action == Action.RESYNC:
            await self._resync()
            return
        if ev.model is None or ev.model not in self._store:
            return
        if self.mode is SyncMode.SELECTIVE and ev.topic is not None and ev.topic not in self._topics:
            if ev.topic not in self._partial or ev.id not in self._store[ev.model]:
                return  # a removed topic is followed only for the objects still referenced
        if self.mode is SyncMode.REACTIVE and ev.id not in self._store[ev.model]:
            return  # only held objects are kept fresh
        if ev.action == Action.DELETE:
            self._apply(ev.model, ev.id, None, ev.revision)
        elif ev.obj is not None:
            self._apply(ev.model, ev.id, ev.obj, ev.revision)

    async def _resync(self) -> None:
        """History was lost: relist the scope and replace it, emitting updates and deletes."""
        self.resyncs += 1
        self._synced.clear()
        async with self._lock:
            before = {m: dict(rows) for m, rows in self._store.items()}
            for model, rows in self._store.items():
                rows.clear()
                for entries in self._indexes[model].values():
                    entries.clear()
            self._tombstones.clear()
            self._recent.clear()
            self._held_topics = dict.fromkeys(self._held_topics, 0)  # still followed; counted again
            self._muted = True  # the reload's own events are replaced by the difference below
            try:
                if self.mode is SyncMode.REACTIVE:
                    await self._refetch(before)
                else:
                    await self._load(self._topics if self.mode is SyncMode.SELECTIVE else None)
            finally:
                self._muted = False
            for model, rows in before.items():
                now = self._store[model]
                for id, (old, _) in rows.items():
                    if id not in now:
                        self._emit(ReplicaEvent(Action.DELETE, model, id, old, None, self._position))
                    elif now[id][0] != old:
                        self._emit(ReplicaEvent(Action.UPDATE, model, id, old, now[id][0], now[id][1]))
                for id, (obj, rev) in now.items():
                    if id not in rows:
                        self._emit(ReplicaEvent(Action.CREATE, model, id, None, obj, rev))
        self._synced.set()

    # ------------------------------------------------------------ state
    @property
    def synced(self) -> bool:
        """Whether the Replica is loaded and following its stream."""
        return self._synced.is_set() and self._task is not None and not self._task.done()

    async def wait_synced(self) -> None:
        """Return once the Replica is loaded and following."""
        await self._synced.wait()

    async def wait_for(self, revision: int) -> None:
        """Return once the Replica has applied every change of its scope up to ``revision``
        (read-your-writes: pass the revision of your own write within the scope).

        Raises:
            StreamClosedError: the Replica stopped.
        """
        while self._applied_up_to() < revision:
            if self._task is None or self._task.done():
                raise StreamClosedError(f"the replica stopped before revision {revision}: {self._failure}")
            self._progress.clear()
            # an idle stream's cursor also moves without events (progress notifications)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), 0.05)

    def _applied_up_to(self) -> int:
        """Every change of the scope up to this revision is applied."""
        stream = self._stream
        if stream is None or not self._synced.is_set() or self._lock.locked():
            return self._position
        with contextlib.suppress(StreamClosedError):
            self._position = max(self._position, parse_cursor(stream.cursor)[1])
        return self._position

    # ------------------------------------------------------------ topics
    async def add_topic(self, topic: str) -> None:
        """Load ``topic`` and follow it; returns once it is loaded, with no gap."""
        if self.mode is not SyncMode.SELECTIVE:
            raise ValueError("add_topic needs SyncMode.SELECTIVE")
        validate_key(topic, "topic")
        if topic in self._topics or self._stream is None:
            return
        async with self._lock:
            # follow first, from the stream's own position, then list: every change after
            # that position arrives, and the listings (taken later) are never newer than it
            await self._stream.add_topics({topic}, since=self._stream.cursor)
            self._topics.add(topic)
            self._partial.discard(topic)
            for model in self.models:
                listing = await self.nb.list(model, topic=topic)
                for obj in listing.items:
                    origin = obj._dfdb_origin
                    self._apply(model, obj.id, obj, origin[0] if origin else 0)

    async def remove_topic(self, topic: str) -> None:
        """Stop following ``topic`` and evict its objects in reverse dependency order, except
        objects still referenced by objects the Replica keeps (they stay until released)."""
        if self.mode is not SyncMode.SELECTIVE:
            raise ValueError("remove_topic needs SyncMode.SELECTIVE")
        async with self._lock:
            if topic not in self._topics:
                return
            self._topics.discard(topic)
            self._partial.add(topic)
            # evict what nothing in scope references (again for topics removed before)
            leaving = {(m, i) for m in self.models for i, (o, _) in self._store[m].items() if o.topic in self._partial}
            kept = {
                ref
                for m in self.models
                for i, (o, _) in self._store[m].items()
                if (m, i) not in leaving
                for ref in reference_targets(o)
            }
            for model in reversed(self.models):
                rows = self._store[model]
                for id in sorted(i for m, i in leaving if m is model):
                    if (model, id) in kept:
                        continue
                    obj, rev = rows[id]
                    self._drop_row(model, id)
                    self._emit(ReplicaEvent(Action.DELETE, model, id, obj, None, rev))
            held = {o.topic for m in self.models for o, _ in self._store[m].values()}
            self._partial &= {t for t in held if t is not None}
            await self._reopen()

    # ------------------------------------------------------------ reactive
    async def fetch(self, model: type[M], id: str) -> M | None:
        """The object from the Replica, fetched from the database (with the objects it
        references) on a miss and kept fresh while held; ``None`` when it does not exist.

        Raises:
            ValueError: the Replica is not REACTIVE, or ``model`` is not one of its models.
        """
        if self.mode is not SyncMode.REACTIVE:
            raise ValueError("fetch needs SyncMode.REACTIVE; use get")
        if model not in self._store:
            raise ValueError(f"{model.__name__} is not one of this Replica's models")
        held = self._store[model].get(id)
        if held is not None:
            self._recent.pop((model, id), None)
            self._recent[(model, id)] = None
            return held[0]  # type: ignore[return-value]
        await self._fetch(model, id, depth=3)
        self._evict()
        found = self._store[model].get(id)
        return found[0] if found is not None else None  # type: ignore[return-value]

    async def _fetch(self, model: type[NbModel], id: str, depth: int) -> None:
        try:
            obj = await self.nb.get(model, id)
        except NotFoundError:
            return
        await self._follow_topic(obj.topic)
        fresh = await self.nb.get(model, id)  # read again after following: nothing falls between
        origin = fresh._dfdb_origin
        self._apply(model, id, fresh, origin[0] if origin else 0)
        if depth > 0:
            for target, ref in reference_targets(fresh):
                if target in self._store and ref not in self._store[target]:
                    with contextlib.suppress(NotFoundError):
                        await self._fetch(target, ref, depth - 1)

    async def _follow_topic(self, topic: str | None) -> None:
        stream = self._stream
        if stream is None or topic in self._held_topics:
            return
        self._held_topics.setdefault(topic, 0)
        with contextlib.suppress(StreamClosedError):  # reopening: the new stream follows it
            await stream.add_topics({topic}, since=stream.cursor)

    def _evict(self) -> None:
        """Drop least recently used objects beyond ``max_objects``; a topic whose last
        object goes is no longer followed."""
        dropped = False
        while len(self._recent) > self.max_objects:
            model, id = next(iter(self._recent))
            self._drop_row(model, id)
            self._recent.pop((model, id), None)
            self.evictions += 1
            dropped = True
        if dropped:
            for topic in [t for t, n in self._held_topics.items() if n <= 0]:
                del self._held_topics[topic]
            if self._stream is not None and self._stream.topics != self._scope():
                self._reopen_soon()

    def _reopen_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reopen())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refetch(self, before: dict[type[NbModel], dict[str, tuple[NbModel, int]]]) -> None:
        """After a ``RESYNC`` in REACTIVE mode: fetch again what was held."""
        for model, rows in before.items():
            for id in rows:
                with contextlib.suppress(NotFoundError):
                    obj = await self.nb.get(model, id)
                    origin = obj._dfdb_origin
                    self._apply(model, id, obj, origin[0] if origin else 0)

    @property
    def topics(self) -> frozenset[str]:
        """The subscribed topics (SELECTIVE)."""
        return frozenset(self._topics)

    # ------------------------------------------------------------ lookups
    def get(self, model: type[M], id: str) -> M | None:
        """The cached object, or ``None`` (a lookup, not a query)."""
        held = self._store.get(model, {}).get(id)
        return held[0] if held is not None else None  # type: ignore[return-value]

    def get_all(self, model: type[M], topic: str | None = None) -> list[M]:
        """Every cached object of ``model`` (of one ``topic`` when given), sorted by id."""
        rows = self._store.get(model, {})
        return [obj for _, (obj, _) in sorted(rows.items()) if topic is None or obj.topic == topic]  # type: ignore[misc]

    def by_index(self, model: type[M], index: str | tuple[str, ...], value: Hashable) -> list[M]:
        """The cached objects whose ``index`` (declared on the model) holds ``value``, sorted
        by id. A list field matches each element; a multi-field index takes a tuple.

        Raises:
            KeyError: ``model`` declares no such index.
        """
        key = (index,) if isinstance(index, str) else tuple(index)
        entries = self._indexes.get(model, {}).get(key)
        if entries is None:
            raise KeyError(f"{model.__name__} declares no index {index!r} (indexes: {model.__indexes__})")
        rows = self._store[model]
        return [rows[i][0] for i in sorted(entries.get(value, ()))]  # type: ignore[misc]

    def get_one(self, model: type[M], index: str | tuple[str, ...], value: Hashable) -> M | None:
        """The one cached object whose ``index`` holds ``value``, or ``None``.

        Raises:
            ValueError: more than one object matches.
            KeyError: ``model`` declares no such index.
        """
        found = self.by_index(model, index, value)
        if len(found) > 1:
            raise ValueError(f"{len(found)} {model.__name__} objects have {index}={value!r}: {[o.id for o in found]}")
        return found[0] if found else None

    def resolve(self, ref: str, model: type[M] | None = None) -> M | None:
        """The cached target of a reference (``Ref`` values know their model), or ``None``."""
        target = model or getattr(ref, "target", None)
        if target is None:
            raise ValueError(f"cannot tell which model {ref!r} refers to; pass the model")
        return self.get(target, ref)

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._store.values())

    def events(self) -> ReplicaEvents:
        """The changes applied from now on (subscribed when this returns), as
        :class:`ReplicaEvent`, an object's event after those of the objects it references.
        Pending changes of one key are merged (a create then an update is one create); a
        consumer with more than ``max_pending`` keys pending gets one ``RESYNC`` instead of
        them, and should read the state again. Close it with ``aclose``."""
        consumer = _Consumer(self.max_pending)
        self._subscribers.add(consumer)
        return ReplicaEvents(self._subscribers, consumer)

    def stats(self) -> ReplicaStats:
        """The Replica's counters now."""
        stream = self._stream
        return ReplicaStats(
            objects=len(self),
            events=self.events_applied,
            deferred=self.deferred,
            deferred_now=self._deferred_now,
            resyncs=self.resyncs,
            reconnects=self.reconnects,
            lag=max((len(c.pending) for c in self._subscribers), default=0),
            position=self._applied_up_to(),
            records_read=self._records_before + (stream.records_read if stream is not None else 0),
            bytes_read=self._bytes_before + (stream.bytes_read if stream is not None else 0),
            evictions=self.evictions,
        )


class ReplicaEvents:
    """An async iterator of :class:`ReplicaEvent` from ``Replica.events()``."""

    def __init__(self, subscribers: set[_Consumer], consumer: _Consumer) -> None:
        self._subscribers = subscribers
        self._consumer = consumer

    def __aiter__(self) -> ReplicaEvents:
        return self

    async def __anext__(self) -> ReplicaEvent:
        if self._consumer not in self._subscribers:
            raise StopAsyncIteration
        return await self._consumer.get()

    async def aclose(self) -> None:
        """Unsubscribe; idempotent."""
        self._subscribers.discard(self._consumer)

    def __del__(self) -> None:
        self._subscribers.discard(self._consumer)


class ChassisTopics:
    """Dragonflow's selective topology for one controller: a SELECTIVE Replica follows a
    tenant's topic while this chassis has a port bound in it.

    Tell it about local ports as the controller learns of them (``port_bound``; in
    Dragonflow, from the local switch); it also follows the Replica's own changes, so a
    port deleted or bound elsewhere stops counting. The first local port of a tenant
    subscribes its topic, a second one does not subscribe again, and the topic is removed
    when the last one goes.

    Args:
        replica: a SELECTIVE :class:`Replica`.
        chassis: this controller's chassis id.
        chassis_of: the chassis a port is bound to (default: ``port.binding.chassis``).
    """

    def __init__(
        self,
        replica: Replica,
        chassis: str,
        chassis_of: Callable[[NbModel], str | None] | None = None,
    ) -> None:
        if replica.mode is not SyncMode.SELECTIVE:
            raise ValueError("ChassisTopics needs a SELECTIVE Replica")
        self.replica = replica
        self.chassis = chassis
        self._chassis_of = chassis_of or _binding_chassis
        self._ports: dict[str, set[str]] = {}
        self.subscriptions = 0
        """How many times a topic was subscribed."""

    def local_ports(self, topic: str) -> frozenset[str]:
        """The ids of this chassis's ports known in ``topic``."""
        return frozenset(self._ports.get(topic, ()))

    async def port_bound(self, port: NbModel) -> None:
        """``port`` is bound to this chassis: follow its topic (once per topic)."""
        if port.topic is None or self._chassis_of(port) != self.chassis:
            return
        ports = self._ports.setdefault(port.topic, set())
        first = not ports
        ports.add(port.id)
        if first:
            self.subscriptions += 1
            await self.replica.add_topic(port.topic)

    async def port_unbound(self, topic: str, port_id: str) -> None:
        """The port is gone from this chassis: drop its topic when it was the last one."""
        ports = self._ports.get(topic)
        if ports is None or port_id not in ports:
            return
        ports.discard(port_id)
        if not ports:
            del self._ports[topic]
            await self.replica.remove_topic(topic)

    async def observe(self, event: ReplicaEvent) -> None:
        """Account for a change of the Replica (pass every ``replica.events()`` item)."""
        if event.action == Action.RESYNC:
            for topic in list(self._ports):
                for port_id in list(self._ports.get(topic, ())):
                    held = self.replica.get(_model_of_ports(self.replica, topic, port_id), port_id)
                    if held is None or self._chassis_of(held) != self.chassis:
                        await self.port_unbound(topic, port_id)
            return
        obj = event.new if event.new is not None else event.old
        if obj is None or obj.topic is None:
            return
        if event.new is not None and self._chassis_of(event.new) == self.chassis:
            await self.port_bound(event.new)
        elif obj.id in self._ports.get(obj.topic, ()):
            await self.port_unbound(obj.topic, obj.id)


def _binding_chassis(port: NbModel) -> str | None:
    binding = getattr(port, "binding", None)
    chassis = getattr(binding, "chassis", None)
    return str(chassis) if chassis is not None else None


def _model_of_ports(replica: Replica, topic: str, port_id: str) -> type[NbModel]:
    for model in replica.models:
        if port_id in replica._store[model]:
            return model
    return replica.models[-1]


def _path_values(value: object, parts: Sequence[str]) -> list[Hashable]:
    """The values at a dotted path; lists along the way fan out, ``None`` yields nothing."""
    current = _fan_out(value)
    for part in parts:
        current = [x for v in current for x in _fan_out(getattr(v, part, None))]
    return [v for v in current if isinstance(v, Hashable)]


def _fan_out(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, list | tuple | set | frozenset):
        return [x for item in value for x in _fan_out(item)]
    return [value]


@functools.cache
def _split_paths(index: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(path.split(".")) for path in index)


def _index_keys(obj: NbModel, index: tuple[str, ...]) -> set[Hashable]:
    paths = _split_paths(index)
    if len(paths) == 1 and len(paths[0]) == 1:  # one plain field: the common case
        value = getattr(obj, paths[0][0], None)
        if value is None:
            return set()
        if not isinstance(value, list | tuple | set | frozenset):
            return {value} if isinstance(value, Hashable) else set()
    values = [_path_values(obj, path) for path in paths]
    if len(index) == 1:
        return set(values[0])
    return set(itertools.product(*values))


def _discard(entries: defaultdict[Hashable, set[str]], key: Hashable, id: str) -> None:
    ids = entries.get(key)
    if ids is not None:
        ids.discard(id)
        if not ids:
            del entries[key]
