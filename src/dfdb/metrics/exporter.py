"""The Prometheus collector: reads the counters of NbApis and Replicas at scrape time."""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dfdb.metrics.stats import STREAM_COUNTERS, WRITE_COUNTERS, live_apis
from dfdb.nb import NbApi

__all__ = ["DfdbCollector", "METRICS"]


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    kind: str  # "counter" or "gauge"
    help: str
    labels: tuple[str, ...]


_TABLE = ("backend", "table")
_STREAM = ("backend",)
_REPLICA = ("backend", "replica", "mode")

_WRITES: dict[str, _Spec] = {
    "writes": _Spec("dfdb_writes", "counter", "Writes acknowledged: creates, updates, puts, deletes.", _TABLE),
    "conflicts": _Spec(
        "dfdb_write_conflicts", "counter", "Writes refused by compare-and-swap: another writer came first.", _TABLE
    ),
    "conflict_retries": _Spec(
        "dfdb_write_conflict_retries", "counter", "patch and put attempts repeated after a conflict.", _TABLE
    ),
    "retries": _Spec(
        "dfdb_retries", "counter", "Calls retried after a connection failure or a timeout (table '': none).", _TABLE
    ),
    "outcome_unknowns": _Spec(
        "dfdb_write_outcome_unknown", "counter", "Writes that ended in OutcomeUnknownError.", _TABLE
    ),
}
_STREAMS: dict[str, _Spec] = {
    "streams": _Spec("dfdb_streams_open", "gauge", "Change streams open now.", _STREAM),
    "reconnects": _Spec(
        "dfdb_stream_reconnects", "counter", "Change stream subscriptions read again after a failure.", _STREAM
    ),
    "resyncs": _Spec("dfdb_stream_resyncs", "counter", "RESYNC events yielded by change streams.", _STREAM),
    "records_read": _Spec(
        "dfdb_stream_records_read", "counter", "Change records read from the backend by change streams.", _STREAM
    ),
    "bytes_read": _Spec(
        "dfdb_stream_read_bytes", "counter", "Size of those change records as the driver received them.", _STREAM
    ),
    "records_malformed": _Spec(
        "dfdb_stream_records_malformed", "counter", "Change records a driver could not read (each a RESYNC).", _STREAM
    ),
    "corrupt": _Spec(
        "dfdb_stream_corrupt", "counter", "Changes skipped because their value failed validation.", _STREAM
    ),
}
_REPLICAS: dict[str, _Spec] = {
    "tables": _Spec("dfdb_replica_objects", "gauge", "Objects a Replica holds.", (*_REPLICA, "table")),
    "lag": _Spec(
        "dfdb_replica_lag", "gauge", "Events applied but not yet taken by the slowest events() consumer.", _REPLICA
    ),
    "deferred_now": _Spec("dfdb_replica_deferred", "gauge", "Events waiting for a reference target now.", _REPLICA),
    "deferred": _Spec(
        "dfdb_replica_deferred_events", "counter", "Events held back until a reference target arrived.", _REPLICA
    ),
    "events": _Spec("dfdb_replica_events", "counter", "Changes a Replica applied.", _REPLICA),
    "resyncs": _Spec("dfdb_replica_resyncs", "counter", "Relists of a Replica's scope after a RESYNC.", _REPLICA),
    "reconnects": _Spec(
        "dfdb_replica_reconnects", "counter", "Times a Replica reopened its change stream from its cursor.", _REPLICA
    ),
    "evictions": _Spec(
        "dfdb_replica_evictions", "counter", "Objects evicted to stay within max_objects (REACTIVE).", _REPLICA
    ),
    "corrupt": _Spec(
        "dfdb_replica_corrupt", "counter", "Objects evicted because a new stored value failed validation.", _REPLICA
    ),
    "position": _Spec(
        "dfdb_replica_position", "gauge", "Every change of the scope up to this revision is applied.", _REPLICA
    ),
}
METRICS: tuple[_Spec, ...] = (*_WRITES.values(), *_STREAMS.values(), *_REPLICAS.values())
"""Every metric dfdb exports."""

assert set(_WRITES) == set(WRITE_COUNTERS) and set(_STREAMS) == {"streams", *STREAM_COUNTERS}


def _family(spec: _Spec) -> CounterMetricFamily | GaugeMetricFamily:
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


def _replica_stats(replica: Any) -> Any:
    """``replica.stats()``, read again if the event loop changed a set it iterates (when the
    scrape runs in a thread of its own, as with ``prometheus_client.start_http_server``)."""
    for _ in range(9):
        try:
            return replica.stats()
        except RuntimeError:  # "Set changed size during iteration"
            continue
    return replica.stats()


class DfdbCollector(Collector):
    """Collects the counters of ``apis`` (every NbApi of the process when ``None``), of the
    Replicas attached to them and of their change streams, at each scrape.

    NbApis on the same backend add up; each Replica has labels of its own (``replica``:
    its number in the process, ``mode``).
    """

    def __init__(self, apis: Iterable[NbApi] | None = None) -> None:
        self._apis: weakref.WeakSet[NbApi] | None = None if apis is None else weakref.WeakSet(apis)

    def add(self, nb: NbApi) -> None:
        """Collect ``nb`` too (a collector of every NbApi has it already)."""
        if self._apis is not None:
            self._apis.add(nb)

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (for the registry's duplicate check)."""
        for spec in METRICS:
            yield _family(spec)

    def collect(self) -> Iterator[Metric]:
        """Every metric now."""
        apis = live_apis() if self._apis is None else list(self._apis)
        values: dict[str, defaultdict[tuple[str, ...], float]] = {s.name: defaultdict(float) for s in METRICS}
        for nb in sorted(apis, key=lambda a: str(a.url)):
            backend = nb.url.scheme
            counters = nb._counters
            for (counter, table), n in list(counters.counts.items()):
                for spec in _WRITES.values():  # every counter of a table written, zeros included
                    values[spec.name][backend, table] += n if spec is _WRITES[counter] else 0
            streams, totals = counters.stream_totals()
            values[_STREAMS["streams"].name][(backend,)] += streams
            for counter, n in totals.items():
                values[_STREAMS[counter].name][(backend,)] += n
            for number, replica in counters.replicas():
                stats = _replica_stats(replica)
                labels = (backend, number, str(replica.mode))
                for table, n in stats.tables.items():
                    values[_REPLICAS["tables"].name][(*labels, table)] = n
                for field, spec in _REPLICAS.items():
                    if field != "tables":
                        values[spec.name][labels] = getattr(stats, field)
        for spec in METRICS:
            family = _family(spec)
            for key, value in sorted(values[spec.name].items()):
                family.add_metric(list(key), value)
            yield family
