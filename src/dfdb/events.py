"""Change events and the :class:`ChangeStream` that delivers them."""

from __future__ import annotations

import enum
import logging
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from dfdb.drivers.base import EventSource, RawEvent
from dfdb.errors import CorruptObjectError, StreamClosedError
from dfdb.nbmodel import NbModel

__all__ = ["Action", "ChangeEvent", "ChangeStream", "format_cursor", "parse_cursor"]

log = logging.getLogger(__name__)

_DEDUP_KEYS = 200_000


class Action(enum.StrEnum):
    """What happened to an object (``RESYNC``: history was lost; reconcile the scope)."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    RESYNC = "resync"


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change delivered by a :class:`ChangeStream`.

    Attributes:
        action: the :class:`Action`.
        model: the object's model class; for ``RESYNC`` the scope's model, ``None``
            meaning every model watched.
        id: the object's id (empty for ``RESYNC``).
        topic: the object's topic, deletes included; for ``RESYNC`` the scope's topic,
            ``None`` meaning every topic watched.
        revision: the backend's position of the change.
        obj: the new object; for a delete the last one where known, else ``None``;
            ``None`` for ``RESYNC``.
        cursor: the stream position just after this event.
    """

    action: Action
    model: type[NbModel] | None
    id: str
    topic: str | None
    revision: int
    obj: NbModel | None
    cursor: str


def format_cursor(identity: str, revision: int) -> str:
    """The opaque cursor text for ``revision`` on the backend named ``identity``."""
    return f"{identity}@{revision}"


def parse_cursor(cursor: str) -> tuple[str, int]:
    """Split a cursor into (backend identity, revision).

    Raises:
        ValueError: ``cursor`` is not a dfdb cursor.
    """
    if isinstance(cursor, str):
        identity, sep, rev = cursor.rpartition("@")
        if sep and identity and rev.isdigit():
            return identity, int(rev)
    raise ValueError(f"not a dfdb cursor: {cursor!r}")


Decoder = Callable[[type[NbModel], str, str | None, bytes, int], NbModel]


class ChangeStream:
    """An async iterator of :class:`ChangeEvent`, from ``NbApi.watch``.

    Use it with ``async with``: it is subscribed when entered, and every change
    committed after that arrives. Duplicates (same key, same revision) are dropped;
    a stored value that fails validation is logged with its table and key and
    skipped. ``cursor`` is the position after the last event yielded; pass it to
    ``watch(since=…)`` to resume. On a driver that does not deliver a whole stream in
    revision order (etcd with several topics) the cursor is the highest position
    below which every change was yielded, so a resumed stream may repeat a few events
    (a Replica drops them by revision).
    """

    def __init__(
        self,
        models: Mapping[str, type[NbModel]],
        topics: Collection[str | None] | None,
        opener: Callable[[int | None], Awaitable[EventSource]],
        identity: Callable[[], Awaitable[str]],
        since: tuple[str, int] | None,
        *,
        filter_topics: bool,
        decode: Decoder,
        ordered: bool = True,
    ) -> None:
        self._models = dict(models)
        self._topics = None if topics is None else frozenset(topics)
        self._opener = opener
        self._get_identity = identity
        self._identity = ""
        self._since = since
        self._filter_topics = filter_topics
        self._decode = decode
        self._ordered = ordered
        self._source: EventSource | None = None
        self._state = "new"
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._position: int | None = None
        self._pending_resync = False
        self._floors: dict[str | None, int] = {}
        self.corrupt = 0
        self.on_corrupt: Callable[[type[NbModel], str, int], None] | None = None
        """Called with (model, id, revision) for each change skipped because its value
        failed validation (a Replica evicts that key)."""
        """How many events were skipped because their value failed validation."""
        self.duplicates = 0
        """How many duplicate events were dropped."""

    async def add_topics(self, topics: Iterable[str | None], *, since: str) -> None:
        """Follow ``topics`` too, with no gap: every change of them after the cursor
        ``since`` (typically from ``nb.list(Model, topic=…)``) arrives. A stream of every
        topic ignores this.

        Raises:
            ValueError: ``since`` is not a cursor of this backend.
            StreamClosedError: the stream is not open, or its driver cannot change topics.
        """
        if self._state != "open" or self._source is None:
            raise StreamClosedError("enter the stream with 'async with' before adding topics")
        if self._topics is None:
            return
        identity, revision = parse_cursor(since)
        if identity != self._identity:
            raise ValueError(f"cursor {since!r} is from another backend")
        new = frozenset(topics) - self._topics
        if not new:
            return
        for topic in new:
            self._floors[topic] = revision  # that topic's changes at or before are in the caller's listing
        await self._source.add_topics(new, revision)
        self._topics = self._topics | new

    @property
    def topics(self) -> frozenset[str | None] | None:
        """The topics followed (``None``: every topic)."""
        return self._topics

    @property
    def records_read(self) -> int:
        """Change records this stream read from the backend (0 before it opens)."""
        return 0 if self._source is None else self._source.records_read

    @property
    def bytes_read(self) -> int:
        """The size of those records as the driver received them (0 before it opens)."""
        return 0 if self._source is None else self._source.bytes_read

    @property
    def cursor(self) -> str:
        """The position after the last event yielded (resume with ``watch(since=cursor)``).

        Raises:
            StreamClosedError: the stream was never entered.
        """
        if self._position is None:
            raise StreamClosedError("the stream has no position until it is entered")
        position = self._position
        if self._source is not None and self._state == "open":  # an idle stream moves on with its source
            caught_up = self._source.caught_up()
            if caught_up is not None:
                position = max(position, caught_up)
        return format_cursor(self._identity, position)

    async def __aenter__(self) -> ChangeStream:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Subscribe; ``async with`` calls this."""
        if self._state != "new":
            raise StreamClosedError("a ChangeStream can be entered only once")
        self._state = "opening"
        try:
            self._identity = await self._get_identity()
            start: int | None = None
            if self._since is not None:
                if self._since[0] == self._identity:
                    start = self._since[1]
                else:  # a cursor of another backend, or of data that is gone
                    self._pending_resync = True
            source = await self._opener(start)
        except BaseException:
            self._state = "closed"
            raise
        self._source = source
        self._state = "open"
        position = getattr(source, "position", None)
        self._position = start if start is not None else int(position or 0)

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> ChangeEvent:
        if self._state != "open" or self._source is None:
            if self._state == "closed":
                raise StopAsyncIteration
            raise StreamClosedError("enter the stream with 'async with nb.watch(…)' before iterating")
        if self._pending_resync:
            self._pending_resync = False
            self._last.clear()
            return ChangeEvent(Action.RESYNC, None, "", None, self._position or 0, None, self.cursor)
        source = self._source
        while True:
            raw = await source.__anext__()
            event = self._convert(raw)
            if event is not None:
                return event

    def _convert(self, raw: RawEvent) -> ChangeEvent | None:
        if raw.action == "resync":
            self._last.clear()
            self._floors.clear()
            self._position = raw.revision
            if raw.identity:
                self._identity = raw.identity
            model = self._models.get(raw.table) if raw.table else None
            return ChangeEvent(Action.RESYNC, model, "", raw.topic, raw.revision, None, self.cursor)
        position = raw.revision
        if not self._ordered:  # the source knows up to where every change was returned
            position = min(position, int(getattr(self._source, "position", position)))
        if self._position is None or position > self._position:
            self._position = position
        model = self._models.get(raw.table or "")
        if model is None:
            return None
        if self._filter_topics and self._topics is not None and raw.topic not in self._topics:
            return None
        if self._floors and raw.revision <= self._floors.get(raw.topic, 0):
            return None
        key = (raw.table or "", raw.id)
        last = self._last.get(key)
        if last is not None and raw.revision <= last:
            self.duplicates += 1
            return None
        self._last[key] = raw.revision
        self._last.move_to_end(key)
        if len(self._last) > _DEDUP_KEYS:
            self._last.popitem(last=False)
        obj: NbModel | None = None
        if raw.value is not None:
            try:
                obj = self._decode(model, raw.id, raw.topic, raw.value, raw.revision)
            except CorruptObjectError as exc:
                if raw.action != "delete":
                    self.corrupt += 1
                    log.warning("skipping change at revision %d: %s", raw.revision, exc)
                    if self.on_corrupt is not None:
                        self.on_corrupt(model, raw.id, raw.revision)
                    return None
        return ChangeEvent(Action(raw.action), model, raw.id, raw.topic, raw.revision, obj, self.cursor)

    async def aclose(self) -> None:
        """Unsubscribe and release everything; idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        source, self._source = self._source, None
        if source is not None:
            await source.aclose()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_state", "closed") == "open":
            _warn("unclosed dfdb ChangeStream", ResourceWarning, stacklevel=1, source=self)
