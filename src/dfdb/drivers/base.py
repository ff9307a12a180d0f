"""The driver contract: a minimal key/value store with revisions and a change stream.

A driver never sees a model: it stores ``(table, id) -> (value bytes, revision)``
with the object's topic carried alongside. Revisions are integers that strictly
increase across all writes of a deployment.

The records of the contract live in :mod:`dfdb.drivers.records`, the change source in
:mod:`dfdb.drivers.eventsource`; both are importable from here too.
"""

from __future__ import annotations

import builtins
import warnings
import weakref
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from types import TracebackType
from typing import ClassVar, TypeVar

import anyio
import sniffio

from dfdb.drivers.digest import Digest, KeyListing, digest_of, keys_of
from dfdb.drivers.eventsource import EventSource
from dfdb.drivers.leasing import Guard, LeaseMethods
from dfdb.drivers.records import (
    ABSENT,
    ANY,
    Capability,
    Entry,
    Expect,
    Listing,
    PutRequest,
    RawAction,
    RawEvent,
    check_delete,
    check_put,
    entry_size,
)
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
    unnamed_identities: ClassVar[frozenset[str]] = frozenset()
    """Identities that name no dataset yet (a Redis reader's placeholder before any writer
    made one): a stream that began under one of them is continued by whichever dataset
    comes first, so a consistency check does not take it for another dataset's."""

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

    async def list_many(self, scopes: Sequence[tuple[str, str | None]]) -> builtins.list[Listing]:
        """The listing of each (table, topic) of ``scopes``, in order, each as :meth:`list`
        returns it. By default one :meth:`list` after the other; a driver that reads many
        small scopes in fewer round trips (Redis: one pipeline) overrides it."""
        return [await self.list(table, topic) for table, topic in scopes]

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
            sum(entry_size(e) for e in entries),
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
        size = sum(entry_size(e) for e in entries)
        return KeyListing(
            chosen, revision, len(entries), size, trips, {e.id: e.topic for e in entries if e.id in chosen}
        )

    async def digest_many(self, buckets: Mapping[str, int], topics: Collection[str | None] | None) -> dict[str, Digest]:
        """The :meth:`digest` of each table of ``buckets`` (table -> how many buckets), all of
        one scope (``topics``, as for :meth:`digest`): what a consistency check reads. By
        default one :meth:`digest` after the other; a driver that reads several tables' keys
        in fewer requests (etcd) overrides it."""
        return {table: await self.digest(table, topics, n) for table, n in buckets.items()}

    async def digest_keys_many(self, scopes: Mapping[str, Collection[str | None] | None]) -> dict[str, KeyListing]:
        """The ids and revisions of every entry of each table's scope (``scopes``: table ->
        topics, as for :meth:`digest_keys`), all buckets: what a relist by keys reads. By
        default one :meth:`digest_keys` after the other; a driver that reads several tables'
        keys in fewer requests (etcd: one keys-only range per topic) overrides it."""
        return {table: await self.digest_keys(table, topics, 1, (0,)) for table, topics in scopes.items()}

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
