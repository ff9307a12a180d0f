"""Growth: a FULL Replica's sync and its memory per cached object as the data grows.

One namespace per backend grows through the sizes (10,000, 100,000 and 1,000,000
LogicalPorts by default): the ports are added with ``nb.create_many`` up to each size
(not timed), then ``repeat`` FULL Replicas sync it one after another, each on a
connection of its own opened before the clock starts (seconds from entering the Replica
to its sync). Rows, per backend:

- ``growth: Replica full sync of N ports`` (s);
- ``growth: memory per cached port, N ports (raw: dict of models)`` (bytes): what the
  first of those Replicas holds once synced against the same N ports validated into a
  plain ``dict`` of models; target ≤ 1.0x. Measured with :class:`~dfdb.bench.heap.Heap`:
  the allocator's own counters, which cost nothing to the sync (so that Replica is timed
  too), or ``tracemalloc`` where they cannot be read (then in a sync of its own);
- ``growth: full sync of N / of M ports`` for each size N and the size M before it (s):
  the dfdb column is N's sync, the raw column M's, and the ratio their medians'; target ≤
  1.1 times N/M (≤ 11x for ten times the ports: no worse than linear, with a tenth to spare).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from dfdb.bench.cases import BACKENDS, SCHEMES, local_servers
from dfdb.bench.heap import Heap
from dfdb.bench.report import BenchResult
from dfdb.bench.workload import Namespaces, Sizes, sample_port
from dfdb.connecting import connect
from dfdb.errors import InvalidURL
from dfdb.models import LogicalPort
from dfdb.replica import Replica
from dfdb.url import DatabaseURL

__all__ = ["GROWTH", "LOAD_CHUNK", "run_growth", "run_growth_backend"]

GROWTH = "growth"
"""The ``part`` of the growth rows (the other cases' rows are ``"cases"``)."""
LOAD_CHUNK = 10_000
"""Ports per ``create_many`` call while loading."""
SLACK = 1.1
"""The sync-time target: the ratio of the sizes times this."""


async def _load(url: DatabaseURL, run: str, start: int, stop: int) -> float:
    """Create ports ``start`` to ``stop`` of ``run``; returns the objects/s."""
    t0 = time.perf_counter()
    async with connect(url, timeout=600) as nb:
        for first in range(start, stop, LOAD_CHUNK):
            ports = [sample_port(i, run) for i in range(first, min(stop, first + LOAD_CHUNK))]
            failed = [r for r in await nb.create_many(ports) if isinstance(r, Exception)]
            if failed:
                raise RuntimeError(f"growth load: {len(failed)} writes failed, e.g. {failed[0]}")
    return (stop - start) / (time.perf_counter() - t0)


async def _sync(url: DatabaseURL, n: int, heap: Heap | None) -> tuple[float, int | None]:
    """Seconds a FULL Replica of ``n`` ports takes to sync, and with ``heap`` the bytes it
    holds once synced (measured from before it starts to while it is still open)."""
    held: int | None = None
    async with connect(url, timeout=600) as nb:
        start = heap.start() if heap is not None else 0
        try:
            t0 = time.perf_counter()
            async with Replica(nb, [LogicalPort]) as replica:
                took = time.perf_counter() - t0
                if len(replica) != n:
                    raise RuntimeError(f"the Replica holds {len(replica)} ports, not {n}")
                if heap is not None:
                    held, heap = heap.stop(start), None
        finally:
            if heap is not None:
                heap.abandon()
    return took, held


async def _dict_bytes(url: DatabaseURL, heap: Heap) -> int:
    """Bytes of the stored ports validated into a plain dict of models by id."""
    async with connect(url, timeout=600) as nb:
        values = [e.value for e in (await nb.driver.list(LogicalPort.__table__)).entries]
    with heap.measure() as held:
        plain: dict[str, LogicalPort] = {}
        for value in values:
            port = LogicalPort.model_validate_json(value)
            plain[port.id] = port
    del plain
    return held[0]


async def run_growth_backend(
    backend: str, url: str | DatabaseURL, sizes: Sizes, *, log: TextIO | None = None, info: dict[str, str] | None = None
) -> list[BenchResult]:
    """The growth rows of ``url`` (``backend`` names them), through ``sizes.growth``;
    ``info`` (the versions) gets how memory was measured (``"growth memory"``).

    Raises:
        InvalidURL: not a memory, sqlite, redis, etcd or zk URL.
    """
    base = DatabaseURL.parse(url)
    if base.scheme not in SCHEMES:
        raise InvalidURL(f"dfdb bench knows memory, sqlite, redis, etcd and zk URLs, not {base.scheme}://")
    steps = sorted(set(sizes.growth))
    heap = Heap()
    if info is not None:
        info["growth memory"] = heap.method
    tmp = Path(tempfile.mkdtemp(prefix="dfdb-growth-"))
    spaces = Namespaces(base, tmp)
    run = f"growth-{uuid.uuid4().hex[:8]}"
    ns = spaces.url(f"bench-{run}")
    results: list[BenchResult] = []
    syncs: dict[int, list[float]] = {}

    def say(text: str) -> None:
        if log is not None:
            print(f"  {backend}: {text}", file=log, flush=True)

    try:
        async with connect(ns):  # memory:// lives while open
            loaded = 0
            for n in steps:
                rate = await _load(ns, run, loaded, n)
                say(f"growth: loaded {n:,} ports ({n - loaded:,} added at {rate:,.0f}/s)")
                loaded = n
                runs: list[float] = []
                replica_bytes = None
                if heap.slows:  # traced: a sync of its own, not timed
                    _, replica_bytes = await _sync(ns, n, heap)
                for i in range(sizes.repeat):
                    took, held = await _sync(ns, n, heap if i == 0 and not heap.slows else None)
                    replica_bytes = held if held is not None else replica_bytes
                    runs.append(took)
                if replica_bytes is None:
                    raise RuntimeError("growth: the Replica's memory was not measured")
                say(f"growth: sync of {n:,} ports in {min(runs):.3g}-{max(runs):.3g} s; memory ({heap.method})")
                syncs[n] = runs
                results.append(
                    BenchResult(f"growth: Replica full sync of {n:,} ports", backend, "s", runs, [], False, objects=n)
                )
                dict_bytes = await _dict_bytes(ns, heap)
                results.append(
                    BenchResult(
                        f"growth: memory per cached port, {n:,} ports (raw: dict of models)",
                        backend,
                        "bytes",
                        [replica_bytes / n],
                        [dict_bytes / n],
                        higher_is_better=False,
                        target=1.0,
                        objects=n,
                    )
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for small, big in itertools.pairwise(steps):
        results.append(
            BenchResult(
                f"growth: full sync of {big:,} / of {small:,} ports (raw: the {small:,})",
                backend,
                "s",
                syncs[big],
                syncs[small],
                higher_is_better=False,
                target=round(SLACK * big / small, 3),
            )
        )
    for row in results:
        row.part = GROWTH
    return results


async def run_growth(
    backends: list[str],
    sizes: Sizes,
    *,
    log: TextIO | None = None,
    info: dict[str, str] | None = None,
    done: Callable[[list[BenchResult]], None] | None = None,
) -> list[BenchResult]:
    """The growth rows of each backend in ``backends`` (servers started here, one at a
    time); ``done`` is called with the rows so far after each backend. ``info``: as for
    :func:`run_growth_backend`."""
    results: list[BenchResult] = []
    for backend in backends:
        if backend not in BACKENDS:
            raise InvalidURL(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
        with local_servers([backend], zookeeper_heap="4g") as urls:
            if log is not None:
                print(f"{backend} at {urls[backend]}: growth through {sizes.growth}", file=log, flush=True)
            results += await run_growth_backend(backend, urls[backend], sizes, log=log, info=info)
        if done is not None:
            done(results)
    return results
