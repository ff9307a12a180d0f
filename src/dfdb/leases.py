"""Liveness: leases, objects bound to them, and fenced locks.

A :class:`Lease` is granted by the backend with a TTL and kept alive in the background
while its ``async with`` block runs::

    async with nb.lease(ttl=10) as lease:
        await nb.create(Chassis(id="c1", ip="10.0.0.1"), lease=lease)
        await lease.lost            # returns when the lease ended

Objects written with ``lease=`` are bound to it. When the lease ends — revoked, or not
kept alive for its TTL because the holder exited, crashed, was killed or lost the network
— the backend deletes every object bound to it with ordinary logged deletes, delivered to
every watcher in revision order as ``DELETE`` events with ``ev.expired`` true. Ending is
final: a lease never comes back. The holder learns it through :attr:`Lease.lost` and a
:class:`~dfdb.LeaseLostError` on its next use; it also counts the lease lost by itself once
a TTL has passed since the last keep-alive the backend confirmed, so it stops writing even
before the backend noticed.

A :class:`Lock` (``nb.lock(name, ttl)``) is held by one lease at a time; each new holder
gets a fencing :attr:`Lock.token` larger than every earlier one. A write with ``guard=lock``
(or ``guard=lease``) commits only while the guard still holds, checked by the backend in
the same atomic step as the write (transaction, script, multi), so a holder that was paused
past its TTL and wakes up cannot write over its successor.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc

from dfdb.drivers.base import Capability, Guard
from dfdb.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    DfdbError,
    LeaseLostError,
    LockedError,
    StreamClosedError,
)
from dfdb.nbmodel import validate_key
from dfdb.retry import checkpoint_if_cancelled, running_asyncio_task

if TYPE_CHECKING:
    from collections.abc import Generator

    from dfdb.nb import NbApi

__all__ = ["MAX_TTL", "MIN_TTL", "Lease", "Lock", "guard_of", "lease_of"]

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_TTL = 0.5
"""The shortest TTL a lease takes, in seconds."""
MAX_TTL = 86_400.0
"""The longest TTL a lease takes, in seconds (a day)."""


def _check_ttl(ttl: float) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
        raise ValueError(f"a lease TTL must be a number of seconds, not {ttl!r}")
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise ValueError(f"a lease TTL must be between {MIN_TTL:g} and {MAX_TTL:g} seconds, not {ttl:g}")
    return float(ttl)


class _Ended:
    """``lease.lost``: await it to wait until the lease ended; true once it has."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def __await__(self) -> Generator[Any, None, None]:
        return self._event.wait().__await__()


class Lease:
    """A lease on the backend; see the module documentation. Made by :meth:`NbApi.lease`.

    Attributes:
        ttl: seconds the lease lives without a keep-alive.
        id: the backend's id of the lease (``None`` before it is granted).
        lost: awaitable that returns once the lease ended (lost or revoked); true then.
        error: the :class:`LeaseLostError` that says why it ended, or ``None``.
    """

    def __init__(self, nb: NbApi, ttl: float, *, keepalive: bool = True) -> None:
        self.ttl = _check_ttl(ttl)
        self.id: str | None = None
        self.lost = _Ended()
        self.error: LeaseLostError | None = None
        self._nb = nb
        self._keepalive = keepalive
        self._valid_until = 0.0
        self._tg: anyio.abc.TaskGroup | None = None

    def __repr__(self) -> str:
        state = "lost" if self.lost else "granted" if self.id else "new"
        return f"<Lease {self.id or '-'} ttl={self.ttl:g}s {state}>"

    async def __aenter__(self) -> Lease:
        nb = self._nb
        nb._check()
        if self.id is not None or self.lost:
            raise DfdbError(
                "a lease is entered once" if self.id is not None else "this lease was revoked before it was entered"
            )
        if not nb.driver.capabilities & Capability.LEASES:
            raise nb.driver._no_leases()
        started = anyio.current_time()

        async def grant() -> None:
            self.id = await nb._retry(lambda: nb.driver.lease_grant(self.ttl), "lease grant")

        try:  # to its end even when cancelled: a lease granted for a cancelled caller is revoked at once
            await _to_the_end(grant)
            await checkpoint_if_cancelled()
        except BaseException:
            if self.id is not None:
                await _to_the_end(self.revoke)
            await checkpoint_if_cancelled()  # the caller's deadline, passed meanwhile, before the grant's error
            raise
        self._valid_until = started + self.ttl
        self._identity = nb._identity
        if self._keepalive:
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
            self._tg.start_soon(self._keep_alive)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await _to_the_end(self.revoke)
        except DfdbError as error:
            if e is None:
                raise
            # the block's own error goes on; the backend ends the lease once its TTL passed
            log.warning("lease %s: %s (its TTL ends it)", self.id, error)
        finally:
            tg, self._tg = self._tg, None
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)

    def _end(self, why: str) -> None:
        if not self.lost:
            self.error = LeaseLostError(f"lease {self.id} ended: {why}")
            log.info("%s", self.error)
            self.lost.set()

    def check(self) -> str:
        """The lease's id, while it is still held as far as this holder knows.

        Raises:
            LeaseLostError: the lease ended, or a TTL passed since the backend last
                confirmed it (the holder was paused or cut off).
        """
        if self.id is None:
            raise DfdbError("enter the lease with 'async with' first")
        if not self.lost and anyio.current_time() > self._valid_until:
            self._end(f"not kept alive within its TTL of {self.ttl:g}s")
        if self.error is not None:
            raise self.error
        return self.id

    def _held_until(self) -> float:
        """The holder's own deadline on the event loop's clock (``-inf`` once ended)."""
        return -math.inf if self.lost else self._valid_until

    async def refresh(self) -> None:
        """Keep the lease alive once (the background task does it every third of the TTL).

        Raises:
            LeaseLostError: the lease ended, or the backend confirmed no keep-alive within
                its TTL (the holder's own deadline passed while this one waited).
            BackendUnavailableError: the backend did not answer (the lease may still hold).
            StreamClosedError: its NbApi was closed.
        """
        self._nb._check()
        lease = self.check()
        sent = anyio.current_time()
        # bounded by the holder's own deadline: past it, the lease counts as lost
        with anyio.move_on_after(max(self._valid_until - sent, 0.001)) as held:
            try:
                await self._nb.driver.lease_keepalive(lease)
            except LeaseLostError as exc:
                self._end(str(exc))
                raise self.error from exc  # type: ignore[misc]
        if held.cancelled_caught:
            self._end(f"not kept alive within its TTL of {self.ttl:g}s")
            raise self.error  # type: ignore[misc]
        self._valid_until = max(self._valid_until, sent + self.ttl)

    async def _keep_alive(self) -> None:
        attempt = 0
        while not self.lost:
            delay = self.ttl / 3 if attempt == 0 else min(self._nb.backoff.delay(attempt), self.ttl / 6)
            await anyio.sleep(delay)
            try:
                await self.refresh()
                attempt = 0
            except LeaseLostError:
                return
            except StreamClosedError:
                self._end("its NbApi was closed")
                return
            except (BackendUnavailableError, BackendTimeoutError, TimeoutError) as exc:
                attempt += 1
                log.debug("keep-alive of lease %s failed (%s); retrying", self.id, exc)
            except BaseException as exc:  # never the holder's block: the lease is lost only by its deadline
                task = running_asyncio_task()
                stray = isinstance(exc, asyncio.CancelledError) and task is not None and not task.cancelling()
                if not isinstance(exc, Exception) and not stray:  # this task's own cancellation
                    raise
                attempt += 1
                log.warning("keep-alive of lease %s failed (%s: %s); retrying", self.id, type(exc).__name__, exc)

    async def revoke(self) -> None:
        """End the lease now: its objects are deleted (as expiries) and its locks released.
        Idempotent; a lease that was lost already, or whose NbApi was closed, is left to the
        backend (which ends it once its TTL passed)."""
        if self.id is None or self.lost or self._nb._state == "closed":
            self._end("revoked" if self._nb._state != "closed" else "its NbApi was closed")
            return
        lease = self.id
        self._end("revoked")
        try:
            await self._nb._retry(lambda: self._nb.driver.lease_revoke(lease), "lease revoke")
        except LeaseLostError:
            pass


class Lock:
    """A fenced lock held through a lease; made by :meth:`NbApi.lock`. See the module documentation.

    Attributes:
        name: the lock's name.
        token: the fencing token of this holder (0 before the lock is taken): larger than
            every earlier holder's.
        lease: the lease the lock is held through.
    """

    def __init__(self, nb: NbApi, name: str, ttl: float, timeout: float | None = None) -> None:
        validate_key(name, "lock name")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or math.isnan(timeout) or timeout < 0
        ):
            raise ValueError(f"a lock's timeout must be a number of seconds (0 or more) or None, not {timeout!r}")
        self.name = name
        self.token = 0
        self.lease = Lease(nb, ttl)
        self._nb = nb
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"<Lock {self.name!r} token={self.token} {self.lease!r}>"

    @property
    def lost(self) -> _Ended:
        """Awaitable that returns once the lock was lost or released (its lease ended)."""
        return self.lease.lost

    async def __aenter__(self) -> Lock:
        await self.lease.__aenter__()
        try:
            await self._acquire()
        except BaseException as exc:
            await self.lease.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _acquire(self) -> None:
        nb = self._nb
        deadline = math.inf if self._timeout is None else anyio.current_time() + self._timeout
        pause = 0.02
        while True:
            token = await nb._retry(lambda: nb.driver.lock_acquire(self.name, self.lease.check()), "lock")
            if token is not None:
                self.token = token
                return
            if anyio.current_time() + pause > deadline:
                raise LockedError(f"lock {self.name!r} is held by another holder (waited {self._timeout:g}s)")
            await anyio.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, max(self.lease.ttl / 10, 0.05), 0.5)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.token and self.lease.id is not None and not self.lease.lost:
                lease, nb, name, token = self.lease.id, self._nb, self.name, self.token
                try:
                    await _to_the_end(lambda: nb._retry(lambda: nb.driver.lock_release(name, lease, token), "unlock"))
                except DfdbError as error:
                    if e is None:
                        raise
                    # the block's own error (or cancellation) goes on; the lock ends with its lease
                    log.warning("lock %r: %s (it ends with its lease)", name, error)
        finally:
            await self.lease.__aexit__(et, e, tb)

    def check(self) -> Guard:
        """The guard of a write while the lock is held as far as this holder knows.

        Raises:
            LeaseLostError: the lock's lease ended.
        """
        if not self.token:
            raise DfdbError(f"lock {self.name!r} is not held: enter it with 'async with' first")
        return Guard(self.lease.check(), self.name, self.token, self.lease._held_until)


async def _to_the_end(call: Callable[[], Awaitable[T]]) -> T:
    """``await call()`` run to its end even when the caller is being cancelled: shielded,
    and under asyncio in a task of its own, waited for again after each ``task.cancel()``
    of the caller (which a shield does not hold off); the caller's cancellation is raised
    once it ended. Bounded by the call's own time-out (``NbApi`` retries end at theirs)."""
    if running_asyncio_task() is None:  # trio: a shield holds every cancellation off
        with anyio.CancelScope(shield=True):
            return await call()

    async def run() -> T:
        return await call()

    inner = asyncio.ensure_future(run())
    cancelled: BaseException | None = None
    with anyio.CancelScope(shield=True):
        while not inner.done():
            try:
                await asyncio.wait([inner])
            except asyncio.CancelledError as exc:
                cancelled = exc
    if cancelled is not None:
        if not inner.cancelled() and inner.exception() is not None:
            log.debug("%s while the caller was being cancelled", inner.exception())
        raise cancelled
    return inner.result()


def _same_database(nb: NbApi, lease: Lease, what: str) -> None:
    if lease._nb is not nb and lease._nb._identity != nb._identity:
        raise ValueError(f"the {what} belongs to another database ({lease._nb.url}), not {nb.url}")


def lease_of(nb: NbApi, lease: Lease | None) -> str | None:
    """The id of ``lease`` for a write through ``nb``, checked (``None`` for no lease).

    Raises:
        TypeError: ``lease`` is not a :class:`Lease`.
        ValueError: the lease belongs to another database.
        LeaseLostError: it ended.
    """
    if lease is None:
        return None
    if not isinstance(lease, Lease):
        raise TypeError(f"lease must be a dfdb.Lease, not {type(lease).__name__}")
    _same_database(nb, lease, "lease")
    return lease.check()


def guard_of(nb: NbApi, guard: Lease | Lock | None) -> Guard | None:
    """The driver :class:`Guard` of ``guard`` (a lease or a lock) for a write through ``nb``.

    Raises:
        TypeError: ``guard`` is neither.
        ValueError: it belongs to another database.
        LeaseLostError: it ended.
    """
    if guard is None:
        return None
    if isinstance(guard, Lock):
        _same_database(nb, guard.lease, "guard")
        return guard.check()
    if isinstance(guard, Lease):
        _same_database(nb, guard, "guard")
        return Guard(guard.check(), held_until=guard._held_until)
    raise TypeError(f"guard must be a dfdb.Lock or dfdb.Lease, not {type(guard).__name__}")
