"""The :class:`Replica` itself: loading, following its change stream, topics, lookups."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TypeVar, cast

import anyio

from dfdb._collector import collector_paused
from dfdb.background import BackgroundTask
from dfdb.codec import decode
from dfdb.drivers.base import Entry
from dfdb.errors import BackendUnavailableError, CorruptObjectError, StreamClosedError
from dfdb.events import Action, ChangeEvent, ChangeStream, parse_cursor
from dfdb.nb import NbApi, revision_of
from dfdb.nbmodel import NbModel, dependency_order, validate_key
from dfdb.replica import relist as relisting
from dfdb.replica.antientropy import AntiEntropy, CheckReport
from dfdb.replica.events import EventFlow, Flag, ReplicaEvent, ReplicaEvents
from dfdb.replica.lazy import list_raw
from dfdb.replica.loading import built, fill_raw, validate_held
from dfdb.replica.modes import ReplicaStats, SyncMode
from dfdb.replica.pacing import RELISTS, RelistLimiter
from dfdb.replica.reactive import Reactive
from dfdb.replica.relist import Keys, Listings, emit_difference, kept_only, list_scope, refetch, until_done
from dfdb.replica.store import Row, Store
from dfdb.retry import Backoff

__all__ = ["Replica"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=NbModel)


class Replica(Reactive):
    """An indexed local copy of ``models``; use it with ``async with``.

    Its background work (following the change stream, reopening it) runs in a task group
    the Replica owns from ``__aenter__`` to ``aclose``; like every anyio task group it is
    closed by the task that opened it, and several Replicas close in the reverse order of
    opening (as nested ``async with`` blocks do). It runs on asyncio and on trio.

    Args:
        nb: an open :class:`NbApi`.
        models: the models to hold.
        mode: :attr:`SyncMode.FULL`, :attr:`SyncMode.SELECTIVE` or :attr:`SyncMode.REACTIVE`.
        topics: the first topics of a selective Replica.
        max_objects: the most objects a reactive Replica holds (least recently used
            ones are evicted).
        max_pending: the most keys an ``events()`` consumer may have pending before
            its pending events turn into one ``RESYNC``.
        relists: the limiter its relists wait for after a ``RESYNC`` (default: the one the
            Replicas of the process share, :data:`dfdb.replica.pacing.RELISTS`).
        topicless: the models whose topic-less objects a SELECTIVE Replica lists (default:
            every model; naming only the global ones, such as ``Chassis``, spares reading
            whole tables of tenant objects to find none).
        check_interval: seconds between consistency checks against the database (each
            jittered by ±50 %; ``None``: only :meth:`check` when called); see
            :mod:`dfdb.replica.antientropy`.
        check_settle: the most seconds a check waits for the Replica to catch up with
            the database's revision before it compares.
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
        relists: RelistLimiter | None = None,
        topicless: Iterable[type[NbModel]] | None = None,
        check_interval: float | None = 60.0,
        check_settle: float = 2.0,
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
        self.relists = relists or RELISTS
        self._topicless = self.models if topicless is None else [m for m in self.models if m in set(topicless)]
        if isinstance(topics, str):
            raise TypeError(f"topics must be a collection of topics, not the string {topics!r}")
        self._topics: set[str] = {validate_key(t, "topic") for t in topics}
        if self.mode is not SyncMode.SELECTIVE and self._topics:
            raise ValueError("topics are for SyncMode.SELECTIVE")
        self._held_topics: dict[str | None, int] = {}  # REACTIVE: objects held per topic
        self._partial: set[str] = set()  # SELECTIVE: removed topics whose referenced objects stay
        self._recent: dict[tuple[type[NbModel], str], None] = {}  # REACTIVE: least recent first
        self._store = Store(self.models, self._build)
        self._flow = EventFlow(self._missing, max_pending, defer=self.mode is not SyncMode.REACTIVE)
        self.reconnects = 0
        """Times the change stream was reopened from its cursor."""
        self.evictions = 0
        """Objects evicted to stay within ``max_objects``."""
        self.corrupt = 0
        """Changes whose value failed validation (their keys were evicted)."""
        self.resyncs = 0
        """How many times the Replica relisted its scope after a ``RESYNC``."""
        self.relist_wait, self.relisted = 0.0, 0
        """Seconds its relists waited for their turn, and objects they read, in all."""
        self._follower = BackgroundTask("dfdb-replica")
        self._checker = AntiEntropy(self, check_interval, check_settle)
        self._checks = BackgroundTask("dfdb-replica-check")
        self._validator = BackgroundTask("dfdb-replica-validate")
        self._validated = Flag()  # every entry of the last lazy load was validated (or built)
        self._validated.set()
        self._loading: set[str] = set()  # SELECTIVE: topics being added (followed, not loaded yet)
        self._relisted: dict[tuple[type[NbModel], str | None], int] = {}  # (model, topic; None: all) -> listed at
        self._relisted_in = ""  # the dataset those revisions belong to
        self._dataset = ""  # the dataset the rows held are of (the stream's)
        self._entered = False
        self._records_read = self._bytes_read = 0  # of the stream, once closed
        self._following = False
        self._position = 0
        self._synced = Flag()
        self._progress = Flag()
        self._stream: ChangeStream | None = None
        self._lock = anyio.Lock()
        self._failure: BaseException | None = None
        nb._counters.attach(self)  # its counters are served with the NbApi's (dfdb.metrics)

    @property
    def deferred(self) -> int:
        """Events held back until a reference target arrived (in all)."""
        return self._flow.deferred

    @property
    def events_applied(self) -> int:
        """How many changes the Replica applied."""
        return self._flow.emitted

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
        held = self._store.row(model, id)
        log.warning("replica evicts %s/%s: its value at revision %d is not valid", model.__table__, id, revision)
        if held is not None and held[1] < revision:
            self._drop_row(model, id)
            self._store.remember_delete(model, id, revision)
            self._flow.emit(ReplicaEvent(Action.DELETE, model, id, held[0], None, revision, corrupt=True))

    async def __aenter__(self) -> Replica:
        if self._entered:
            raise StreamClosedError("a Replica can be entered only once")
        self._entered = True
        stream = self.nb.watch(self.models, topics=self._scope())
        stream.on_corrupt = self._evict_corrupt
        await stream.open()
        self._stream = stream
        try:
            if self.mode is not SyncMode.REACTIVE:
                await self._load(self._topics if self.mode is SyncMode.SELECTIVE else None)
            self._synced.set()
            self._following = True
            await self._follower.start(self._follow)
            if not self._validated.is_set():
                await self._validator.start(functools.partial(validate_held, self))
            if self._checker.interval is not None:
                await self._checks.start(self._checker.run)
        except BaseException:
            self._stream = None
            self._following = False
            self._synced.clear()
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop following and end the ``events()`` iterators; idempotent."""
        try:
            await self._checks.stop()
            await self._validator.stop()
            await self._follower.stop()
        finally:
            stream, self._stream = self._stream, None
            if stream is not None:
                self._records_read, self._bytes_read = stream.records_read, stream.bytes_read
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
            self._following = False
            self._synced.clear()
            self._progress.set()
            self._flow.end()

    # ------------------------------------------------------------ loading
    async def _load(self, topics: set[str] | None) -> None:
        """List the scope (all, or ``topics`` plus topic-less objects) into the store: lazily
        (:mod:`~dfdb.replica.lazy`) when no ``events()`` consumer waits for the objects."""
        if self._flow.subscribers or not any(self._store.readers.values()):
            self._fill(await list_scope(self.nb, self.models, topics, self._topicless), topics)
        else:
            fill_raw(self, await list_raw(self.nb, self.models, topics, self._topicless), topics)

    def _build(self, model: type[NbModel], entry: Entry) -> NbModel | None:
        """The object of an entry held unbuilt; ``None`` (reported) when its value is corrupt."""
        try:
            return decode(model, entry.id, entry.topic, entry.value, entry.revision)
        except CorruptObjectError as exc:
            self.corrupt += 1
            log.warning("replica drops %s/%s: its value at revision %d is not valid: %s",
                        model.__table__, entry.id, entry.revision, exc.reason)  # fmt: skip
            self._checker.known_corrupt(model, entry.id, entry.revision, entry.topic)
            return None

    def _fill(self, listings: Listings, topics: set[str] | None, *, whole: bool = True) -> Keys:
        """Apply ``listings`` to the store, with no await: readers never see half of it; returns
        the keys listed as corrupt (left out). ``whole``: together they cover the scope up to the
        oldest one's cursor, a position (a change made after it, between two listings, may be in
        none that covers it: it comes by the stream); one topic's is not a position."""
        corrupt = {(model, id) for model, listing in listings for id in listing.corrupt}
        if whole and listings:
            self._position = max(self._position, min(parse_cursor(lt.cursor)[1] for _, lt in listings))
        with collector_paused():  # as fill_raw
            for model, listing in listings:
                for obj in listing.items:
                    if topics is not None and obj.topic is not None and obj.topic not in topics:
                        continue
                    self._apply(model, obj.id, obj, revision_of(obj) or 0)
        return corrupt

    def _apply(self, model: type[NbModel], id: str, obj: NbModel | None, revision: int, expired: bool = False) -> None:
        if self._store.is_stale(model, id, revision):
            return
        held = self._store.row(model, id)
        if obj is None:
            if held is not None:
                self._drop_row(model, id)
            self._store.remember_delete(model, id, revision)
            if held is not None:
                self._flow.emit(ReplicaEvent(Action.DELETE, model, id, held[0], None, revision, expired=expired))
        else:
            self._put_row(model, id, obj, revision)
            action = Action.CREATE if held is None else Action.UPDATE
            self._flow.emit(ReplicaEvent(action, model, id, held[0] if held else None, obj, revision))

    def _put_row(self, model: type[NbModel], id: str, obj: NbModel, revision: int) -> None:
        held = self._store.put(model, id, obj, revision)
        if self.mode is SyncMode.REACTIVE:
            if held is None:
                self._held_topics[obj.topic] = self._held_topics.get(obj.topic, 0) + 1
            self._recent.pop((model, id), None)
            self._recent[(model, id)] = None

    def _drop_row(self, model: type[NbModel], id: str) -> None:
        held = self._store.drop(model, id)
        if held is not None and self.mode is SyncMode.REACTIVE:
            self._recent.pop((model, id), None)
            left = self._held_topics.get(held[0].topic, 0) - 1
            if left > 0:
                self._held_topics[held[0].topic] = left
            else:
                self._held_topics.pop(held[0].topic, None)

    def _missing(self, obj: NbModel) -> set[tuple[type[NbModel], str]]:
        """The reference targets of ``obj`` (of the Replica's models) that it does not hold."""
        return self._store.missing(obj)

    # ------------------------------------------------------------ following
    async def _follow(self) -> None:
        """Apply the stream's events; reopen it from its cursor when it breaks or ends."""
        try:
            await self._follow_stream()
        except Exception as exc:  # kept for wait_for and synced; the owner's task goes on
            self._failure = exc
            log.error("replica stopped following: %s", str(exc))
        finally:  # for good (the Replica or its NbApi closed, or a failure): consumers end too
            self._following = False
            self._synced.clear()
            self._progress.set()
            self._flow.end()

    async def _follow_stream(self) -> None:
        stream = self._stream
        assert stream is not None
        backoff = Backoff()
        failures = 0
        relist = False  # a RESYNC whose relist failed: done again before anything more is applied
        self._dataset = parse_cursor(stream.cursor)[0]  # the one its rows are of: the load's
        while True:
            try:
                if relist:
                    await self._resync()
                relist = False
                self._synced.set()  # also after a failed reopen: the old stream goes on
                async for ev in stream:
                    relist = ev.action == Action.RESYNC
                    await self._on_event(ev)
                    relist = False
                    # the cursor, not ev.revision: an unordered driver may still send older changes
                    self._dataset, at = parse_cursor(ev.cursor)
                    self._position = max(self._position, at)
                    self._progress.set()
                    failures = 0
                log.warning("replica stream ended; reopening it from its cursor")
            except BackendUnavailableError as exc:
                log.warning("replica stream broke (%s); reopening it from its cursor", str(exc))
            self._synced.clear()
            await anyio.sleep(backoff.delay(failures))  # jittered from the first: a fleet spreads out
            failures += 1
            self.reconnects += 1
            try:
                await stream.reopen()
            except StreamClosedError:
                return  # closed: the Replica is closing
            except BackendUnavailableError as exc:
                log.warning("reopening the replica stream failed (%s); retrying", str(exc))

    async def _narrow(self) -> None:
        """Stop following the topics the stream follows beyond the Replica's scope now."""
        stream = self._stream
        scope = self._scope()
        if stream is None or stream.topics is None or scope is None:
            return
        gone = stream.topics - scope
        if not gone:
            return
        try:
            await stream.remove_topics(gone)
        except StreamClosedError:
            pass  # closed: the Replica is closing
        except BackendUnavailableError as exc:  # the old subscription goes on; their events are filtered out
            log.warning("narrowing the replica stream failed (%s); its events are filtered out", str(exc))

    async def _on_event(self, ev: ChangeEvent) -> None:
        if ev.action == Action.RESYNC:
            dataset, at = parse_cursor(ev.cursor)  # revisions name one dataset's writes: not another's, nor
            keyed = dataset == self._dataset and at >= self._position  # those of one back to an older copy
            if not keyed:  # their revisions start again below those applied: waits count from the relist
                self._position = 0
            await until_done(lambda: self._resync(ev.model, ev.topic, keyed), "relisting the replica's scope")
            return
        if ev.model is None or ev.model not in self._store:
            return
        relisted = self._relisted
        if relisted and ev.revision <= max(relisted.get((ev.model, None), 0), relisted.get((ev.model, ev.topic), 0)):
            return  # a relist's listing holds it, or what came after it (a delete leaves no trace to compare)
        held = self._store.row(ev.model, ev.id) is not None
        t = ev.topic
        if self.mode is SyncMode.SELECTIVE and t is not None and t not in self._topics and t not in self._loading:
            if t not in self._partial or not held:
                return  # a removed topic is followed only for the objects still referenced
        if self.mode is SyncMode.REACTIVE and not held:
            return  # only held objects are kept fresh
        if ev.action == Action.DELETE:
            self._apply(ev.model, ev.id, None, ev.revision, ev.expired)
        elif ev.obj is not None:
            self._apply(ev.model, ev.id, ev.obj, ev.revision)

    async def _resync(self, model: type[NbModel] | None = None, topic: str | None = None, keyed: bool = False) -> None:
        """History was lost (of ``model`` and ``topic`` when named): wait for a relist's turn
        (the readers see the old contents meanwhile), relist that scope and replace it,
        emitting updates and deletes; ``keyed``: of the dataset held, so by keys first
        (:func:`~dfdb.replica.relist.list_changed`)."""
        if model is not None and model not in self._store:
            return
        models = self.models if model is None else [model]
        self._synced.clear()
        failure: Exception | None = None  # raised as itself, not in an exception group
        with anyio.CancelScope() as closing:  # cancelled when the NbApi closes: no wait outlives it
            async with anyio.create_task_group() as watch:
                watch.start_soon(relisting.end_when_closed, self.nb, closing)
                try:
                    await self._relist(models, model is not None or topic is not None, topic, keyed)
                except Exception as exc:
                    failure = exc
                finally:
                    watch.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if not closing.cancel_called:
            self._synced.set()

    async def _relist(self, models: list[type[NbModel]], part: bool, topic: str | None, keyed: bool) -> None:
        """Wait for a relist's turn, then relist ``models`` (of ``topic`` when named; ``part``:
        only the part a RESYNC named) and emit the difference."""
        scoped = part and self.mode is not SyncMode.REACTIVE
        async with self.relists.slot() as waited, self._lock:
            self.relist_wait += waited
            # the topics followed now, not when the RESYNC came: one added or removed while
            # this waited for its turn is relisted, or left out, with the rest
            topics: set[str] | None = None if topic is None else {topic}
            if self.mode is SyncMode.SELECTIVE:
                topics = self._topics | self._partial if topic is None else {topic} & (self._topics | self._partial)
                if not topics and topic is not None:
                    return  # a topic it neither follows nor keeps referenced objects of
            # list first and swap the contents with no await in between: a reader sees the
            # old contents or the new, never an empty or half-filled scope
            listings: Listings = []
            fetched: list[tuple[type[NbModel], NbModel, int]] = []
            if self.mode is SyncMode.REACTIVE:  # read first too: a relist failing part way changes nothing
                fetched = await refetch(self.nb, self._store.rows)
            else:
                topicless = self._topicless if topic is None else ()
                rows, held_in, kept = self._store.rows, self._dataset, self._partial
                found = keyed and await relisting.list_changed(self.nb, models, topics, topicless, rows, held_in, kept)
                if found:  # applied as changes: the rows that are as stored stay as they are
                    self.relisted += found[1]
                    return relisting.apply_changed(self, found[0], whole=not scoped, topic=topic)
                listings = await list_scope(self.nb, models, topics, topicless)
                self.relisted += sum(len(listing.items) + len(listing.corrupt) for _, listing in listings)
            before = built(self, self._store.clear(models, topic) if scoped else self._store.clear())
            if not scoped:
                self._recent.clear()
                self._held_topics = dict.fromkeys(self._held_topics, 0)  # still followed; counted again
            self._flow.muted = True  # the reload's own events are replaced by the difference below
            try:
                corrupt: Keys = set()
                if self.mode is SyncMode.REACTIVE:
                    for model, obj, revision in fetched:
                        self._apply(model, obj.id, obj, revision)
                else:
                    corrupt = self._fill(kept_only(listings, self._partial, before), topics, whole=not scoped)
            finally:
                self._flow.muted = False
            now = cast(dict[type[NbModel], dict[str, Row]], self._store.rows)  # refilled by _fill: built
            self._relisted_in = relisting.note_relisted(self._relisted, self._relisted_in, listings, topic)
            self.corrupt += emit_difference(self._flow, before, now, topic, corrupt, self._position)
            self.resyncs += 1

    # ------------------------------------------------------------ state
    @property
    def synced(self) -> bool:
        """Whether the Replica is loaded and following its stream."""
        return self._synced.is_set() and self._following

    async def wait_synced(self) -> None:
        """Return once the Replica is loaded and following."""
        await self._synced.wait()

    async def wait_for(self, revision: int) -> None:
        """Return once the Replica has applied every change of its scope up to ``revision``
        (read-your-writes: pass the revision of your own write within the scope).

        Raises:
            StreamClosedError: the Replica stopped.
        """
        # a relist in progress (after a RESYNC) is not caught up, whatever position a load reached
        while not self._synced.is_set() or self._applied_up_to() < revision:
            if not self._following:
                raise StreamClosedError(f"the replica stopped before revision {revision}: {self._failure}")
            if self._synced.is_set() and self._stream is not None and self._stream.topics == frozenset():
                return  # an empty scope (REACTIVE, nothing held) has no change to wait for
            self._progress.clear()
            # an idle stream's cursor also moves without events (progress notifications)
            with anyio.move_on_after(0.05):
                await self._progress.wait()

    def _applied_up_to(self) -> int:
        """Every change of the scope up to this revision is applied."""
        stream = self._stream
        if stream is None or not self._synced.is_set() or self._lock.locked():
            return self._position
        with contextlib.suppress(StreamClosedError):
            dataset, at = parse_cursor(stream.cursor)
            if dataset != self._dataset:
                return 0  # reopened on a dataset not relisted yet (its RESYNC is to come): none applied
            self._position = max(self._position, at)
        return self._position

    # ------------------------------------------------------------ topics
    async def add_topic(self, topic: str) -> None:
        """Load ``topic`` and follow it; returns once it is loaded, with no gap. A call that
        fails or is cancelled leaves the topic out (call again); concurrent calls for one
        topic all return once it is loaded."""
        if self.mode is not SyncMode.SELECTIVE:
            raise ValueError("add_topic needs SyncMode.SELECTIVE")
        validate_key(topic, "topic")
        async with self._lock:
            if topic in self._topics or self._stream is None:
                return
            # follow from the stream's own position, then list: every change after it arrives
            # (applied meanwhile: the topic is loading); the listings are never newer than it
            self._loading.add(topic)
            try:
                stream = self._stream  # a server away a while: tried again, as the listing is
                await self.nb._retry(lambda: stream.add_topics({topic}, since=stream.cursor), "add_topic")
                listings = [(model, await self.nb.list(model, topic=topic)) for model in self.models]
            except BaseException:
                self._loading.discard(topic)
                if topic not in self._partial:
                    self._partial.add(topic)  # what arrived of it meanwhile goes again
                    self._evict_partial()
                raise
            self._loading.discard(topic)
            self._topics.add(topic)
            self._partial.discard(topic)
            self._fill(listings, None, whole=False)

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
            self._evict_partial()
            await self._narrow()

    def _evict_partial(self) -> None:
        """Evict the objects of removed topics that nothing in scope references (again for
        topics removed before), in reverse dependency order."""
        rows = self._store.rows
        leaving = {(m, i) for m in self.models for i, (o, _) in rows[m].items() if o.topic in self._partial}
        kept = {
            ref
            for m in self.models
            for i, (o, _) in list(rows[m].items())  # an entry built here may turn out corrupt: dropped
            if (m, i) not in leaving
            for ref in self._store.targets(m, o)
        }
        for model in reversed(self.models):
            for id in sorted(i for m, i in leaving if m is model):
                if (model, id) in kept:
                    continue
                row = self._store.row(model, id)  # an entry held unbuilt is built: its delete tells it
                if row is not None:
                    self._drop_row(model, id)
                    self._flow.emit(ReplicaEvent(Action.DELETE, model, id, row[0], None, row[1]))
        held = {o.topic for m in self.models for o, _ in rows[m].values()}
        self._partial &= {t for t in held if t is not None}

    @property
    def topics(self) -> frozenset[str]:
        """The subscribed topics (SELECTIVE)."""
        return frozenset(self._topics)

    async def check(self, settle: float | None = None) -> CheckReport:
        """Check the scope against the database now and repair what differs (with the usual
        events); the periodic checks do the same. See :mod:`dfdb.replica.antientropy`.

        Raises:
            BackendUnavailableError: the server could not be reached.
            StreamClosedError: the Replica is closed (or not entered yet)."""
        return await self._checker.check(settle)

    def events(self) -> ReplicaEvents:
        """The changes applied from now on (subscribed when this returns), as :class:`ReplicaEvent`,
        an object's event after those of the objects it references. Pending changes of one key
        are merged (a create then an update is one create); a consumer with more than
        ``max_pending`` keys pending gets one ``RESYNC`` instead of them, and should read the
        state again. It ends when the Replica closes; close it with ``aclose``."""
        return self._flow.subscribe()

    def stats(self) -> ReplicaStats:
        """The Replica's counters now."""
        return ReplicaStats(
            objects=len(self),
            tables=self._store.counts(),
            events=self._flow.emitted,
            deferred=self._flow.deferred,
            deferred_now=self._flow.deferred_now,
            resyncs=self.resyncs,
            reconnects=self.reconnects,
            lag=self._flow.lag,
            position=self._applied_up_to(),
            records_read=self._stream.records_read if self._stream is not None else self._records_read,
            bytes_read=self._stream.bytes_read if self._stream is not None else self._bytes_read,
            evictions=self.evictions,
            corrupt=self.corrupt,
            stale=self._following and not self._synced.is_set(),
            relist_wait=self.relist_wait,
            relisted=self.relisted,
            checks=self._checker.checks,
            divergences=self._checker.divergences,
            repaired=self._checker.repaired,
        )
