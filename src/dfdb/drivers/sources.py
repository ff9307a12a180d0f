"""Buffered event sources: the read loop every built-in source shares.

:class:`BufferedSource` owns the loop of ``__anext__`` (closed? → a buffered event →
read one round → back off after a failure); a backend's source supplies only
:meth:`BufferedSource._read_round` and, when it can change its topics, the
:meth:`BufferedSource._follow` step of ``add_topics``.

Cancellation: a round either puts the events it read into the buffer, or, when it
is cancelled, leaves the source able to read them again. A round whose backend read
is re-readable ("the changes after R": memory, a change log, a listing) keeps that
promise by advancing its position only in the synchronous code after its last
``await``, where it also fills the buffer. A backend read that consumes what it
reads, or whose cancellation drops the connection (a gRPC watch stream, a blocking
Redis read), runs in one reader task owned by the source
(:class:`ReaderTaskSource`): a cancelled ``__anext__`` then only cancels a wait.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from abc import abstractmethod
from collections.abc import Collection, Iterable
from typing import ClassVar

import anyio

from dfdb.drivers.base import EventSource, RawEvent
from dfdb.errors import AuthenticationError, DriverError
from dfdb.retry import Backoff

__all__ = ["BufferedSource", "ReaderTaskSource"]

log = logging.getLogger(__name__)


def _cancelling() -> bool:
    """Whether the current asyncio task was asked to stop (some client libraries swallow a
    cancellation that races their own time-outs). Outside asyncio, never."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # another event loop (trio, through anyio): nothing swallows cancellation
        return False
    return task is not None and task.cancelling() > 0


class BufferedSource(EventSource):
    """An :class:`EventSource` that owns the read loop; subclasses read one round at a time.

    The buffer is ordered by revision (a heap), so rounds that merge several backend
    streams (one per topic or per table) may push their events in any order.

    Subclasses implement :meth:`_read_round`; they may override :meth:`_read_up_to`
    (when their read position is not one number), :meth:`_follow` (to add topics),
    :meth:`_after_failure` and :meth:`_release`. ``_retryable`` names the errors after
    which a round is retried with backoff (default: :class:`~dfdb.errors.DriverError`).

    Args:
        position: the revision the source starts after.
        topics: the topics followed, ``None`` for every topic.
        what: what a round does, for log lines ("reading the change log").
        backoff: the retry policy after a failed round.
    """

    _retryable: ClassVar[tuple[type[BaseException], ...]] = (DriverError,)

    def __init__(
        self,
        position: int,
        *,
        topics: Collection[str | None] | None = None,
        what: str = "reading changes",
        backoff: Backoff | None = None,
    ) -> None:
        self._read_position = position
        """Every change of the scope at or below this revision is buffered or returned."""
        self._topics: frozenset[str | None] | None = None if topics is None else frozenset(topics)
        self._what = what
        self._backoff = backoff or Backoff()
        self._buffer: list[tuple[int, int, RawEvent]] = []
        self._seq = itertools.count()
        self._closed = False
        self._failures = 0

    # ------------------------------------------------------------ for subclasses
    @abstractmethod
    async def _read_round(self) -> RawEvent | None:
        """Read one round from the backend: push what it finds with :meth:`_push` (and move
        the read position) in the synchronous code after the last ``await``, so that a
        cancelled round changes nothing. It may wait for news first, and may return with
        nothing read. A returned event (a ``resync``) is delivered before anything
        buffered.

        Raises:
            DriverError: the round failed (or another of ``_retryable``); it is retried with backoff.
            StopAsyncIteration: the source cannot go on (its driver was closed).
        """

    def _read_up_to(self) -> int:
        """Every change of the scope at or below this revision is buffered or returned."""
        return self._read_position

    def _release_up_to(self) -> int | None:
        """Buffered events above this revision wait for later rounds (``None``: none wait).
        A source merging streams that catch up on their own holds an event back until every
        stream is past it, so that the merge is in revision order."""
        return None

    def _releasable(self) -> bool:
        """Whether the first buffered event can be returned now."""
        if not self._buffer:
            return False
        limit = self._release_up_to()
        return limit is None or self._buffer[0][0] <= limit

    def _release_deadline(self) -> float | None:
        """The event-loop time at which a held event is released anyway (``None``: no
        such time); a reader-task source waiting for its round wakes up then."""
        return None

    async def _follow(self, topics: frozenset[str | None], since: int) -> None:
        """Start following ``topics`` (new ones) from ``since``; see :meth:`add_topics`.
        ``self._topics`` grows by them once this returns.

        Raises:
            StreamClosedError: this source cannot change its topics.
        """
        await EventSource.add_topics(self, topics, since)

    async def _after_failure(self, exc: BaseException) -> None:
        """Called after a failed round, before the backoff pause (drop a broken stream)."""

    async def _release(self) -> None:
        """Release connections and wake a waiting round; called once by :meth:`aclose`."""

    def _push(self, event: RawEvent) -> None:
        """Buffer ``event``, to be returned in revision order."""
        heapq.heappush(self._buffer, (event.revision, next(self._seq), event))

    def _push_all(self, events: Iterable[RawEvent]) -> None:
        for event in events:
            self._push(event)

    def _clear_buffer(self) -> None:
        """Forget every buffered event (history is gone; a ``resync`` follows)."""
        self._buffer.clear()

    def _buffered(self) -> Iterable[RawEvent]:
        return (item[2] for item in self._buffer)

    # ------------------------------------------------------------ the contract
    @property
    def position(self) -> int:
        """Every change at or below this revision has been returned (below anything buffered)."""
        read = self._read_up_to()
        if self._buffer:
            read = min(read, self._buffer[0][0] - 1)
        return read

    async def __anext__(self) -> RawEvent:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._releasable():
                return heapq.heappop(self._buffer)[2]
            event = await self._round_or_pause()
            if event is not None:
                return event

    async def _round_or_pause(self) -> RawEvent | None:
        """One round, with backoff after a failure: the event it returned, or ``None``."""
        try:
            event = await self._read_round()
            if _cancelling():
                raise asyncio.CancelledError()
        except self._retryable as exc:
            if _cancelling():
                raise asyncio.CancelledError() from exc
            if isinstance(exc, AuthenticationError):  # permanent: credentials or rights the server refuses
                raise
            if self._closed:
                raise StopAsyncIteration from None
            await self._after_failure(exc)
            self.reconnects += 1
            await self._backoff.pause(self._failures, self._what, exc)
            self._failures += 1
            return None
        if self._failures:
            log.debug("%s: recovered after %d failed round(s)", self._what, self._failures)
        self._failures = 0
        return event

    async def add_topics(self, topics: Collection[str | None], since: int) -> None:
        """Follow ``topics`` too, from revision ``since`` (see :meth:`EventSource.add_topics`);
        a watch of every topic ignores this."""
        if self._topics is None:
            return
        new = frozenset(topics) - self._topics
        if not new:
            return
        await self._follow(new, since)
        self._topics = self._topics | new

    async def aclose(self) -> None:
        """Stop the source; a round waiting in another task ends; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._release()


class ReaderTaskSource(BufferedSource):
    """A :class:`BufferedSource` whose rounds run in one reader task owned by the source.

    For backends whose read consumes what it reads or whose cancellation breaks the
    connection: ``__anext__`` asks the reader for one round and waits for it, so a
    cancelled ``__anext__`` cancels only that wait; the round finishes and its events
    wait in the buffer. The reader starts with the first ``__anext__``, reads only when
    asked (until an event can be returned: at most one round past it), and is cancelled and awaited by
    ``aclose``. An error that ends the reader (not a retryable one) is raised by
    ``__anext__``.
    """

    def __init__(
        self,
        position: int,
        *,
        topics: Collection[str | None] | None = None,
        what: str = "reading changes",
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(position, topics=topics, what=what, backoff=backoff)
        self._reader: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()
        self._round_done = asyncio.Event()
        self._urgent: list[RawEvent] = []  # events a round returned, delivered before the buffer
        self._failure: BaseException | None = None

    async def __anext__(self) -> RawEvent:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._urgent:
                return self._urgent.pop(0)
            if self._releasable():
                return heapq.heappop(self._buffer)[2]
            if self._failure is not None:
                raise self._failure
            if self._reader is None:
                self._reader = asyncio.get_running_loop().create_task(
                    self._read_on_demand(), name=f"dfdb-{type(self).__name__}-reader"
                )
            done = self._round_done
            self._wanted.set()
            deadline = self._release_deadline()
            try:
                async with asyncio.timeout_at(deadline):
                    await done.wait()  # cancelled here: the round goes on; its events stay buffered
            except TimeoutError:
                pass  # a held event's time is up: the loop releases it

    async def _read_on_demand(self) -> None:
        try:
            while not self._closed:
                await self._wanted.wait()
                event = await self._round_or_pause()
                if event is not None:
                    self._urgent.append(event)
                if self._urgent or self._releasable():
                    self._wanted.clear()
                self._finish_round()
        except asyncio.CancelledError:
            if not self._closed:
                raise
            # cancelled by aclose: end without keeping the exception, whose traceback would
            # hold the interrupted read (and its connection) until the garbage collector runs
        except Exception as exc:  # StopAsyncIteration included: the source cannot go on
            self._failure = exc
        finally:
            if self._failure is None:
                self._failure = StopAsyncIteration()
            self._finish_round()

    def _finish_round(self) -> None:
        done, self._round_done = self._round_done, asyncio.Event()
        done.set()

    @property
    def position(self) -> int:
        read = super().position
        if self._urgent:
            read = min(read, *(ev.revision - 1 for ev in self._urgent))
        return read

    async def aclose(self) -> None:
        """Stop the reader task (awaited) and the source; idempotent."""
        if self._closed:
            return
        self._closed = True
        reader, self._reader = self._reader, None
        cancelled = False
        # to the end even when this caller is cancelled (a task group's cancel scope cancels
        # every await of its tasks): a reader left running reconnects, a release cut short leaks
        with anyio.CancelScope(shield=True):
            try:
                if reader is not None:
                    reader.cancel()
                    while not reader.done():
                        try:
                            await asyncio.wait({reader})
                        except asyncio.CancelledError:  # a native one (Task.cancel, wait_for)
                            cancelled = True
            finally:
                self._finish_round()
                await self._release()
        if cancelled:
            raise asyncio.CancelledError()
