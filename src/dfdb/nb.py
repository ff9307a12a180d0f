"""The NbApi: models in, key/value out, with versions, retries and change streams."""

from __future__ import annotations

import builtins
import logging
import warnings
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import anyio
from pydantic import ValidationError

from dfdb.codec import (
    check_topic,
    decode,
    encode,
    first_error,
    model_of,
    origin_of,
    raw_version,
    revision_of,
    table_of,
    unknown_fields,
)
from dfdb.drivers.base import ABSENT, ANY, Capability, Driver, Entry, Expect, Guard
from dfdb.errors import (
    AlreadyExistsError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConflictError,
    CorruptObjectError,
    DfdbError,
    LockedError,
    NotFoundError,
    OutcomeUnknownError,
    StreamClosedError,
)
from dfdb.events import ChangeStream, DriverOpener, format_cursor, parse_cursor
from dfdb.leases import Lease, Lock, guard_of, lease_of
from dfdb.metrics.stats import NbCounters, NbStats
from dfdb.nbmodel import NbModel, validate_key
from dfdb.retry import Backoff, checkpoint_if_cancelled, fail_at, gather_outcomes, now, run_to_completion
from dfdb.url import MAX_POLL_INTERVAL, DatabaseURL, positive_seconds
from dfdb.writes import Batch, create_chunk, in_waves, update_chunk, write

__all__ = ["ListResult", "NbApi", "Notifications", "revision_of"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=NbModel)
T = TypeVar("T")

Notifications = Literal["auto", "native", "poll"]

BATCH_CHUNK = 256
_CONFLICT_BACKOFF = Backoff(initial=0.001, maximum=0.1)
"""Pauses between ``patch``/``put`` attempts that met a concurrent writer: short, jittered, growing."""


@dataclass(frozen=True, slots=True)
class ListResult(Generic[M]):
    """Objects and the cursor they are consistent with: ``watch(since=cursor)`` misses nothing."""

    items: list[M]
    cursor: str
    corrupt: list[str] = field(default_factory=list)
    """Ids whose stored values failed validation (logged and left out of ``items``)."""


class NbApi:
    """The northbound database API: the only API applications need.

    Create it with :func:`connect`. All methods are coroutines except ``watch``,
    which returns a :class:`ChangeStream` to enter with ``async with``.
    """

    def __init__(
        self,
        driver: Driver,
        *,
        notifications: Notifications = "auto",
        poll_interval: float = 0.5,
        timeout: float = 10.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.driver = driver
        """The driver underneath (for driver authors and tools)."""
        self.notifications = notifications
        self.poll_interval = positive_seconds("poll_interval", poll_interval, MAX_POLL_INTERVAL)
        self.timeout = positive_seconds("timeout", timeout)
        self.backoff = backoff or Backoff()
        self._counters = NbCounters(self)
        self._identity: str | None = None
        self._state = "new"

    def _set_identity(self, identity: str) -> None:
        self._identity = identity

    @property
    def retries(self) -> int:
        """Calls retried after a connection failure or a timeout (each retry counts once)."""
        return self._counters.total("retries")

    @property
    def conflict_retries(self) -> int:
        """``patch`` and ``put`` attempts repeated because a concurrent writer came first."""
        return self._counters.total("conflict_retries")

    def stats(self) -> NbStats:
        """The counters now: writes and their outcomes (in all and by table), and the
        change streams (those of Replicas included). ``dfdb.metrics`` exports them."""
        return self._counters.stats()

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> DatabaseURL:
        """The driver's URL (``str()`` masks the password)."""
        return self.driver.url

    @property
    def exact(self) -> bool:
        """Whether change streams deliver every change (native stream or change log)
        rather than only converge (snapshot polling)."""
        caps = self.driver.capabilities
        return self.notifications != "poll" and bool(caps & (Capability.NATIVE_STREAM | Capability.CHANGE_LOG))

    async def __aenter__(self) -> NbApi:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __await__(self) -> Any:
        return self.__aenter__().__await__()

    async def open(self) -> None:
        """Connect; ``async with`` calls this.

        Raises:
            BackendUnavailableError: the server cannot be reached within the timeout.
        """
        if self._state == "open":
            return
        if self._state == "closed":
            raise StreamClosedError("this NbApi is closed")
        self._state = "open"
        try:
            await self._retry(self.driver.open, "connect")
            self._identity = await self._retry(self.driver.identity, "connect")
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the driver and every stream it serves; idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        await self.driver.aclose()

    def __del__(self) -> None:
        if getattr(self, "_state", "closed") == "open":
            self.driver._warned = True  # one warning for the pair is enough
            warnings.warn(f"unclosed dfdb NbApi {self.url}", ResourceWarning, stacklevel=1, source=self)

    def _check(self) -> None:
        if self._state != "open":
            raise StreamClosedError(
                "this NbApi is closed" if self._state == "closed" else "enter the NbApi with 'async with' first"
            )

    # ----------------------------------------------------------------- retries
    async def _retry(
        self, call: Callable[[], Awaitable[T]], what: str, table: str = "",
        give_up: Callable[[BaseException], DfdbError] | None = None, *, bounded: bool = False,
        deadline: float | None = None,
    ) -> T:  # fmt: skip
        """``call()`` retried with backoff on connection failures and timeouts until the
        NbApi's timeout (or ``deadline``, on anyio's clock: the caller's, taken just before);
        then ``give_up(last error)`` is raised (``BackendUnavailableError`` by default).
        ``OutcomeUnknownError`` and cancellation are never retried. ``bounded``: ``call``
        bounds itself (by one NbApi timeout from now at most): no cancel scope around it."""
        if deadline is None:
            deadline = now() + self.timeout
        attempt = 0
        while True:
            try:
                if bounded:
                    result = await call()
                else:
                    with fail_at(max(deadline, now() + 0.001)):
                        result = await call()
                await checkpoint_if_cancelled()
                return result
            except (BackendUnavailableError, BackendTimeoutError, TimeoutError) as exc:
                await checkpoint_if_cancelled()
                if isinstance(exc, OutcomeUnknownError):
                    raise
                delay = self.backoff.delay(attempt)
                attempt += 1
                if now() + delay >= deadline:
                    raise (give_up(exc) if give_up else self._unavailable(what, exc)) from exc
                await self._pause(what, table, exc, attempt, delay)

    async def _pause(self, what: str, table: str, exc: BaseException, attempt: int, delay: float) -> None:
        """Count and log one retry of ``what`` (on ``table``), then sleep ``delay`` seconds."""
        self._counters.add("retries", table)
        log.debug("%s on %s failed (%s); retry %d in %.3fs", what, self.url, self._reason(exc), attempt, delay)
        await anyio.sleep(delay)

    def _reason(self, exc: BaseException) -> str:
        return str(exc).removeprefix(f"{self.url}: ") or f"no answer within {self.timeout:g}s"  # the URL once

    def _unavailable(self, what: str, exc: BaseException) -> BackendUnavailableError:
        return BackendUnavailableError(f"{self.url}: {what} failed: {self._reason(exc)}")

    async def _write(
        self, table: str, id: str, topic: str | None, value: bytes, wid: bytes, expect: Expect,
        lease: str | None = None, guard: Guard | None = None, *, sent: bool = False,
    ) -> int:  # fmt: skip
        """``driver.put`` with retries; see :func:`dfdb.writes.write`."""
        return await write(self, table, id, topic, value, wid, expect, sent=sent, lease=lease, guard=guard)

    # ----------------------------------------------------------------- encoding
    def _prepare(self, obj: M, version: int) -> tuple[M, bytes, bytes]:
        """Validate and encode ``obj`` at ``version`` for this driver; see :func:`codec.encode`."""
        return encode(obj, version, self.driver.max_value_size, f"{self.url.scheme}://")

    def _decode_entry(self, model: type[M], entry: Entry) -> M:
        return decode(model, entry.id, entry.topic, entry.value, entry.revision)

    # ----------------------------------------------------------------- objects
    async def create(self, obj: M, *, lease: Lease | None = None, guard: Lease | Lock | None = None) -> M:
        """Store a new object; returns it with ``version`` 1.

        Args:
            lease: bind the object to this lease: it is deleted when the lease ends.
            guard: commit only while this lock (or lease) is still held.

        Raises:
            AlreadyExistsError: an object with that (table, id) exists.
            LeaseLostError: ``lease`` or ``guard`` ended; nothing was written.
            ValueError: the object or its key is invalid (``ValueTooLargeError``: too large).
        """
        self._check()
        new, value, wid = self._prepare(obj, 1)
        bound, guarded = lease_of(self, lease), guard_of(self, guard)
        revision = await self._write(type(new).__table__, new.id, new.topic, value, wid, ABSENT, bound, guarded)
        object.__setattr__(new, "__pydantic_private__", {"_dfdb_origin": (revision, new.topic)})
        return new

    async def update(self, obj: M, *, lease: Lease | None = None, guard: Lease | Lock | None = None) -> M:
        """Replace an object, if it is still at ``obj.version`` (compare-and-swap); ``lease``
        and ``guard`` as in :meth:`create` (an update without ``lease`` unbinds the object).

        Returns:
            The stored object, ``version`` increased by one.

        Raises:
            ConflictError: the object changed since ``obj`` was read.
            NotFoundError: the object does not exist.
            CorruptObjectError: ``obj`` was not read through an NbApi and the stored value
                is corrupt (use :meth:`put` to replace it).
            ValueError: the object or its key is invalid, or ``obj.topic`` differs from the
                stored topic.
        """
        self._check()
        model = model_of(obj)
        table = model.__table__
        if type(obj.version) is not int:
            raise ValueError(
                f"invalid {table}/{obj.__dict__.get('id')}: version must be an integer, not {obj.version!r}"
            )
        new, value, wid = self._prepare(obj, obj.version + 1)
        origin = origin_of(obj)
        if origin is None:
            current = await self._retry(lambda: self.driver.get(table, new.id), "get", table)
            if current is None:
                raise NotFoundError(f"{table}/{new.id} not found")
            stored = self._decode_entry(model, current)
            if stored.version != obj.version:
                self._counters.add("conflicts", table)
                raise ConflictError(f"{table}/{new.id} is at version {stored.version}, not {obj.version}")
            origin = (current.revision, current.topic)
        check_topic(table, new.id, origin[1], new.topic)
        bound, guarded = lease_of(self, lease), guard_of(self, guard)
        revision = await self._write(table, new.id, new.topic, value, wid, origin[0], bound, guarded)
        object.__setattr__(new, "__pydantic_private__", {"_dfdb_origin": (revision, new.topic)})
        return new

    async def put(self, obj: M, *, lease: Lease | None = None, guard: Lease | Lock | None = None) -> M:
        """Create or replace the object (table, id) whatever is stored now, a corrupt value
        included: the way to repair an object that another program wrote badly. ``lease``
        and ``guard`` as in :meth:`create`.

        ``obj.version`` is ignored: the stored object gets the stored version plus one (read
        from the raw value, so a corrupt one counts too), or 1 when there was none. It is
        written with compare-and-swap against what was read and read again when another
        writer came first, until the timeout; an entry the driver cannot read at all is replaced.

        Raises:
            ConflictError: concurrent writers kept coming first until the timeout.
            ValueError: the object or its key is invalid, or ``obj.topic`` differs from the
                stored topic (topics are fixed: delete and create instead).
        """
        self._check()
        model = model_of(obj)
        table = model.__table__
        validate_key(obj.__dict__.get("id", ""))  # model_construct may leave it out
        deadline, attempt = anyio.current_time() + self.timeout, 0
        while True:
            expect: Expect = ABSENT
            version = 1
            try:
                current = await self._retry(lambda: self.driver.get(table, obj.id), "get", table)
            except CorruptObjectError:  # not even its revision can be read: replace it
                current, expect = None, ANY
            if current is not None:
                check_topic(table, obj.id, current.topic, obj.topic)
                expect = current.revision
                version = raw_version(current.value) + 1
            new, value, wid = self._prepare(obj, version)
            bound, guarded = lease_of(self, lease), guard_of(self, guard)
            try:
                revision = await self._write(table, new.id, new.topic, value, wid, expect, bound, guarded)
            except (ConflictError, AlreadyExistsError, NotFoundError) as exc:
                attempt = await self._conflict_pause(f"put of {table}/{obj.id}", table, exc, attempt, deadline)
                continue
            object.__setattr__(new, "__pydantic_private__", {"_dfdb_origin": (revision, new.topic)})
            return new

    async def patch(self, model: type[M], id: str, /, **changes: Any) -> M:
        """Read, merge ``changes`` and update; on a conflict, read and merge again after a
        short jittered pause, until the timeout.

        Raises:
            NotFoundError: the object does not exist.
            CorruptObjectError: the stored value is corrupt (use :meth:`put` to replace it).
            ConflictError: concurrent writers kept coming first until the timeout.
            ValueError: a change names an unknown field, fails validation or changes the topic.
        """
        table = table_of(model)
        for key in ("id", "version"):
            if key in changes:
                raise ValueError(f"patch cannot change {key!r}")
        unknown = sorted(set(changes) - set(model.model_fields))
        if unknown:
            raise ValueError(f"{table} has no field {', '.join(map(repr, unknown))}")
        deadline = anyio.current_time() + self.timeout
        attempt = 0
        while True:
            current = await self.get(model, id)
            try:
                merged = model.model_validate({**current.model_dump(), **changes})
            except ValidationError as exc:
                raise ValueError(f"invalid {table}/{id}: {first_error(exc)}") from exc
            extra = unknown_fields(changes, merged.model_dump())
            if extra:
                raise ValueError(f"{table}/{id}: unknown field {', '.join(map(repr, extra))}")
            object.__setattr__(merged, "__pydantic_private__", dict(current.__pydantic_private__ or {}))
            try:
                return await self.update(merged)
            except ConflictError as exc:
                attempt = await self._conflict_pause(f"patch of {table}/{id}", table, exc, attempt, deadline)

    async def _conflict_pause(self, what: str, table: str, exc: DfdbError, attempt: int, deadline: float) -> int:
        """Count, log and wait out one conflict of ``what``; re-raise it once the deadline is near."""
        delay = _CONFLICT_BACKOFF.delay(attempt)
        if anyio.current_time() + delay >= deadline:
            raise ConflictError(
                f"{what}: concurrent writers came first for {self.timeout:g}s ({attempt + 1} attempts): {exc}"
            ) from exc
        self._counters.add("conflict_retries", table)
        log.debug("%s met a concurrent writer (%s); attempt %d in %.3fs", what, exc, attempt + 2, delay)
        await anyio.sleep(delay)
        return attempt + 1

    async def get(self, model: type[M], id: str) -> M:
        """The object (table, id).

        Raises:
            NotFoundError: it does not exist.
            CorruptObjectError: its stored value fails validation.
        """
        self._check()
        table = table_of(model)
        validate_key(id)
        entry = await self._retry(lambda: self.driver.get(table, id), "get", table)
        if entry is None:
            raise NotFoundError(f"{table}/{id} not found")
        return self._decode_entry(model, entry)

    async def list(self, model: type[M], topic: str | None = None) -> ListResult[M]:
        """Every object of ``model`` (of one ``topic`` when given), sorted by id, and
        the cursor they are consistent with. Corrupt values are logged and skipped."""
        self._check()
        table = table_of(model)
        if topic is not None:
            validate_key(topic, "topic")
        listing = await self._retry(lambda: self.driver.list(table, topic), "list", table)
        items: builtins.list[M] = []
        corrupt: builtins.list[str] = []
        for entry in sorted(listing.entries, key=lambda e: e.id):
            try:
                items.append(self._decode_entry(model, entry))
            except CorruptObjectError as exc:
                log.warning("skipping %s", exc)
                corrupt.append(entry.id)
        return ListResult(items, format_cursor(listing.identity or self._identity or "", listing.revision), corrupt)

    async def get_all(self, model: type[M], topic: str | None = None) -> builtins.list[M]:
        """Every object of ``model`` (of one ``topic`` when given), sorted by id."""
        return (await self.list(model, topic)).items

    async def delete(self, model: type[M], id: str, *, guard: Lease | Lock | None = None) -> None:
        """Delete the object (table, id), also when its stored value is corrupt; with
        ``guard``, only while that lock (or lease) is still held.

        Raises:
            NotFoundError: it does not exist.
            LeaseLostError: ``guard`` ended; nothing was deleted.
        """
        self._check()
        table = table_of(model)
        validate_key(id)
        checked = guard_of(self, guard)
        if checked is not None:
            with self._counters.writing(table), anyio.fail_after(self.timeout):
                await run_to_completion(lambda: self.driver.delete_guarded(table, id, checked))
            return
        with self._counters.writing(table):
            try:
                with anyio.fail_after(self.timeout):
                    # sent: let it finish, so it never lands after a cancelled caller returned
                    await run_to_completion(lambda: self.driver.delete(table, id))
                await checkpoint_if_cancelled()
            except (BackendUnavailableError, BackendTimeoutError, TimeoutError) as exc:
                await checkpoint_if_cancelled()
                if isinstance(exc, OutcomeUnknownError):
                    raise
                if isinstance(exc, LockedError):  # locked until the deadline: nothing was deleted
                    raise LockedError(f"delete of {table}/{id} was not applied: {self._reason(exc)}") from exc
                self._counters.add("retries", table)
                log.debug("delete of %s/%s on %s failed (%s); retrying", table, id, self.url, self._reason(exc))
                try:
                    await self._retry(lambda: run_to_completion(lambda: self.driver.delete(table, id)), "delete", table)
                except NotFoundError:
                    raise OutcomeUnknownError(
                        f"{self.url}: the reply to a delete of {table}/{id} was lost and the object is gone; "
                        "it cannot be told whether this call or another deleted it"
                    ) from exc

    async def allocate_unique_key(self, model: type[NbModel]) -> int:
        """A positive integer never returned before for ``model``'s table."""
        self._check()
        table = table_of(model)
        return await self._retry(lambda: self.driver.allocate_unique_key(table), "allocate_unique_key", table)

    async def create_many(self, objs: Iterable[M]) -> builtins.list[M | Exception]:
        """Create many objects, in chunks (one driver batch each); not atomic. Cancelled, the
        chunk already sent runs to its end first; the later ones are not sent. Writes of one
        (table, id) apply in their order, as separate calls would (the first one wins). A
        chunk whose reply was lost is finished within one more timeout (a write still unknown
        then is an ``OutcomeUnknownError``), and then nothing more is sent (each later write a
        ``BackendUnavailableError``): the call ends within about two timeouts, however long.

        Returns:
            For each input, in order: the stored object, or the error that refused it (a ``DfdbError``, or a
            ``ValueError``/``TypeError`` for an invalid object).
        """
        self._check()
        results: builtins.list[M | Exception] = []
        items, batch = list(objs), Batch()
        for start in range(0, len(items), BATCH_CHUNK):
            results.extend(await in_waves(items[start : start + BATCH_CHUNK], lambda c: create_chunk(self, c, batch)))
        return results

    async def update_many(self, objs: Iterable[M]) -> builtins.list[M | Exception]:
        """Update many objects (each compare-and-swap), in chunks; not atomic. Cancelled, the
        updates already sent run to their end first; the others are not sent. Updates of one
        (table, id) apply in their order, as separate calls would (the first one wins). A lost
        reply ends the call as it does :meth:`create_many`'s.

        Returns:
            For each input, in order: the stored object, or the error that refused it (a ``DfdbError``, or a
            ``ValueError``/``TypeError`` for an invalid object).
        """
        self._check()
        items, batch = list(objs), Batch()
        results: builtins.list[M | Exception] = []
        for start in range(0, len(items), BATCH_CHUNK):
            results.extend(await in_waves(items[start : start + BATCH_CHUNK], lambda c: update_chunk(self, c, batch)))
        return results

    async def _many(self, op: Callable[[M], Awaitable[M]], objs: Iterable[M]) -> builtins.list[M | Exception]:
        self._check()
        items = list(objs)
        results: builtins.list[M | Exception] = []
        for start in range(0, len(items), BATCH_CHUNK):
            chunk = items[start : start + BATCH_CHUNK]
            done = await gather_outcomes(op, chunk)
            for outcome in done:
                if isinstance(outcome, Exception) and not isinstance(outcome, DfdbError | ValueError | TypeError):
                    raise outcome
                results.append(outcome)
        return results

    # ----------------------------------------------------------------- liveness
    def lease(self, ttl: float, *, keepalive: bool = True) -> Lease:
        """A :class:`Lease` of ``ttl`` seconds, granted when entered with ``async with`` and
        kept alive in the background (every third of the TTL) until the block ends, which
        revokes it. ``keepalive=False``: the lease lives ``ttl`` seconds unless refreshed
        with :meth:`Lease.refresh`. See :mod:`dfdb.leases`.

        Raises:
            ValueError: ``ttl`` is not between 0.5 seconds and a day.
        """
        self._check()
        return Lease(self, ttl, keepalive=keepalive)

    def lock(self, name: str, ttl: float, *, timeout: float | None = None) -> Lock:
        """A fenced :class:`Lock` named ``name``, taken when entered with ``async with``
        (waiting while another holder has it; ``timeout``: at most that many seconds, then
        ``LockedError``) and held through a lease of ``ttl`` seconds; released at the end.

        Raises:
            ValueError: ``name`` is not a valid key or ``ttl`` is out of range.
        """
        self._check()
        return Lock(self, name, ttl, timeout)

    # ----------------------------------------------------------------- streams
    def watch(
        self,
        models: type[NbModel] | Sequence[type[NbModel]],
        *,
        topics: Iterable[str | None] | None = None,
        since: str | None = None,
    ) -> ChangeStream:
        """A :class:`ChangeStream` of ``models``; enter it with ``async with``.

        Args:
            topics: only these topics; ``None`` in the set includes topic-less objects.
            since: a cursor (from ``list`` or ``ChangeStream.cursor``): deliver every
                change after it. A cursor of another backend, or one whose history is
                gone, yields ``RESYNC`` first.

        Raises:
            ValueError: ``since`` is not a cursor or a topic is invalid.
        """
        self._check()
        model_list = [models] if isinstance(models, type) else list(models)
        if not model_list:
            raise ValueError("watch needs at least one model")
        by_table = {table_of(m): m for m in model_list}
        if isinstance(topics, str):
            raise TypeError(f"topics must be a collection of topics, not the string {topics!r}")
        topic_set = None if topics is None else frozenset(topics)
        for t in topic_set or ():
            if t is not None:
                validate_key(t, "topic")
        start = parse_cursor(since) if since is not None else None
        opener = DriverOpener(
            self.driver,
            poll=not self.exact,
            poll_interval=self.poll_interval,
            backoff=self.backoff,
            retry=self._retry,
            on_identity=self._set_identity,
        )
        stream = ChangeStream(by_table, topic_set, start, opener)
        self._counters.track_stream(stream)
        return stream
