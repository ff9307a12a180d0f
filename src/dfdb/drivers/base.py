"""The driver contract: a minimal key/value store with revisions and a change stream.

A driver never sees a model: it stores ``(table, id) -> (value bytes, revision)``
with the object's topic carried alongside. Revisions are integers that strictly
increase across all writes of a deployment.
"""

from __future__ import annotations

import builtins
import enum
import logging
import warnings
import weakref
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Final, Literal, TypeVar

import anyio
import sniffio

from dfdb.drivers.digest import Digest, KeyListing, digest_of, keys_of
from dfdb.drivers.leasing import Guard, LeaseMethods
from dfdb.errors import (
    AlreadyExistsError,
    BackendUnavailableError,
    ConflictError,
    DriverError,
    NotFoundError,
    StreamClosedError,
    UnsupportedEventLoopError,
)
from dfdb.retry import close_to_completion
from dfdb.url import DatabaseURL

__all__ = [
    "ABSENT",
    "ANY",
    "Capability",
    "Digest",
    "Driver",
    "Entry",
    "EventSource",
    "Expect",
    "KeyListing",
    "Guard",
    "Listing",
    "PutRequest",
    "RawAction",
    "RawEvent",
    "check_delete",
    "check_put",
]

log = logging.getLogger(__name__)


class Capability(enum.Flag):
    """What a driver offers beyond the basic key/value contract."""

    NONE = 0
    NATIVE_STREAM = enum.auto()
    """The server pushes changes (pub-sub, watch); ``watch`` needs no polling."""
    CHANGE_LOG = enum.auto()
    """Every change is kept, in order, for a while: ``watch(since=…)`` resumes without gaps."""
    ORDERED = enum.auto()
    """One stream delivers all its events in revision order, across keys."""
    TOPIC_FILTER = enum.auto()
    """``watch(topics=…)`` is filtered by the backend, not by the client."""
    LEASES = enum.auto()
    """Leases, objects bound to them, fenced locks and guarded writes (``lease_grant`` …)."""


class _Sentinel(enum.Enum):
    ABSENT = "absent"
    ANY = "any"


ABSENT: Final = _Sentinel.ABSENT
"""Expectation for ``put``: the key must not exist (a create)."""
ANY: Final = _Sentinel.ANY
"""Expectation for ``put``: write whatever is there (unconditional)."""

Expect = Literal[_Sentinel.ABSENT, _Sentinel.ANY] | int
"""``ABSENT``, ``ANY``, or the revision the key must have now (compare-and-swap)."""

RawAction = Literal["create", "update", "delete", "resync"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored value."""

    table: str
    id: str
    topic: str | None
    value: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class PutRequest:
    """One write of :meth:`Driver.put_many`: the arguments of :meth:`Driver.put`."""

    table: str
    id: str
    topic: str | None
    value: bytes
    expect: Expect


@dataclass(frozen=True, slots=True)
class Listing:
    """The result of :meth:`Driver.list`: the entries and the revision they are consistent with."""

    entries: list[Entry]
    revision: int
    identity: str | None = None
    """The backend identity the revision belongs to, when the driver read it with the listing."""


@dataclass(frozen=True, slots=True)
class RawEvent:
    """A change as a driver reports it.

    Attributes:
        action: ``create``, ``update``, ``delete``, or ``resync`` (history was lost
            between the requested position and ``revision``; the scope is ``table``
            and ``topic``, ``None`` meaning everything watched).
        table, id, topic: the key (``id`` is empty for ``resync``).
        value: the new value; for a delete the last value where known, else ``None``.
        revision: the revision of the change; for ``resync``, the position the stream
            continues from.
        identity: for ``resync``, the backend identity from here on when it changed
            (a server that came back without its data); for a change, the identity
            its revision belongs to when the driver tells (a stream that went on
            without a gap into a new identity: a Redis master promoted by Sentinel);
            otherwise ``None``.
        expired: for ``delete``, the object went because the lease it was bound to ended
            (expired or revoked), not because a client deleted it.
    """

    action: RawAction
    table: str | None
    id: str
    topic: str | None
    value: bytes | None
    revision: int
    identity: str | None = None
    expired: bool = False

    @classmethod
    def resync(cls, revision: int, identity: str | None = None) -> RawEvent:
        """A ``resync`` of everything watched, continuing from ``revision``."""
        return cls("resync", None, "", None, None, revision, identity)


def check_put(table: str, id: str, topic: str | None, current: tuple[str | None, int] | None, expect: Expect) -> None:
    """Check a ``put`` against the key's ``current`` (topic, revision), ``None`` when absent.

    Raises what :meth:`Driver.put` promises: ``AlreadyExistsError``, ``NotFoundError``,
    ``ConflictError``, or ``ValueError`` for another topic.
    """
    if expect is ABSENT:
        if current is not None:
            raise AlreadyExistsError(f"{table}/{id} already exists")
    elif expect is not ANY:
        if current is None:
            raise NotFoundError(f"{table}/{id} not found")
        if current[1] != expect:
            raise ConflictError(f"{table}/{id} is at revision {current[1]}, not {expect}")
    if current is not None and current[0] != topic:
        raise ValueError(f"{table}/{id} belongs to topic {current[0]!r}, not {topic!r}")


def check_delete(table: str, id: str, current_revision: int | None, expect: int | None) -> None:
    """Check a ``delete`` against the key's current revision (``None`` when absent).

    Raises what :meth:`Driver.delete` promises: ``NotFoundError`` or ``ConflictError``.
    """
    if current_revision is None:
        raise NotFoundError(f"{table}/{id} not found")
    if expect is not None and current_revision != expect:
        raise ConflictError(f"{table}/{id} is at revision {current_revision}, not {expect}")


def _size(entry: Entry) -> int:
    return len(entry.table) + len(entry.id) + len(entry.topic or "") + len(entry.value) + 16


class EventSource(ABC):
    """An async iterator of :class:`RawEvent` returned by :meth:`Driver.watch`: the whole
    contract a :class:`~dfdb.ChangeStream` relies on.

    Life cycle: ``await start()`` subscribes (``Driver.watch`` calls it before it
    returns the source, so every later change arrives); ``__anext__`` returns the next
    event; ``aclose`` stops the source and releases everything it holds (tasks,
    connections), and is idempotent.

    Position: :attr:`position` is a revision such that every change of the watched
    scope at or below it has been returned by ``__anext__``. A stream's cursor never
    passes it, so a watch resumed from that cursor misses nothing.

    Cancellation: cancelling ``__anext__`` (a timeout around ``anext(stream)``) loses
    nothing, repeats nothing, drops no connection and leaves no task: an event the
    source took from the backend is kept for the next call. Sources built on
    :class:`dfdb.drivers.sources.BufferedSource` get this from its read loop.

    Counters (public, read by ``ChangeStream`` and the Replica's stats):
    :attr:`records_read`, :attr:`bytes_read`, :attr:`records_malformed` and
    :attr:`reconnects`. A change record the driver cannot read is reported with
    :meth:`_malformed`, which logs and counts it and returns the ``resync`` of its
    table, so that the record's scope is made whole again and the stream goes on.

    Most sources derive from :class:`dfdb.drivers.sources.BufferedSource`, which owns
    the read loop (buffer, rounds, backoff) and leaves a backend only "read one round".
    """

    records_read: int = 0
    """Change records this source read from the backend (a snapshot poll counts every
    object it lists)."""
    bytes_read: int = 0
    """The size of those records as the driver received them (keys, values, metadata)."""
    records_malformed: int = 0
    """Change records this source could not read (each reported with a ``resync``)."""
    reconnects: int = 0
    """How many times this source had to read again after a failed read (a lost
    connection, a dropped watch): a cancelled ``__anext__`` never counts here."""

    def _count_read(self, records: Iterable[RawEvent | Entry]) -> None:
        """Count ``records`` (events, or the entries of a listing) as read, for sources
        that receive them whole: table, id, topic, value and 16 bytes of metadata each."""
        for r in records:
            self.records_read += 1
            self.bytes_read += len(r.table or "") + len(r.id) + len(r.topic or "") + len(r.value or b"") + 16

    def _malformed(self, table: str | None, key: str, revision: int, reason: str) -> RawEvent:
        """Report a change record this source cannot read, and return what makes its scope
        whole again: logged (table, key or position, reason), counted in
        :attr:`records_malformed`, answered with a ``resync`` of ``table`` (``None``:
        everything watched) continuing from ``revision``. Deliver the event in the
        record's place; the stream goes on after it."""
        self._count_malformed(table, key, revision, reason, "resyncing " + (table or "everything watched"))
        return RawEvent("resync", table, "", None, None, revision)

    def _count_malformed(self, table: str | None, key: str, revision: int, reason: str, outcome: str) -> None:
        """Log and count an unreadable record; ``outcome`` says what the source does about it
        (a record that belongs to no watched table is only reported: ``"skipped"``)."""
        self.records_malformed += 1
        log.warning(
            "unreadable change record %s of table %s at revision %d (%s); %s",
            key,
            table if table is not None else "?",
            revision,
            reason,
            outcome,
        )

    @staticmethod
    def _below(buffer: Iterable[RawEvent], position: int) -> int:
        """``position``, or just below the oldest event still in ``buffer``."""
        return min(position, min((ev.revision for ev in buffer), default=position + 1) - 1)

    async def start(self) -> None:  # noqa: B027  (optional: a source subscribed when built skips it)
        """Subscribe: every change after the source's starting revision arrives once this
        returns. ``Driver.watch`` awaits it before it returns the source.

        Raises:
            BackendUnavailableError: the server cannot be reached.
        """

    @property
    @abstractmethod
    def position(self) -> int:
        """Every change of the watched scope at or below this revision has been returned."""

    def caught_up(self) -> int | None:
        """A revision such that every change of the watched scope at or below it has been
        returned, or ``None`` when the source cannot tell: it lets an idle stream's
        cursor move past changes outside its scope. The default is :attr:`position`."""
        return self.position

    def __aiter__(self) -> EventSource:
        return self

    @abstractmethod
    async def __anext__(self) -> RawEvent:
        """The next event, waiting for one; cancellation-safe (see the class documentation).

        Raises:
            StopAsyncIteration: the source was closed.
            BackendUnavailableError: the server is gone and reconnecting failed.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Stop the source and release its tasks and connections; idempotent."""

    async def add_topics(self, topics: Collection[str | None], since: int) -> None:
        """Follow ``topics`` too, from revision ``since``: every change of them after
        ``since`` arrives (those at or before the source's position first, then the rest
        in order). Sources of a watch on every topic ignore this.

        Raises:
            StreamClosedError: this source cannot change its topics; open a new watch.
        """
        raise StreamClosedError(f"{type(self).__name__} cannot add topics to a running watch")


S = TypeVar("S", bound=EventSource)


class Driver(LeaseMethods, ABC):
    """A backend. Subclasses implement the key/value operations below.

    Register a driver under the entry-point group ``dfdb.drivers`` with its URL
    scheme as the name and ``module:Class`` as the value. The class is built with
    ``Driver(url)`` and opened with ``await driver.open()``; it must be closed with
    ``aclose`` (or ``async with``).
    """

    capabilities: ClassVar[Capability] = Capability.NONE
    """What this driver offers; see :class:`Capability`."""
    max_value_size: ClassVar[int | None] = None
    """The largest encoded value, in bytes, the backend takes (``None``: no limit of its own)."""
    requires_asyncio: ClassVar[bool] = False
    """The client library runs only under asyncio: :meth:`open` refuses under trio."""

    def __init__(self, url: DatabaseURL) -> None:
        self.url = url
        self._closed = False
        self._opened = False
        self._warned = False
        self._sources: weakref.WeakSet[EventSource] = weakref.WeakSet()

    @property
    def closed(self) -> bool:
        """Whether ``aclose`` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosedError(f"the {self.url.scheme} driver is closed")

    async def __aenter__(self) -> Driver:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Connect to the backend. The base implementation only marks the driver open.

        Raises:
            BackendUnavailableError: the server cannot be reached.
            UnsupportedEventLoopError: the driver needs asyncio and another event loop runs.
        """
        self._check_open()
        if self.requires_asyncio:
            try:
                library = sniffio.current_async_library()
            except sniffio.AsyncLibraryNotFoundError:
                library = "no event loop"
            if library != "asyncio":
                raise UnsupportedEventLoopError(
                    f"the {self.url.scheme} driver needs asyncio (its client library is asyncio-only); "
                    f"it was opened under {library}"
                )
        self._opened = True

    async def aclose(self) -> None:
        """Close every change source of this driver, then its connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        await close_to_completion(self._close_all)  # a cancelled close would leave connections open

    async def _close_all(self) -> None:
        for source in list(self._sources):
            await source.aclose()
        await self._release()

    async def _release(self) -> None:
        """Close connections and stop tasks; called once by ``aclose``, after the sources."""

    def _track(self, source: S) -> S:
        """Register a source returned by ``watch`` so that ``aclose`` closes it."""
        self._sources.add(source)
        return source

    def __del__(self) -> None:
        if getattr(self, "_opened", False) and not getattr(self, "_closed", True) and not self._warned:
            warnings.warn(f"unclosed dfdb driver {self.url}", ResourceWarning, stacklevel=1, source=self)

    @abstractmethod
    async def identity(self) -> str:
        """A string naming this backend's data: changes when the data is not the same any more
        (another server, or one that came back without its data). Part of every cursor."""

    async def continues(self, identity: str, revision: int) -> bool:
        """Whether the backend's data now holds the history of ``identity`` up to
        ``revision``, though its identity is another (a Redis replica that Sentinel
        promoted holds its old master's history up to where it took over): a cursor of
        ``identity`` at ``revision`` then resumes without ``RESYNC``. The default: never.

        Raises:
            BackendUnavailableError: the server cannot be reached.
        """
        return False

    @abstractmethod
    async def get(self, table: str, id: str) -> Entry | None:
        """The entry at (table, id), or ``None`` when absent."""

    @abstractmethod
    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        """Write ``value`` at (table, id) if ``expect`` holds.

        Args:
            expect: ``ABSENT`` (create), ``ANY`` (unconditional) or the key's
                current revision (compare-and-swap).

        Returns:
            The revision of the write.

        Raises:
            AlreadyExistsError: ``ABSENT`` was expected and the key exists.
            NotFoundError: a revision was expected and the key is absent.
            ConflictError: a revision was expected and the key has another.
            ValueError: an update names another topic than the stored one.
            BackendUnavailableError: the write may or may not have happened.
        """

    async def put_many(self, writes: Sequence[PutRequest]) -> list[int | Exception]:
        """Several ``put`` calls; not atomic. Drivers override this to batch round trips.

        Returns:
            For each request, in order: the write's revision, or the error ``put`` would
            have raised (``AlreadyExistsError``, ``ConflictError``, …).

        Raises:
            BackendUnavailableError: the batch failed as a whole; each write may or may
                not have happened.
        """
        results: list[int | Exception] = [0] * len(writes)

        async def one(i: int, w: PutRequest) -> None:
            try:
                results[i] = await self.put(w.table, w.id, w.topic, w.value, w.expect)
            except Exception as exc:  # the write's outcome, in its place
                results[i] = exc

        async with anyio.create_task_group() as tg:
            for i, w in enumerate(writes):
                tg.start_soon(one, i, w)
        return results

    async def _put_windowed(
        self, writes: Sequence[PutRequest], indexes: Iterable[int], window: int, results: list[int | Exception]
    ) -> None:
        """``put`` the writes at ``indexes``, ``window`` at a time, each outcome into ``results``.

        Raises:
            BackendUnavailableError: a write's outcome is unknown; no further write starts.
        """
        queue = iter(indexes)
        failure: list[Exception] = []

        async def worker() -> None:
            for i in queue:
                if failure:
                    return
                w = writes[i]
                try:
                    results[i] = await self.put(w.table, w.id, w.topic, w.value, w.expect)
                except BackendUnavailableError as exc:
                    failure.append(exc)
                    return
                except (AlreadyExistsError, NotFoundError, ConflictError, ValueError, DriverError) as exc:
                    results[i] = exc
                except Exception as exc:  # raised as itself below, not wrapped in an ExceptionGroup
                    failure.append(exc)
                    return

        async with anyio.create_task_group() as tg:
            for _ in range(max(1, min(window, len(writes)))):
                tg.start_soon(worker)
        if failure:
            raise failure[0]

    @abstractmethod
    async def delete(self, table: str, id: str, expect: int | None = None) -> Entry:
        """Delete (table, id), if it is at revision ``expect`` when given.

        Returns:
            The deleted entry with the revision of the delete.

        Raises:
            NotFoundError: the key is absent.
            ConflictError: ``expect`` was given and the key has another revision.
        """

    @abstractmethod
    async def list(self, table: str, topic: str | None = None) -> Listing:
        """Every entry of ``table`` (of one ``topic`` when given), and the revision
        the listing is consistent with: a watch from that revision misses nothing."""

    @abstractmethod
    async def watch(
        self,
        tables: Collection[str],
        topics: Collection[str | None] | None = None,
        since: int | None = None,
    ) -> EventSource:
        """Subscribe to changes of ``tables``; subscribed when this returns.

        Args:
            topics: only these topics (``None`` in the set: topic-less objects);
                ``None``: every topic. A driver without ``TOPIC_FILTER`` may return
                other topics too; the caller filters.
            since: deliver every change after this revision (drivers with a change
                log or native stream); ``None``: changes from now on. When history
                after ``since`` is gone the source yields a ``resync`` event first.
        """

    async def digest(self, table: str, topics: Collection[str | None] | None, buckets: int) -> Digest:
        """The digest of a scope: for each bucket of ids (see :mod:`dfdb.drivers.digest`), how
        many entries and a hash over their (id, revision). A driver computes it on the server
        where it can, reading no values; this fallback lists the scope.

        Args:
            topics: only these topics (``None`` in the set: topic-less entries); ``None``:
                the whole table.
            buckets: how many buckets the ids are cut into.
        """
        entries, revision, trips = await self._scope_entries(table, topics)
        return Digest(
            digest_of(((e.id, e.revision) for e in entries), buckets),
            revision,
            len(entries),
            len(entries),
            sum(_size(e) for e in entries),
            trips,
        )

    async def digest_keys(
        self, table: str, topics: Collection[str | None] | None, buckets: int, wanted: Collection[int]
    ) -> KeyListing:
        """The ids of the scope in the ``wanted`` buckets and their revisions (for a
        :meth:`digest` that differs), reading no values where the driver can; this fallback
        lists the scope."""
        entries, revision, trips = await self._scope_entries(table, topics)
        chosen = keys_of(((e.id, e.revision) for e in entries), buckets, wanted)
        size = sum(_size(e) for e in entries)
        return KeyListing(
            chosen, revision, len(entries), size, trips, {e.id: e.topic for e in entries if e.id in chosen}
        )

    async def _scope_entries(
        self, table: str, topics: Collection[str | None] | None
    ) -> tuple[builtins.list[Entry], int, int]:
        """The entries of a scope by :meth:`list`, the highest revision of its listings and how
        many listings it took."""
        if topics is None:
            listing = await self.list(table)
            return listing.entries, listing.revision, 1
        entries: builtins.list[Entry] = []
        revision = trips = 0
        named = sorted(t for t in topics if t is not None)
        for topic in named:
            listing = await self.list(table, topic)
            entries += listing.entries
            revision, trips = max(revision, listing.revision), trips + 1
        if None in topics:
            listing = await self.list(table)
            entries += [e for e in listing.entries if e.topic is None]
            revision, trips = max(revision, listing.revision), trips + 1
        return entries, revision, trips

    async def tables(self) -> Sequence[str] | None:
        """The names of the tables that hold at least one entry, sorted; ``None`` when the
        driver cannot tell (``dfdb tables``, ``dump`` and ``copy`` then refuse to run)."""
        return None

    @abstractmethod
    async def allocate_unique_key(self, table: str) -> int:
        """A positive integer never returned before for ``table`` on this backend."""

    @abstractmethod
    async def compact(self) -> None:
        """Discard change history up to the current revision, as an operator's maintenance
        step would; a watcher resuming from an older cursor then gets ``resync``. A driver
        that keeps no history does nothing."""
