"""Change events and the :class:`ChangeStream` that delivers them."""

from __future__ import annotations

import enum
import logging
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio

from dfdb.codec import decode
from dfdb.drivers.base import Capability, Driver, EventSource, RawEvent
from dfdb.drivers.polling import SnapshotPoller
from dfdb.errors import CorruptObjectError, StreamClosedError
from dfdb.nbmodel import NbModel, validate_key
from dfdb.retry import Backoff

__all__ = ["Action", "ChangeEvent", "ChangeStream", "SourceOpener", "format_cursor", "parse_cursor"]

log = logging.getLogger(__name__)

_DEDUP_KEYS = 200_000
_RAW_ACTIONS = frozenset(("create", "update", "delete", "resync"))


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
        expired: on a ``DELETE``, the object went because the lease it was bound to ended
            (its holder stopped, or revoked it), not because a client deleted it.
    """

    action: Action
    model: type[NbModel] | None
    id: str
    topic: str | None
    revision: int
    obj: NbModel | None
    cursor: str
    expired: bool = False


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


class SourceOpener(ABC):
    """How a :class:`ChangeStream` reaches its backend.

    The :class:`~dfdb.NbApi` builds one for each watch from its driver, the driver's
    capabilities and its notification settings: it decides between the driver's own
    change stream and snapshot polling, says whether the sources it opens deliver a
    whole stream in revision order, and decodes stored values into models.
    """

    ordered: bool = True
    """The sources deliver every event of a stream in revision order."""

    @abstractmethod
    async def identity(self) -> str:
        """The backend's identity now (part of every cursor).

        Raises:
            BackendUnavailableError: the server cannot be reached.
        """

    async def continues(self, identity: str, revision: int) -> bool:
        """Whether the backend's data now holds the history of ``identity`` up to
        ``revision`` (see :meth:`Driver.continues`); the default: never.

        Raises:
            BackendUnavailableError: the server cannot be reached.
        """
        return False

    @abstractmethod
    async def open(
        self, tables: Collection[str], topics: frozenset[str | None] | None, since: int | None
    ) -> EventSource:
        """A started source of ``tables`` (of ``topics``; ``None``: every topic) delivering
        every change after revision ``since`` (``None``: from now on).

        Raises:
            BackendUnavailableError: the server cannot be reached.
        """

    @abstractmethod
    def decode(self, model: type[NbModel], id: str, topic: str | None, value: bytes, revision: int) -> NbModel:
        """The object stored as ``value``.

        Raises:
            CorruptObjectError: the value does not validate.
        """


_COUNTERS = ("records_read", "bytes_read", "records_malformed", "reconnects")


class DriverOpener(SourceOpener):
    """Opens the change sources of an :class:`~dfdb.NbApi`'s streams: the driver's own
    change stream or change log, or snapshot polling when it has neither or polling was
    asked (``poll``). Every call to the driver goes through ``retry`` (the NbApi's retries
    and deadline); ``on_identity`` learns the backend identity each time it is read."""

    def __init__(
        self,
        driver: Driver,
        *,
        poll: bool,
        poll_interval: float,
        backoff: Backoff,
        retry: Callable[[Callable[[], Awaitable[Any]], str], Awaitable[Any]],
        on_identity: Callable[[str], None],
    ) -> None:
        self._driver = driver
        self._poll = poll
        self._interval = poll_interval
        self._backoff = backoff
        self._retry = retry
        self._on_identity = on_identity
        self.ordered = poll or bool(driver.capabilities & Capability.ORDERED)

    async def identity(self) -> str:
        identity = str(await self._retry(self._driver.identity, "watch"))
        self._on_identity(identity)
        return identity

    async def continues(self, identity: str, revision: int) -> bool:
        return bool(await self._retry(lambda: self._driver.continues(identity, revision), "watch"))

    async def open(
        self, tables: Collection[str], topics: frozenset[str | None] | None, since: int | None
    ) -> EventSource:
        if self._poll:
            poller = SnapshotPoller(self._driver, tables, topics, since, interval=self._interval, backoff=self._backoff)
            await poller.start()
            return poller
        source: EventSource = await self._retry(lambda: self._driver.watch(list(tables), topics, since), "watch")
        return source

    def decode(self, model: type[NbModel], id: str, topic: str | None, value: bytes, revision: int) -> NbModel:
        return decode(model, id, topic, value, revision)


def _unreadable(raw: RawEvent) -> str | None:
    """Why a change record is one dfdb cannot have written (an unknown action, an id or a
    topic it refuses), or ``None``: its event would hand the record's key to applications."""
    if raw.action not in _RAW_ACTIONS:
        return f"action {raw.action!r}"
    if raw.action == "resync":
        return None
    try:
        validate_key(raw.id)
        if raw.topic is not None:
            validate_key(raw.topic, "topic")
    except ValueError as exc:
        return str(exc)
    return None


class ChangeStream:
    """An async iterator of :class:`ChangeEvent`, from ``NbApi.watch``.

    Use it with ``async with``: it is subscribed when entered, and every change
    committed after that arrives. Duplicates (same key, same revision) are dropped;
    a stored value that fails validation is logged with its table and key and
    skipped. A change older than one yielded already for its key (a driver out of
    order) is not yielded: it is logged and counted (:attr:`out_of_order`), and a
    ``RESYNC`` of its table and topic takes its place. ``cursor`` is the position
    after the last event yielded; pass it to ``watch(since=…)`` to resume. On a
    driver that does not deliver a whole stream in revision order (etcd with several
    topics) the cursor is the highest position below which every change was yielded,
    so a resumed stream may repeat a few events (a Replica drops them by revision).

    Cancelling a read (``asyncio.wait_for(anext(stream), t)``) loses nothing: the
    next read returns what the cancelled one would have. The scope can change while
    the stream runs (:meth:`add_topics`, :meth:`remove_topics`), and :meth:`reopen`
    starts its backend subscription again from the cursor; a read waiting in another
    task meanwhile goes on with the new subscription.
    """

    def __init__(
        self,
        models: Mapping[str, type[NbModel]],
        topics: Collection[str | None] | None,
        since: tuple[str, int] | None,
        opener: SourceOpener,
    ) -> None:
        self._models = dict(models)
        self._topics = None if topics is None else frozenset(topics)
        self._since = since
        self._opener = opener
        self._identity = ""
        self._source: EventSource | None = None
        self._state = "new"
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._position: int | None = None
        self._pending_resync = False
        self._floors: dict[str | None, int] = {}
        self._retired = dict.fromkeys(_COUNTERS, 0)  # the counters of sources closed by reopen
        self._scope_lock = anyio.Lock()  # one change of scope or reopen at a time
        self.corrupt = 0
        """How many events were skipped because their value failed validation."""
        self.on_corrupt: Callable[[type[NbModel], str, int], None] | None = None
        """Called with (model, id, revision) for each change skipped because its value
        failed validation (a Replica evicts that key)."""
        self.duplicates = 0
        """How many duplicate events were dropped."""
        self.out_of_order = 0
        """How many changes came older than one yielded already for their key (each was
        answered with a ``RESYNC`` of its table and topic)."""
        self._yielded = 0  # the highest revision of a change yielded
        self._replayed = 0  # a reopened subscription may read changes up to here again
        self.resyncs = 0
        """How many ``RESYNC`` events were yielded."""
        self.on_close: Callable[[ChangeStream], None] | None = None
        """Called with the stream when it closes (its counters are final then)."""

    # ------------------------------------------------------------ scope
    async def add_topics(self, topics: Iterable[str | None], *, since: str) -> None:
        """Follow ``topics`` too, with no gap: every change of them after the cursor
        ``since`` (typically from ``nb.list(Model, topic=…)``) arrives. A stream of every
        topic ignores this.

        Raises:
            ValueError: ``since`` is not a cursor of this backend.
            StreamClosedError: the stream is not open, or its driver cannot change topics.
        """
        self._check_open("adding topics")
        if self._topics is None:
            return
        identity, revision = parse_cursor(since)
        if identity != self._identity and getattr(self._source, "identity", None) == identity:
            self._identity = identity  # the source followed the backend into a new identity without a gap
        if identity != self._identity:
            raise ValueError(f"cursor {since!r} is from another backend")
        async with self._scope_lock:
            source = self._check_open("adding topics")
            before = self._topics
            new = frozenset(topics) - before
            if not new:
                return
            floors = dict(self._floors)
            for topic in new:
                self._floors[topic] = revision  # that topic's changes at or before are in the caller's listing
            self._topics = before | new  # before the source may deliver them
            try:
                await source.add_topics(new, revision)
            except BaseException:
                self._topics, self._floors = before, floors
                raise

    async def remove_topics(self, topics: Iterable[str | None]) -> None:
        """Stop following ``topics``: from now on no event of theirs is yielded, and the
        backend subscription is reopened from the cursor without them (see
        :meth:`reopen`). A stream of every topic cannot narrow.

        Raises:
            ValueError: the stream follows every topic.
            StreamClosedError: the stream is not open.
            BackendUnavailableError: the subscription could not be reopened; the stream
                goes on with the old one (the topics are filtered out all the same).
        """
        self._check_open("removing topics")
        if self._topics is None:
            raise ValueError("a stream of every topic cannot remove topics; open one with topics=")
        async with self._scope_lock:
            gone = frozenset(topics) & self._topics
            if not gone:
                return
            self._topics = self._topics - gone
            for topic in gone:
                self._floors.pop(topic, None)
            await self._reopen()

    async def reopen(self) -> None:
        """Open the backend subscription again from the stream's cursor, then close the old
        one. Nothing is lost: every change after the cursor arrives (events the old
        subscription had read but the stream had not yielded are read again, and
        repeats are dropped as duplicates; snapshot polling, which cannot tell what
        changed since a cursor, yields ``RESYNC`` when anything did). A read waiting in
        another task goes on with the new subscription. The counters go on counting.

        Raises:
            StreamClosedError: the stream is not open.
            BackendUnavailableError: the new subscription could not be opened; the old
                one goes on.
        """
        self._check_open("reopening")
        async with self._scope_lock:
            await self._reopen()

    async def _reopen(self) -> None:
        old = self._check_open("reopening")
        position = self._cursor_revision()
        identity = await self._opener.identity()
        start: int | None = position
        if identity != self._identity and not await self._opener.continues(self._identity, position):
            start = None  # the data is not the one followed so far
        fresh = await self._opener.open(list(self._models), self._topics, start)
        if self._state != "open":  # closed meanwhile
            await fresh.aclose()
            raise StreamClosedError("the stream was closed while it reopened")
        self._identity = identity
        if start is None:
            self._pending_resync = True
            self._position = fresh.position
        self._source = fresh
        self._replayed = self._yielded  # read again from the cursor: older changes of a key are repeats
        log.debug("change stream reopened from revision %d", position)
        self._retire(old)
        await old.aclose()

    def _retire(self, source: EventSource) -> None:
        for name in _COUNTERS:
            self._retired[name] += getattr(source, name)

    def _check_open(self, doing: str) -> EventSource:
        if self._state != "open" or self._source is None:
            raise StreamClosedError(f"enter the stream with 'async with' before {doing}")
        return self._source

    @property
    def topics(self) -> frozenset[str | None] | None:
        """The topics followed (``None``: every topic)."""
        return self._topics

    # ------------------------------------------------------------ counters
    def _count(self, name: str) -> int:
        source = self._source
        return self._retired[name] + (0 if source is None else int(getattr(source, name)))

    @property
    def records_read(self) -> int:
        """Change records this stream read from the backend (0 before it opens)."""
        return self._count("records_read")

    @property
    def bytes_read(self) -> int:
        """The size of those records as the driver received them (0 before it opens)."""
        return self._count("bytes_read")

    @property
    def records_malformed(self) -> int:
        """Change records the driver could not read; each was answered with a ``RESYNC``
        of its table (the stream went on)."""
        return self._count("records_malformed")

    @property
    def reconnects(self) -> int:
        """How many times the backend subscription read again after a failure (a lost
        connection or watch); cancelled reads never count here."""
        return self._count("reconnects")

    # ------------------------------------------------------------ position
    def _cursor_revision(self) -> int:
        if self._position is None:
            raise StreamClosedError("the stream has no position until it is entered")
        position = self._position
        source = self._source
        # an idle stream moves on with its source, unless that source follows another identity
        # already (its positions are not this cursor's; its next event or RESYNC tells)
        if source is not None and self._state == "open" and getattr(source, "identity", None) in (None, self._identity):
            caught_up = source.caught_up()
            if caught_up is not None:
                position = max(position, caught_up)
        return position

    @property
    def cursor(self) -> str:
        """The position after the last event yielded (resume with ``watch(since=cursor)``).

        Raises:
            StreamClosedError: the stream was never entered.
        """
        return format_cursor(self._identity, self._cursor_revision())

    # ------------------------------------------------------------ life cycle
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
            self._identity = await self._opener.identity()
            start: int | None = None
            if self._since is not None:
                known, revision = self._since
                if known == self._identity or await self._opener.continues(known, revision):
                    start = revision
                else:  # a cursor of another backend, or of data that is gone
                    self._pending_resync = True
            source = await self._opener.open(list(self._models), self._topics, start)
        except BaseException:
            self._state = "closed"
            raise
        self._source = source
        self._state = "open"
        self._position = start if start is not None else source.position

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> ChangeEvent:
        if self._state != "open" or self._source is None:
            if self._state == "closed":
                raise StopAsyncIteration
            raise StreamClosedError("enter the stream with 'async with nb.watch(…)' before iterating")
        while True:
            if self._pending_resync:
                self._pending_resync = False
                self._last.clear()
                self.resyncs += 1
                return ChangeEvent(Action.RESYNC, None, "", None, self._position or 0, None, self.cursor)
            source = self._source
            if source is None:
                raise StopAsyncIteration
            try:
                raw = await source.__anext__()
            except StopAsyncIteration:
                if self._state == "open" and self._source is not source:
                    continue  # reopened meanwhile: go on with the new source
                raise
            event = self._convert(raw, source)
            if event is not None:
                return event

    def _convert(self, raw: RawEvent, source: EventSource) -> ChangeEvent | None:
        fault = _unreadable(raw)
        if fault is not None:  # a source that did not check its records, or another program's
            self._retired["records_malformed"] += 1
            log.warning(
                "unreadable change %s/%r at revision %d (%s); resyncing its table",
                raw.table,
                raw.id,
                raw.revision,
                fault,
            )
            raw = RawEvent("resync", raw.table, "", None, None, raw.revision)
        if raw.action == "resync":
            model = self._models.get(raw.table) if raw.table else None
            if raw.table is not None:  # one table's records: that table is made whole, the rest goes on
                if model is None:
                    return None
                self._advance(raw.revision, source)
                self.resyncs += 1
                return ChangeEvent(Action.RESYNC, model, "", raw.topic, raw.revision, None, self.cursor)
            self._last.clear()
            self._floors.clear()
            self._position = raw.revision
            if raw.identity:
                self._identity = raw.identity
            self.resyncs += 1
            return ChangeEvent(Action.RESYNC, None, "", raw.topic, raw.revision, None, self.cursor)
        if raw.identity:  # the source went on, without a gap, into a new identity
            self._identity = raw.identity
        self._advance(raw.revision, source)
        model = self._models.get(raw.table or "")
        if model is None:
            return None
        if self._topics is not None and raw.topic not in self._topics:
            return None
        if self._floors and raw.revision <= self._floors.get(raw.topic, 0):
            return None
        key = (raw.table or "", raw.id)
        last = self._last.get(key)
        if last is not None and raw.revision <= last:
            if raw.revision < last and raw.revision > self._replayed:
                return self._misordered(raw, model, last)
            self.duplicates += 1
            return None
        self._last[key] = raw.revision
        self._yielded = max(self._yielded, raw.revision)
        self._last.move_to_end(key)
        if len(self._last) > _DEDUP_KEYS:
            self._last.popitem(last=False)
        obj: NbModel | None = None
        if raw.value is not None:
            try:
                obj = self._opener.decode(model, raw.id, raw.topic, raw.value, raw.revision)
            except CorruptObjectError as exc:
                if raw.action != "delete":
                    self.corrupt += 1
                    log.warning("skipping change at revision %d: %s", raw.revision, exc)
                    if self.on_corrupt is not None:
                        self.on_corrupt(model, raw.id, raw.revision)
                    return None
        return ChangeEvent(Action(raw.action), model, raw.id, raw.topic, raw.revision, obj, self.cursor, raw.expired)

    def _misordered(self, raw: RawEvent, model: type[NbModel], last: int) -> ChangeEvent:
        """A change older than one yielded for its key: whatever else the driver misordered,
        the key's table and topic are made whole by a ``RESYNC`` of them."""
        self.out_of_order += 1
        log.warning(
            "change %s/%r at revision %d arrived after its revision %d (the driver is out of order);"
            " resyncing table %s of topic %r",
            raw.table,
            raw.id,
            raw.revision,
            last,
            raw.table,
            raw.topic,
        )
        self.resyncs += 1
        return ChangeEvent(Action.RESYNC, model, "", raw.topic, raw.revision, None, self.cursor)

    def _advance(self, revision: int, source: EventSource) -> None:
        """Move the position to an event's ``revision`` (on an unordered stream, no further
        than the source says every change was returned)."""
        position = revision if self._opener.ordered else min(revision, source.position)
        if self._position is None or position > self._position:
            self._position = position

    async def aclose(self) -> None:
        """Unsubscribe and release everything; idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        source, self._source = self._source, None
        if source is not None:
            self._retire(source)
        if self.on_close is not None:
            self.on_close(self)
        if source is not None:
            await source.aclose()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_state", "closed") == "open":
            _warn("unclosed dfdb ChangeStream", ResourceWarning, stacklevel=1, source=self)
