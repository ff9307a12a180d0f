"""The counters behind ``NbApi.stats()``: writes and their outcomes by table, and the
change streams and Replicas an NbApi serves. Plain Python: no metrics library needed."""

from __future__ import annotations

import itertools
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dfdb.errors import AlreadyExistsError, ConflictError, OutcomeUnknownError

if TYPE_CHECKING:
    from dfdb.events import ChangeStream
    from dfdb.nb import NbApi

__all__ = ["NbCounters", "NbStats", "TableStats", "live_apis"]

WRITE_COUNTERS = ("writes", "conflicts", "conflict_retries", "retries", "outcome_unknowns")
STREAM_COUNTERS = ("reconnects", "resyncs", "records_read", "bytes_read", "records_malformed", "corrupt")

_LIVE: weakref.WeakSet[NbApi] = weakref.WeakSet()
_REPLICA_NUMBERS = itertools.count()


def live_apis() -> list[NbApi]:
    """Every :class:`~dfdb.NbApi` of this process that is still referenced, open or closed."""
    return list(_LIVE)


@dataclass(frozen=True, slots=True)
class TableStats:
    """The write counters of one table (``NbStats.tables``)."""

    writes: int = 0
    """Writes acknowledged: creates, updates, puts, deletes and batch items that succeeded."""
    conflicts: int = 0
    """Writes refused because the object was not as expected (``ConflictError`` or
    ``AlreadyExistsError``: another writer came first), those ``patch`` and ``put`` retried included."""
    conflict_retries: int = 0
    """``patch`` and ``put`` attempts repeated after a conflict."""
    retries: int = 0
    """Calls retried after a connection failure or a timeout."""
    outcome_unknowns: int = 0
    """Writes that ended in ``OutcomeUnknownError``."""


@dataclass(frozen=True, slots=True)
class NbStats:
    """Counters of an :class:`~dfdb.NbApi` (``NbApi.stats()``), since it was created.

    The write counters are totals of ``tables``, plus the retries that concern no single
    table (connecting, opening a change stream). The stream counters add up every change
    stream the NbApi opened (those of its Replicas included), closed ones too.
    """

    writes: int
    """Writes acknowledged."""
    conflicts: int
    """Writes refused by compare-and-swap (another writer came first)."""
    conflict_retries: int
    """``patch`` and ``put`` attempts repeated after a conflict."""
    retries: int
    """Calls retried after a connection failure or a timeout (each retry counts once)."""
    outcome_unknowns: int
    """Writes that ended in ``OutcomeUnknownError``."""
    streams: int
    """Change streams open now."""
    reconnects: int
    """Times a change stream's backend subscription read again after a failure."""
    resyncs: int
    """``RESYNC`` events the change streams yielded."""
    records_read: int
    """Change records the streams read from the backend."""
    bytes_read: int
    """The size of those records as the driver received them."""
    records_malformed: int
    """Change records a driver could not read (each answered with a ``RESYNC``)."""
    corrupt: int
    """Changes skipped because their value failed validation."""
    tables: Mapping[str, TableStats] = field(default_factory=dict)
    """The write counters of each table written (or retried) so far."""


class NbCounters:
    """The live counters of one NbApi: updated as it works, read by ``stats()`` and by
    :mod:`dfdb.metrics`."""

    def __init__(self, nb: NbApi) -> None:
        _LIVE.add(nb)
        self.counts: Counter[tuple[str, str]] = Counter()
        """By (counter, table): one of ``WRITE_COUNTERS``; table ``""`` for no single table."""
        self._streams: weakref.WeakSet[ChangeStream] = weakref.WeakSet()
        self._closed: Counter[str] = Counter()  # the stream counters of closed streams
        self._replicas: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def add(self, counter: str, table: str) -> None:
        """Count one ``counter`` event of ``table``."""
        self.counts[counter, table] += 1

    @contextmanager
    def writing(self, table: str) -> Iterator[None]:
        """Count the write in the ``with`` block as acknowledged, refused by a conflict, or
        of unknown outcome, by what it ends with."""
        try:
            yield
        except (ConflictError, AlreadyExistsError):
            self.add("conflicts", table)
            raise
        except OutcomeUnknownError:
            self.add("outcome_unknowns", table)
            raise
        self.add("writes", table)

    def outcome(self, table: str, outcome: object) -> None:
        """Count the outcome of one item of a batch write: a revision or an error."""
        if isinstance(outcome, ConflictError | AlreadyExistsError):
            self.add("conflicts", table)
        elif isinstance(outcome, OutcomeUnknownError):
            self.add("outcome_unknowns", table)
        elif isinstance(outcome, int):
            self.add("writes", table)

    def total(self, counter: str) -> int:
        """``counter`` summed over every table."""
        return sum(n for (name, _), n in list(self.counts.items()) if name == counter)

    # ------------------------------------------------------------ streams and replicas
    def track_stream(self, stream: ChangeStream) -> None:
        """Count ``stream`` in the stream counters, also once it is closed."""
        self._streams.add(stream)
        stream.on_close = self._stream_closed

    def _stream_closed(self, stream: ChangeStream) -> None:
        self._streams.discard(stream)
        for name in STREAM_COUNTERS:
            self._closed[name] += int(getattr(stream, name))

    def stream_totals(self) -> tuple[int, dict[str, int]]:
        """How many streams are open, and each of ``STREAM_COUNTERS`` over every stream."""
        live = list(self._streams)
        totals = {name: self._closed[name] + sum(int(getattr(s, name)) for s in live) for name in STREAM_COUNTERS}
        return len(live), totals

    def attach(self, replica: object) -> None:
        """Serve ``replica``'s counters with this NbApi's; each Replica gets a number of its own."""
        self._replicas[replica] = str(next(_REPLICA_NUMBERS))

    def replicas(self) -> list[tuple[str, Any]]:
        """The attached Replicas still referenced, with their numbers, oldest first."""
        return sorted(((name, r) for r, name in list(self._replicas.items())), key=lambda p: int(p[0]))

    def stats(self) -> NbStats:
        """The counters now."""
        counts = dict(self.counts)
        tables: dict[str, dict[str, int]] = {}
        for (name, table), n in counts.items():
            if table:
                tables.setdefault(table, {})[name] = n
        streams, stream_counts = self.stream_totals()
        totals = {name: sum(n for (c, _), n in counts.items() if c == name) for name in WRITE_COUNTERS}
        return NbStats(
            **totals,
            streams=streams,
            **stream_counts,
            tables={table: TableStats(**values) for table, values in sorted(tables.items())},
        )
