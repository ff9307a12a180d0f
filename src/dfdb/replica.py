"""The Replica: a local controller's in-memory copy of the database, kept in sync.

This first version follows the modes ``FULL`` (every object of the chosen models)
and ``SELECTIVE`` (the subscribed topics plus topic-less objects, topics added and
removed at run time). It loads with a list, follows one change stream from the
list's cursor, never lets a lower revision overwrite a higher one (deletes
included), and answers ``RESYNC`` by relisting its scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from dfdb.errors import StreamClosedError
from dfdb.events import Action, ChangeEvent, ChangeStream, parse_cursor
from dfdb.model import NbModel, dependency_order, validate_key
from dfdb.nb import NbApi

__all__ = ["Replica", "ReplicaEvent", "SyncMode"]

log = logging.getLogger("dfdb")

M = TypeVar("M", bound=NbModel)

_TOMBSTONES = 100_000


class SyncMode(enum.StrEnum):
    """How much of the database a :class:`Replica` holds."""

    FULL = "full"
    """Every object of the chosen models."""
    SELECTIVE = "selective"
    """The subscribed topics, plus topic-less objects."""


@dataclass(frozen=True, slots=True)
class ReplicaEvent:
    """A change the Replica applied: ``old`` is ``None`` for a create, ``new`` for a delete."""

    action: Action
    model: type[NbModel]
    id: str
    old: NbModel | None
    new: NbModel | None
    revision: int


class Replica:
    """An indexed local copy of ``models``; use it with ``async with``.

    Args:
        nb: an open :class:`NbApi`.
        models: the models to hold.
        mode: :attr:`SyncMode.FULL` or :attr:`SyncMode.SELECTIVE`.
        topics: the first topics of a selective Replica.
    """

    def __init__(
        self,
        nb: NbApi,
        models: Sequence[type[NbModel]],
        *,
        mode: SyncMode = SyncMode.FULL,
        topics: Iterable[str] = (),
    ) -> None:
        if not models:
            raise ValueError("a Replica needs at least one model")
        self.nb = nb
        self.models = dependency_order(models)
        self.mode = SyncMode(mode)
        self._topics: set[str] = {validate_key(t, "topic") for t in topics}
        if self.mode is SyncMode.FULL and self._topics:
            raise ValueError("topics are for SyncMode.SELECTIVE")
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
        self._subscribers: set[asyncio.Queue[ReplicaEvent]] = set()
        self._lock = asyncio.Lock()
        self._failure: BaseException | None = None
        self.resyncs = 0
        """How many times the Replica relisted its scope after a ``RESYNC``."""
        self.events_applied = 0
        """How many changes the Replica applied."""

    # ------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Replica:
        scope = None if self.mode is SyncMode.FULL else {None, *self._topics}
        stream = self.nb.watch(self.models, topics=scope)
        await stream.open()
        self._stream = stream
        try:
            await self._load(self._topics if self.mode is SyncMode.SELECTIVE else None)
        except BaseException:
            await stream.aclose()
            raise
        self._synced.set()
        self._task = asyncio.create_task(self._follow(stream), name="dfdb-replica")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop following; idempotent."""
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

    def _drop_row(self, model: type[NbModel], id: str) -> None:
        held = self._store[model].pop(id, None)
        if held is None:
            return
        for index, entries in self._indexes[model].items():
            for key in _index_keys(held[0], index):
                _discard(entries, key, id)

    def _remember_delete(self, model: type[NbModel], id: str, revision: int) -> None:
        self._tombstones[(model, id)] = revision
        if len(self._tombstones) > _TOMBSTONES:
            del self._tombstones[next(iter(self._tombstones))]

    def _emit(self, event: ReplicaEvent) -> None:
        self.events_applied += 1
        for queue in self._subscribers:
            queue.put_nowait(event)

    async def _follow(self, stream: ChangeStream) -> None:
        try:
            async for ev in stream:
                await self._on_event(ev)
                # the cursor, not the event's revision: on an unordered driver an older
                # change of another topic may still be on its way
                self._position = max(self._position, parse_cursor(ev.cursor)[1])
                self._progress.set()
        except Exception as exc:
            self._failure = exc
            self._synced.clear()
            self._progress.set()
            log.error("replica stopped following: %s", exc)
            raise

    async def _on_event(self, ev: ChangeEvent) -> None:
        if ev.action == Action.RESYNC:
            await self._resync()
            return
        if ev.model is None or ev.model not in self._store:
            return
        if self.mode is SyncMode.SELECTIVE and ev.topic is not None and ev.topic not in self._topics:
            return
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
            subscribers, self._subscribers = self._subscribers, set()
            try:
                await self._load(self._topics if self.mode is SyncMode.SELECTIVE else None)
            finally:
                self._subscribers = subscribers
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
        while self._position < revision:
            if self._task is None or self._task.done():
                raise StreamClosedError(f"the replica stopped before revision {revision}: {self._failure}")
            self._progress.clear()
            await self._progress.wait()

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
            for model in self.models:
                listing = await self.nb.list(model, topic=topic)
                for obj in listing.items:
                    origin = obj._dfdb_origin
                    self._apply(model, obj.id, obj, origin[0] if origin else 0)

    async def remove_topic(self, topic: str) -> None:
        """Stop following ``topic`` and evict its objects (in reverse dependency order)."""
        if self.mode is not SyncMode.SELECTIVE:
            raise ValueError("remove_topic needs SyncMode.SELECTIVE")
        async with self._lock:
            self._topics.discard(topic)
            for model in reversed(self.models):
                rows = self._store[model]
                for id, (obj, rev) in [(i, r) for i, r in rows.items() if r[0].topic == topic]:
                    self._drop_row(model, id)
                    self._emit(ReplicaEvent(Action.DELETE, model, id, obj, None, rev))

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

    async def events(self) -> AsyncIterator[ReplicaEvent]:
        """The changes applied from now on, as :class:`ReplicaEvent`."""
        queue: asyncio.Queue[ReplicaEvent] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)


def _path_values(value: object, parts: Sequence[str]) -> list[Hashable]:
    """The values at a dotted path; lists along the way fan out, ``None`` yields nothing."""
    if value is None:
        return []
    if isinstance(value, list | tuple | set | frozenset):
        return [v for item in value for v in _path_values(item, parts)]
    if not parts:
        return [value] if isinstance(value, Hashable) else []
    return _path_values(getattr(value, parts[0], None), parts[1:])


def _index_keys(obj: NbModel, index: tuple[str, ...]) -> set[Hashable]:
    values = [_path_values(obj, path.split(".")) for path in index]
    if len(index) == 1:
        return set(values[0])
    return set(itertools.product(*values))


def _discard(entries: defaultdict[Hashable, set[str]], key: Hashable, id: str) -> None:
    ids = entries.get(key)
    if ids is not None:
        ids.discard(id)
        if not ids:
            del entries[key]
