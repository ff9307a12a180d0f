"""One backoff policy for every retried call and every reconnecting stream."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

__all__ = ["Backoff", "checkpoint", "raise_if_cancelling"]

log = logging.getLogger(__name__)


def checkpoint() -> None:
    """Raise ``CancelledError`` when the current task was asked to stop.

    Some client libraries swallow a cancellation that races their own internal
    timeouts; loops that call them check here after every call, so a cancelled
    task always stops.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


def raise_if_cancelling(exc: BaseException) -> None:
    """Re-raise cancellation that a client library turned into another error.

    Some clients answer a cancelled read with a connection error; retrying it would
    swallow the cancellation. Call this first in every retrying ``except``.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc


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
        raise_if_cancelling(exc)
        delay = self.delay(attempt)
        log.warning("%s failed (%s); retrying in %.2fs", what, exc, delay)
        await asyncio.sleep(delay)
