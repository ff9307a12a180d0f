"""One backoff policy for every retried call and every reconnecting stream."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import anyio
import anyio.lowlevel
import sniffio

__all__ = [
    "Backoff",
    "checkpoint",
    "checkpoint_if_cancelled",
    "close_to_completion",
    "fail_at",
    "gather_outcomes",
    "now",
    "raise_if_cancelling",
    "run_to_completion",
    "running_asyncio_task",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def now() -> float:
    """``anyio.current_time()``, the event loop's clock; under asyncio read from the loop
    directly, without anyio's look-up of the running library (a write reads the clock on
    every attempt)."""
    if sniffio.thread_local.name is None:  # trio names itself there while it runs
        try:
            return asyncio.get_running_loop().time()  # anyio's asyncio clock
        except RuntimeError:
            pass
    return anyio.current_time()


class fail_at:
    """A scope that raises ``TimeoutError`` at ``deadline`` (on anyio's clock), as
    ``anyio.fail_at`` does in the anyio releases that have it (the oldest supported lacks it):
    one cancel scope, without the generator-based context managers of ``anyio.fail_after``
    (a write's path enters one per attempt)."""

    __slots__ = ("_scope",)

    def __init__(self, deadline: float) -> None:
        self._scope = anyio.CancelScope(deadline=deadline)

    def __enter__(self) -> anyio.CancelScope:
        return self._scope.__enter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        scope = self._scope
        suppressed = bool(scope.__exit__(exc_type, exc, tb))
        if scope.cancelled_caught and now() >= scope.deadline:
            raise TimeoutError
        return suppressed


def running_asyncio_task() -> asyncio.Task[object] | None:
    """The running asyncio task, or ``None`` under another event loop (trio)."""
    try:
        if sniffio.current_async_library() != "asyncio":
            return None
    except sniffio.AsyncLibraryNotFoundError:
        return None
    return asyncio.current_task()


def checkpoint() -> None:
    """Raise ``CancelledError`` when the current asyncio task was asked to stop.

    Some asyncio client libraries swallow a cancellation that races their own
    internal timeouts; loops that call them check here after every call, so a
    cancelled task always stops. Under trio, where a cancellation is delivered
    again at every later checkpoint and so cannot be swallowed, this does nothing;
    code that runs on both uses :func:`checkpoint_if_cancelled`.
    """
    task = running_asyncio_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


def raise_if_cancelling(exc: BaseException) -> None:
    """Re-raise cancellation that an asyncio client library turned into another error.

    Some clients answer a cancelled read with a connection error; retrying it would
    swallow the cancellation. Call this first in every retrying ``except``; code that
    runs on trio as well awaits :func:`checkpoint_if_cancelled` there instead.
    """
    task = running_asyncio_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError(*_cancellation_args(exc)) from exc


def _cancellation_args(exc: BaseException) -> tuple[object, ...]:
    """The arguments of the ``CancelledError`` that ``exc`` was raised while handling (its
    message says which anyio cancel scope sent it: without it, an anyio deadline does not
    take the cancellation for its own, and it escapes as a bare ``CancelledError``)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, asyncio.CancelledError):
            return cause.args
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return ()


async def checkpoint_if_cancelled() -> None:
    """Raise the event loop's cancellation when the current task was asked to stop.

    Works under asyncio and trio: an asyncio task cancelled directly
    (``task.cancel()``, ``asyncio.wait_for``) or a task in a cancelled anyio/trio
    cancel scope raises here; otherwise this returns without yielding. Call it
    after every call into code that may swallow a cancellation, and first in every
    retrying ``except``.
    """
    await anyio.lowlevel.checkpoint_if_cancelled()  # a cancel scope's own cancellation first
    checkpoint()


async def run_to_completion(call: Callable[[], Awaitable[T]], deadline: float = math.inf) -> T:
    """``await call()`` to its end even when the caller is cancelled meanwhile; the
    cancellation is delivered once the call has ended. The caller's deadline (its
    enclosing ``anyio.fail_after``) still bounds the call.

    For a write sent to a server: cancelling the caller must not cut the request while
    the server may still apply it, or the write could land after the caller was told it
    was cancelled. Under asyncio the call runs in a task of its own (a native
    ``Task.cancel`` cannot be shielded otherwise); under trio in a shielded cancel scope.
    ``deadline`` (on anyio's clock) bounds the call as well, as ``fail_at(deadline)``
    around it would; the call sees it as its effective deadline.
    """
    deadline = min(deadline, anyio.current_effective_deadline())  # the caller's own deadline still holds
    if running_asyncio_task() is None:
        with anyio.CancelScope(shield=True), anyio.fail_after(max(deadline - anyio.current_time(), 0)):
            return await call()

    # the deadline as an anyio scope, not asyncio's own timeout: a driver reads it
    # (anyio.current_effective_deadline) to bound its own waits, and it ends the call by
    # anyio's cancellation, which the driver's shielded steps (a thread running a
    # transaction) wait out, where a native cancel would abandon them and leave the
    # write's outcome unknown. The caller waits on a bare future (cheaper than
    # asyncio.wait) that the call sets as it ends: the caller runs in the next loop round,
    # not one round later as a done-callback of the task would wake it.
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    async def run() -> T:
        try:
            if deadline == math.inf:
                return await call()
            with fail_at(deadline):
                return await call()
            raise TimeoutError  # the scope ended the call (fail_at raises this itself)
        finally:
            wake()

    task = loop.create_task(run())
    task.add_done_callback(wake)  # a task that ended without running (its loop closing)
    cancelled = False
    with anyio.CancelScope(shield=True):  # anyio's own cancellations wait until the end
        while not task.done():
            try:
                await waiter
            except asyncio.CancelledError:  # a native one (asyncio.wait_for, Task.cancel)
                cancelled = True  # the call goes on; the cancellation is raised after it
            if not task.done():
                waiter = loop.create_future()
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: the outcome is for the caller to read back
        raise asyncio.CancelledError()
    return task.result()


async def close_to_completion(close: Callable[[], Awaitable[None]]) -> None:
    """``await close()`` to its end whatever cancels the caller, before or meanwhile: in a
    cancelled cancel scope (an ``async with`` left by ``anyio.move_on_after``), where every
    await would be cancelled again, or in a task cancelled while it closes. A close cut
    short leaves its connections open. Unlike :func:`run_to_completion` the caller's
    deadline does not bound it (it has often passed: that is why the block is closing);
    the close bounds itself. The cancellation is delivered once the close has ended."""
    with anyio.CancelScope(shield=True):
        await run_to_completion(close)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter.

    Attributes:
        initial: the first delay, seconds.
        maximum: the largest delay, seconds.
        factor: growth per attempt.
    """

    initial: float = 0.05
    maximum: float = 2.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (0-based), jittered."""
        cap = min(self.maximum, self.initial * self.factor**attempt)
        return random.uniform(cap / 2, cap)

    async def pause(self, attempt: int, what: str, exc: BaseException) -> None:
        """Log that ``what`` failed with ``exc`` and sleep before retry ``attempt``.

        A cancellation that a client library turned into ``exc`` is re-raised instead.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        raise_if_cancelling(exc)
        delay = self.delay(attempt)
        # the message, not the exception: a kept log record must not keep its traceback's frames
        # (and the connections they hold) alive
        log.warning("%s failed (%s); retrying in %.2fs", what, str(exc), delay)
        await anyio.sleep(delay)


async def gather_outcomes(op: Callable[[T], Awaitable[R]], objs: Sequence[T]) -> list[R | Exception]:
    """``op`` of every object, concurrently in one task group: each outcome (the result or the
    ``Exception`` it raised) in the objects' order. Cancellation and other ``BaseException``s
    propagate."""
    done: list[R | Exception | None] = [None] * len(objs)

    async def run(i: int, obj: T) -> None:
        try:
            done[i] = await op(obj)
        except Exception as exc:  # kept in its place; the caller decides what it is
            done[i] = exc

    async with anyio.create_task_group() as tg:
        for i, obj in enumerate(objs):
            tg.start_soon(run, i, obj)
    return [outcome for outcome in done if outcome is not None]
