"""Storm control for Replicas: when history is lost for everyone (a trimmed log, a compacted
etcd, a server back without its data), every Replica gets ``RESYNC`` at the same moment. Each
waits a random delay, then takes a token from a bucket shared by the Replicas of the process
before it relists, so relists are spread out and their rate is bounded; meanwhile the Replica
keeps serving its old contents (``stats().stale``)."""

from __future__ import annotations

import contextlib
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel

__all__ = ["RELISTS", "RelistLimiter"]


class RelistLimiter:
    """A token bucket bounding how many relists start per second in one process.

    A Replica that gets ``RESYNC`` first sleeps a random delay of up to ``jitter`` seconds
    (so Replicas of many processes do not all ask at once), then takes a token; tokens come
    back at ``rate`` per second, up to ``burst`` saved, and waiters are served in the order
    they asked. At most ``burst`` relists run at once (per event loop: one limiter serves
    every event loop and thread of the process). :data:`RELISTS` is the one every Replica
    uses unless given another.

    Args:
        rate: relists started per second, on average.
        burst: relists that may start at once after a quiet time.
        jitter: the longest random delay before asking for a token, seconds.
    """

    def __init__(self, rate: float = 20.0, burst: int = 10, jitter: float = 0.2) -> None:
        self._mutex = threading.Lock()
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self.rate = self.burst = 0.0
        self.jitter = 0.0
        self.configure(rate=rate, burst=burst, jitter=jitter)
        self._tokens = self.burst
        self.granted = 0
        """Relists let through."""
        self.waited = 0.0
        """Seconds the relists spent waiting (jitter included), in all."""
        self.waiting = 0
        """Relists waiting now."""
        self.active = 0
        """Relists running now."""
        self.peak_active = 0
        """The most relists that ran at once."""
        self._gates: weakref.WeakKeyDictionary[object, tuple[int, anyio.Semaphore]] = weakref.WeakKeyDictionary()

    def configure(self, *, rate: float | None = None, burst: int | None = None, jitter: float | None = None) -> None:
        """Change the rate, the burst or the jitter (for the waiters to come).

        Raises:
            ValueError: ``rate`` or ``burst`` is not positive, or ``jitter`` is negative.
        """
        if (rate is not None and rate <= 0) or (burst is not None and burst < 1):
            raise ValueError("a relist limiter needs a positive rate and burst")
        if jitter is not None and jitter < 0:
            raise ValueError("the relist jitter cannot be negative")
        with self._mutex:
            self._refill()
            self.rate = float(rate) if rate is not None else self.rate
            self.burst = float(burst) if burst is not None else self.burst
            self.jitter = float(jitter) if jitter is not None else self.jitter
            self._tokens = min(self._tokens, self.burst)

    def _refill(self) -> None:
        now = time.monotonic()
        if self.rate:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def _reserve(self) -> float:
        """Take a token (borrowed when there is none); returns how long to wait for it."""
        with self._mutex:
            self._refill()
            self._tokens -= 1
            return max(0.0, -self._tokens / self.rate)

    def _gate(self) -> anyio.Semaphore:
        """This event loop's bound on the relists running at once (``burst``)."""
        token = anyio.lowlevel.current_token()
        loop = getattr(token, "native_token", token)  # anyio before 4.5: the token is the loop itself
        size, gate = self._gates.get(loop, (0, None))
        if gate is None or size != int(self.burst):  # a new burst applies to the relists to come
            gate = anyio.Semaphore(int(self.burst))
            self._gates[loop] = (int(self.burst), gate)
        return gate

    def _refund(self) -> None:
        with self._mutex:
            self._tokens = min(self.burst, self._tokens + 1)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Wait for a relist's turn, hold it while the block runs; yields the seconds waited."""
        start = time.monotonic()
        self.waiting += 1
        waiting = True
        try:
            await anyio.sleep(random.uniform(0, self.jitter))
            delay = self._reserve()
            try:
                await anyio.sleep(delay)
                gate = self._gate()
                await gate.acquire()
            except BaseException:
                self._refund()  # not started: the turn goes to the next one
                raise
            try:
                self.waiting -= 1
                waiting = False
                waited = time.monotonic() - start
                self.granted += 1
                self.waited += waited
                self.active += 1
                self.peak_active = max(self.peak_active, self.active)
                try:
                    yield waited
                finally:
                    self.active -= 1
            finally:
                gate.release()
        finally:
            if waiting:
                self.waiting -= 1


RELISTS = RelistLimiter()
"""The relist limiter shared by the Replicas of this process (tune it with ``configure``)."""
