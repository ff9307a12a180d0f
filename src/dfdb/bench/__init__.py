"""dfdb against the raw clients: five cases per backend, measured side by side.

Each case runs for dfdb and for the raw client doing the equivalent work, in the same
process, interleaved (dfdb, raw, dfdb, raw …), ``repeat`` times; the report gives the
median and the spread (lowest-highest) of each, and their ratio. Every run works in
its own namespace (a fresh key prefix, chroot or file), so runs never see each other.

1. Sequential create (objects/s): ``nb.create`` one after another vs the raw client's
   create-if-absent of the same JSON bytes, one after another.
2. Bulk load of LogicalPorts (objects/s): ``nb.create_many`` vs raw batched writes at
   the concurrency dfdb's driver uses.
3. Write→event latency (ms, p50 and p99): ``nb.update`` then the ``ChangeStream``
   event vs a raw write then the raw client's own watch event; native streams, and
   dfdb's polling mode against the same raw figure.
4. Replica full sync (seconds): a FULL :class:`~dfdb.Replica` of every port loaded in
   case 2 vs the raw client reading the same number of values and parsing each JSON
   document into a dict; and the memory per cached object (``tracemalloc``) vs the
   same ports as validated models in a plain ``dict``.
5. Selective fan-out (records and bytes): controllers, each a SELECTIVE Replica of one
   topic, while writes are spread over the topics: the most any controller read from
   the server vs what its own topic holds (the raw column is that ideal).

Growth (:mod:`~dfdb.bench.growth`): a FULL Replica's sync and its memory per cached
object at 10,000, 100,000 and 1,000,000 ports, with the growth of the sync time from one
size to the next; its own part of the report.

The modules: :mod:`~dfdb.bench.workload` (sizes, the ports written, a namespace per
run), :mod:`~dfdb.bench.cases` (dfdb's side of each case and the runs),
:mod:`~dfdb.bench.raw` (each backend's raw baseline, described in ``RAW``; a Redis one
parses replies as dfdb's connections do), :mod:`~dfdb.bench.growth` (the growth rows),
:mod:`~dfdb.bench.heap` (memory read from the allocators' counters) and
:mod:`~dfdb.bench.report` (the rows, the markdown table, the JSON file).
``python benchmarks/run.py`` (or ``nox -s bench``) writes docs/benchmarks.md and
docs/benchmarks.json; ``dfdb bench --db URL`` runs the same cases against a server of
your own and prints the table. Nothing in the library imports this package.
"""

from __future__ import annotations

from dfdb.bench.cases import BACKENDS, SCHEMES, run_all, run_backend
from dfdb.bench.growth import GROWTH, run_growth
from dfdb.bench.raw import RAW
from dfdb.bench.report import NOTES, BenchResult, load_results, load_versions, render_markdown, versions, write_reports
from dfdb.bench.workload import Sizes

__all__ = [
    "BACKENDS",
    "GROWTH",
    "NOTES",
    "RAW",
    "SCHEMES",
    "BenchResult",
    "Sizes",
    "load_results",
    "load_versions",
    "render_markdown",
    "run_all",
    "run_backend",
    "run_growth",
    "versions",
    "write_reports",
]
