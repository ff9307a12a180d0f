"""The Replica's modes and counters."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ReplicaStats", "SyncMode"]


class SyncMode(enum.StrEnum):
    """How much of the database a :class:`Replica` holds."""

    FULL = "full"
    """Every object of the chosen models."""
    SELECTIVE = "selective"
    """The subscribed topics, plus topic-less objects."""
    REACTIVE = "reactive"
    """Objects fetched on first access (``Replica.fetch``), kept fresh while held."""


@dataclass(frozen=True, slots=True)
class ReplicaStats:
    """Counters of a :class:`Replica` (``Replica.stats()``)."""

    objects: int
    """Objects held, as ``len(replica)`` counts them: after a lazy load, a value not validated
    yet counts; one found corrupt (by the background validation right after the sync, or by a
    lookup that builds it first) does not count from then on."""
    events: int
    """Changes applied."""
    deferred: int
    """Events held back until a reference target arrived (in all)."""
    deferred_now: int
    """Events waiting for a reference target now."""
    resyncs: int
    """Relists after a ``RESYNC``."""
    reconnects: int
    """Times the change stream was reopened from its cursor."""
    lag: int
    """Events applied but not yet taken by the slowest ``events()`` consumer."""
    position: int
    """Every change of the scope up to this revision is applied."""
    records_read: int
    """Change records the change streams read from the server (the initial lists not included)."""
    bytes_read: int
    """The size of those records as the driver received them."""
    evictions: int
    """Objects evicted to stay within ``max_objects`` (REACTIVE)."""
    corrupt: int = 0
    """Objects evicted because a new stored value failed validation (each also a ``DELETE``
    event with ``corrupt`` set)."""
    tables: Mapping[str, int] = field(default_factory=dict)
    """Objects held, by table."""
    stale: bool = False
    """It follows no stream now (reconnecting, or waiting to relist after a ``RESYNC``): what
    it holds may be behind the database, and stays readable."""
    relisted: int = 0
    """Objects its relists read from the database, in all (a relist reads the ``RESYNC``'s scope only)."""
    relist_wait: float = 0.0
    """Seconds its relists waited for their turn after a ``RESYNC`` (jitter and the process's
    relist rate, :mod:`dfdb.replica.pacing`), in all."""
    checks: int = 0
    """Consistency checks against the database completed."""
    divergences: int = 0
    """Table scopes a check found different from the database (each logged at WARNING)."""
    repaired: int = 0
    """Objects a check repaired."""
