"""One backoff policy for every retried call and every reconnecting stream."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


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
