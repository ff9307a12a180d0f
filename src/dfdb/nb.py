"""The NbApi: models in, key/value out, with versions, retries and change streams."""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import uuid
import warnings
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, cast

from pydantic import ValidationError

from dfdb.drivers import driver_class
from dfdb.drivers.base import ABSENT, ANY, Capability, Driver, Entry, EventSource, Expect, PutRequest
from dfdb.drivers.polling import SnapshotPoller
from dfdb.errors import (
    AlreadyExistsError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    CorruptObjectError,
    DfdbError,
    NotFoundError,
    OutcomeUnknownError,
    StreamClosedError,
)
from dfdb.events import ChangeStream, SourceOpener, format_cursor, parse_cursor
from dfdb.nbmodel import NbModel, validate_key
from dfdb.retry import Backoff, checkpoint, raise_if_cancelling
from dfdb.url import DatabaseURL

__all__ = ["ListResult", "NbApi", "Notifications", "connect", "revision_of"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=NbModel)
T = TypeVar("T")

Notifications = Literal["auto", "native", "poll"]

PATCH_ATTEMPTS = 10
BATCH_CHUNK = 256
_WRITE_ID = b'{"_w":"'


@dataclass(frozen=True, slots=True)
class ListResult(Generic[M]):
    """Objects and the cursor they are consistent with: ``watch(since=cursor)`` misses nothing."""

    items: list[M]
    cursor: str


def connect(
    url: str | DatabaseURL,
    *,
    notifications: Notifications | None = None,
    poll_interval: float | None = None,
    timeout: float | None = None,
) -> NbApi:
    """An :class:`NbApi` for ``url``; open it with ``async with`` (or ``await``).

    Args:
        url: e.g. ``memory://``, ``redis://127.0.0.1:6379/0``. The options
            ``notifications``, ``poll_interval`` and ``timeout`` may also be given in
            the URL's query string; keyword arguments win.
        notifications: ``auto`` (native stream or change log when the driver has
            one, else snapshot polling), ``native`` (refuse polling) or ``poll``.
        poll_interval: seconds between snapshot polls (default 0.5).
        timeout: seconds a call may take, retries included, before
            ``BackendUnavailableError`` (default 10).

    Raises:
        InvalidURL, UnknownDriverError, MissingDependencyError: a configuration mistake.
    """
    parsed = DatabaseURL.parse(url)
    mode = notifications or parsed.option("notifications", "auto")
    if mode not in ("auto", "native", "poll"):
        raise ConfigurationError(f"notifications must be auto, native or poll, not {mode!r}")
    interval = poll_interval if poll_interval is not None else parsed.float_option("poll_interval", 0.5)
    limit = timeout if timeout is not None else parsed.float_option("timeout", 10.0)
    if interval <= 0 or limit <= 0:
        raise ConfigurationError("poll_interval and timeout must be positive")
    driver_url = parsed.without_options("notifications", "poll_interval", "timeout")
    driver = driver_class(driver_url)(driver_url)
    if mode == "native" and not driver.capabilities & (Capability.NATIVE_STREAM | Capability.CHANGE_LOG):
        raise ConfigurationError(f"the {parsed.scheme}:// driver has no native change stream")
    return NbApi(driver, notifications=cast(Notifications, mode), poll_interval=interval, timeout=limit)


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
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.backoff = backoff or Backoff()
        self._identity: str | None = None
        self._state = "new"

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
    async def _retry(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        attempt = 0
        while True:
            remaining = deadline - loop.time()
            try:
                async with asyncio.timeout(max(remaining, 0.001)):
                    result = await call()
                checkpoint()
                return result
            except (BackendUnavailableError, BackendTimeoutError, TimeoutError) as exc:
                raise_if_cancelling(exc)
                if isinstance(exc, OutcomeUnknownError):
                    raise
                delay = self.backoff.delay(attempt)
                attempt += 1
                if loop.time() + delay >= deadline:
                    raise self._unavailable(what, exc) from exc
                await asyncio.sleep(delay)

    def _unavailable(self, what: str, exc: BaseException) -> BackendUnavailableError:
        reason = str(exc) or f"no answer within {self.timeout:g}s"
        return BackendUnavailableError(f"{self.url}: {what} failed: {reason}")

    async def _write(
        self, table: str, id: str, topic: str | None, value: bytes, wid: bytes, expect: Expect, *, sent: bool = False
    ) -> int:
        """``driver.put`` with retries; recognises its own earlier success by the write id.

        ``sent``: an earlier attempt may have reached the server (its reply was lost).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
                    if sent:
                        current = await self.driver.get(table, id)
                        if current is not None and _write_id(current.value) == wid:
                            return current.revision
                        if not _still_expected(current, expect):
                            raise OutcomeUnknownError(
                                f"{self.url}: the reply to a write of {table}/{id} was lost and the object "
                                "has changed since; the write may or may not have taken effect"
                            )
                    retried, sent = sent, True
                    try:
                        revision = await self.driver.put(table, id, topic, value, expect)
                    except (ConflictError, AlreadyExistsError):
                        if not retried:
                            raise
                        # the earlier attempt may have landed after the check above
                        current = await self.driver.get(table, id)
                        if current is None or _write_id(current.value) != wid:
                            raise
                        revision = current.revision
                checkpoint()
                return revision
            except (BackendUnavailableError, BackendTimeoutError, TimeoutError) as exc:
                raise_if_cancelling(exc)
                if isinstance(exc, OutcomeUnknownError):
                    raise
                delay = self.backoff.delay(attempt)
                attempt += 1
                if loop.time() + delay >= deadline:
                    raise OutcomeUnknownError(
                        f"{self.url}: write of {table}/{id} failed and its outcome is unknown: "
                        f"{exc or f'no answer within {self.timeout:g}s'}"
                    ) from exc
                await asyncio.sleep(delay)

    # ----------------------------------------------------------------- encoding
    def _encode(self, obj: NbModel) -> tuple[bytes, bytes]:
        wid = uuid.uuid4().hex.encode()
        body = obj.__pydantic_serializer__.to_json(obj)
        return _WRITE_ID + wid + b'",' + body[1:], wid

    @staticmethod
    def _decode(model: type[M], id: str, topic: str | None, value: bytes, revision: int) -> M:
        try:
            obj = model.model_validate_json(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "value"
            raise CorruptObjectError(model.__table__, id, f"{where}: {first.get('msg')}") from None
        if obj.id != id or obj.topic != topic:
            raise CorruptObjectError(model.__table__, id, f"stored object names {obj.topic}/{obj.id}")
        object.__setattr__(obj, "__pydantic_private__", {"_dfdb_origin": (revision, topic)})
        return obj

    def _decode_entry(self, model: type[M], entry: Entry) -> M:
        return self._decode(model, entry.id, entry.topic, entry.value, entry.revision)

    # ----------------------------------------------------------------- objects
    async def create(self, obj: M) -> M:
        """Store a new object; returns it with ``version`` 1.

        Raises:
            AlreadyExistsError: an object with that (table, id) exists.
        """
        self._check()
        model = _model_of(obj)
        new = obj.model_copy(update={"version": 1})
        value, wid = self._encode(new)
        revision = await self._write(model.__table__, obj.id, obj.topic, value, wid, ABSENT)
        object.__setattr__(new, "__pydantic_private__", {"_dfdb_origin": (revision, obj.topic)})
        return new

    async def update(self, obj: M) -> M:
        """Replace an object, if it is still at ``obj.version`` (compare-and-swap).

        Returns:
            The stored object, ``version`` increased by one.

        Raises:
            ConflictError: the object changed since ``obj`` was read.
            NotFoundError: the object does not exist.
            ValueError: ``obj.topic`` differs from the stored topic.
        """
        self._check()
        model = _model_of(obj)
        table = model.__table__
        origin = obj._dfdb_origin
        if origin is None:
            current = await self._retry(lambda: self.driver.get(table, obj.id), "get")
            if current is None:
                raise NotFoundError(f"{table}/{obj.id} not found")
            stored = self._decode_entry(model, current)
            if stored.version != obj.version:
                raise ConflictError(f"{table}/{obj.id} is at version {stored.version}, not {obj.version}")
            origin = (current.revision, current.topic)
        if origin[1] != obj.topic:
            raise ValueError(
                f"{table}/{obj.id}: the topic is fixed for an object's life "
                f"({origin[1]!r} -> {obj.topic!r}); delete and create instead"
            )
        new = obj.model_copy(update={"version": obj.version + 1})
        value, wid = self._encode(new)
        revision = await self._write(table, obj.id, obj.topic, value, wid, origin[0])
        object.__setattr__(new, "__pydantic_private__", {"_dfdb_origin": (revision, obj.topic)})
        return new

    async def patch(self, model: type[M], id: str, /, **changes: Any) -> M:
        """Read, merge ``changes`` and update, retrying on conflicts (at most 10 attempts).

        Raises:
            NotFoundError: the object does not exist.
            ConflictError: every attempt met a concurrent writer.
            ValueError: the changes fail validation or change the topic.
        """
        for key in ("id", "version"):
            if key in changes:
                raise ValueError(f"patch cannot change {key!r}")
        for _ in range(PATCH_ATTEMPTS):
            current = await self.get(model, id)
            merged = model.model_validate({**current.model_dump(), **changes})
            object.__setattr__(merged, "__pydantic_private__", dict(current.__pydantic_private__ or {}))
            try:
                return await self.update(merged)
            except ConflictError:
                continue
        raise ConflictError(f"{model.__table__}/{id}: {PATCH_ATTEMPTS} attempts met concurrent writers")

    async def get(self, model: type[M], id: str) -> M:
        """The object (table, id).

        Raises:
            NotFoundError: it does not exist.
            CorruptObjectError: its stored value fails validation.
        """
        self._check()
        table = _table_of(model)
        validate_key(id)
        entry = await self._retry(lambda: self.driver.get(table, id), "get")
        if entry is None:
            raise NotFoundError(f"{table}/{id} not found")
        return self._decode_entry(model, entry)

    async def list(self, model: type[M], topic: str | None = None) -> ListResult[M]:
        """Every object of ``model`` (of one ``topic`` when given), sorted by id, and
        the cursor they are consistent with. Corrupt values are logged and skipped."""
        self._check()
        table = _table_of(model)
        if topic is not None:
            validate_key(topic, "topic")
        listing = await self._retry(lambda: self.driver.list(table, topic), "list")
        items: builtins.list[M] = []
        for entry in sorted(listing.entries, key=lambda e: e.id):
            try:
                items.append(self._decode_entry(model, entry))
            except CorruptObjectError as exc:
                log.warning("skipping %s", exc)
        return ListResult(items, format_cursor(listing.identity or self._identity or "", listing.revision))

    async def get_all(self, model: type[M], topic: str | None = None) -> builtins.list[M]:
        """Every object of ``model`` (of one ``topic`` when given), sorted by id."""
        return (await self.list(model, topic)).items

    async def delete(self, model: type[M], id: str) -> None:
        """Delete the object (table, id).

        Raises:
            NotFoundError: it does not exist.
        """
        self._check()
        table = _table_of(model)
        validate_key(id)
        try:
            async with asyncio.timeout(self.timeout):
                await self.driver.delete(table, id)
        except (BackendUnavailableError, BackendTimeoutError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            if isinstance(exc, OutcomeUnknownError):
                raise
            try:
                await self._retry(lambda: self.driver.delete(table, id), "delete")
            except NotFoundError:
                raise OutcomeUnknownError(
                    f"{self.url}: the reply to a delete of {table}/{id} was lost and the object is gone; "
                    "it cannot be told whether this call or another deleted it"
                ) from exc

    async def allocate_unique_key(self, model: type[NbModel]) -> int:
        """A positive integer never returned before for ``model``'s table."""
        self._check()
        table = _table_of(model)
        return await self._retry(lambda: self.driver.allocate_unique_key(table), "allocate_unique_key")

    async def create_many(self, objs: Iterable[M]) -> builtins.list[M | Exception]:
        """Create many objects, in chunks (one driver batch each); not atomic.

        Returns:
            For each input, in order: the stored object, or the error that refused it (a ``DfdbError``, or a
            ``ValueError``/``TypeError`` for an invalid object).
        """
        self._check()
        results: builtins.list[M | Exception] = []
        items = list(objs)
        for start in range(0, len(items), BATCH_CHUNK):
            results.extend(await self._create_chunk(items[start : start + BATCH_CHUNK]))
        return results

    async def _create_chunk(self, chunk: builtins.list[M]) -> builtins.list[M | Exception]:
        prepared: builtins.list[tuple[M, bytes, bytes] | Exception] = []
        for obj in chunk:
            try:
                _model_of(obj)
                new = obj.model_copy(update={"version": 1})
                value, wid = self._encode(new)
                prepared.append((new, value, wid))
            except (TypeError, ValueError) as exc:
                prepared.append(exc)
        requests = [
            PutRequest(type(p[0]).__table__, p[0].id, p[0].topic, p[1], ABSENT)
            for p in prepared
            if not isinstance(p, Exception)
        ]
        try:
            async with asyncio.timeout(self.timeout):
                outcomes: builtins.list[int | Exception] = await self.driver.put_many(requests)
            checkpoint()
        except (BackendUnavailableError, BackendTimeoutError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            outcomes = [exc] * len(requests)
        results: builtins.list[M | Exception] = []
        pending = iter(outcomes)
        for p in prepared:
            if isinstance(p, Exception):
                results.append(p)
                continue
            new, value, wid = p
            outcome = next(pending)
            if isinstance(outcome, BackendUnavailableError | BackendTimeoutError | TimeoutError):
                try:  # the batch's reply was lost: finish this write idempotently
                    outcome = await self._write(type(new).__table__, new.id, new.topic, value, wid, ABSENT, sent=True)
                except DfdbError as exc:
                    outcome = exc
            if isinstance(outcome, Exception):
                results.append(outcome)
            else:
                object.__setattr__(new, "__pydantic_private__", {"_dfdb_origin": (outcome, new.topic)})
                results.append(new)
        return results

    async def update_many(self, objs: Iterable[M]) -> builtins.list[M | Exception]:
        """Update many objects (each compare-and-swap), in chunks; not atomic.

        Returns:
            For each input, in order: the stored object, or the error that refused it (a ``DfdbError``, or a
            ``ValueError``/``TypeError`` for an invalid object).
        """
        return await self._many(self.update, objs)

    async def _many(self, op: Callable[[M], Awaitable[M]], objs: Iterable[M]) -> builtins.list[M | Exception]:
        self._check()
        items = list(objs)
        results: builtins.list[M | Exception] = []
        for start in range(0, len(items), BATCH_CHUNK):
            chunk = items[start : start + BATCH_CHUNK]
            done = await asyncio.gather(*(op(o) for o in chunk), return_exceptions=True)
            for outcome in done:
                if isinstance(outcome, DfdbError | ValueError | TypeError):
                    results.append(outcome)
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    results.append(outcome)
        return results

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
        by_table = {_table_of(m): m for m in model_list}
        topic_set = None if topics is None else frozenset(topics)
        for t in topic_set or ():
            if t is not None:
                validate_key(t, "topic")
        start = parse_cursor(since) if since is not None else None
        return ChangeStream(by_table, topic_set, start, _DriverOpener(self))


class _DriverOpener(SourceOpener):
    """Opens the change sources of an :class:`NbApi`'s streams: the driver's own change
    stream or change log, or snapshot polling when it has neither or polling was asked."""

    def __init__(self, nb: NbApi) -> None:
        self._nb = nb
        self._poll = not nb.exact
        self.ordered = self._poll or bool(nb.driver.capabilities & Capability.ORDERED)

    async def identity(self) -> str:
        nb = self._nb
        nb._identity = await nb._retry(nb.driver.identity, "watch")
        return nb._identity

    async def open(
        self, tables: Collection[str], topics: frozenset[str | None] | None, since: int | None
    ) -> EventSource:
        nb = self._nb
        if self._poll:
            poller = SnapshotPoller(nb.driver, tables, topics, since, interval=nb.poll_interval, backoff=nb.backoff)
            await poller.start()
            return poller
        return await nb._retry(lambda: nb.driver.watch(list(tables), topics, since), "watch")

    def decode(self, model: type[NbModel], id: str, topic: str | None, value: bytes, revision: int) -> NbModel:
        return self._nb._decode(model, id, topic, value, revision)


def revision_of(obj: NbModel) -> int | None:
    """The backend revision at which ``obj`` was read or written by an :class:`NbApi`
    (``None`` for an object built by hand). Pass it to ``Replica.wait_for``."""
    origin = obj._dfdb_origin
    return origin[0] if origin is not None else None


def _model_of(obj: NbModel) -> type[NbModel]:
    model = type(obj)
    if not isinstance(obj, NbModel) or "__table__" not in model.__dict__:
        raise TypeError(f"{model.__name__} is not a stored model (declare it with table=…)")
    return model


def _table_of(model: type[NbModel]) -> str:
    if not (isinstance(model, type) and issubclass(model, NbModel) and "__table__" in model.__dict__):
        raise TypeError(f"{model!r} is not a stored model (declare it with table=…)")
    return model.__table__


def _write_id(value: bytes) -> bytes | None:
    if value.startswith(_WRITE_ID):
        end = value.find(b'"', len(_WRITE_ID))
        return value[len(_WRITE_ID) : end] if end > 0 else None
    try:
        wid = json.loads(value).get("_w")
    except (ValueError, AttributeError):
        return None
    return wid.encode() if isinstance(wid, str) else None


def _still_expected(current: Entry | None, expect: Expect) -> bool:
    if expect is ANY:
        return True
    if expect is ABSENT:
        return current is None
    return current is not None and current.revision == expect
