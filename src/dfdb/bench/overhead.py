"""The resource overhead of a backend, measured on one workload.

Two measured phases in a fresh namespace (:mod:`dfdb.bench.resources` samples around
each):

1. Load: ``objects`` LogicalPorts written with ``nb.create_many``, no one watching.
   Gives the server's resident memory after the load and its growth per 100k objects,
   the server's and the client's CPU per 10k writes, and the growth on disk per 100k
   objects.
2. Fan-out: ``controllers`` change streams, each of one topic, while ``writes`` more
   ports are created spread over the topics; every event is waited for. Gives the
   server's and the client's CPU per 10k delivered events (the writes of this phase
   included).

With ``latency_events``, a third phase times write→event latency (one writer, one
stream, as benchmark case 3 does), and the row also gives the load's write rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfdb.bench.cases import _dfdb_latency
from dfdb.bench.raw import raw_client_for
from dfdb.bench.resources import Delta, Meter, Target, locate
from dfdb.bench.workload import Namespaces, sample_port
from dfdb.connecting import connect
from dfdb.models import LogicalPort
from dfdb.servers import LocalServer
from dfdb.url import DatabaseURL

__all__ = ["FIGURES", "Overhead", "measure_overhead", "render_overhead"]

_MB = 1_000_000

FIGURES: dict[str, str] = {
    "server RSS after the load": "MB",
    "server RSS per 100k objects": "MB",
    "server CPU per 10k writes": "s",
    "server CPU per 10k delivered events": "s",
    "disk per 100k objects": "MB",
    "client CPU per 10k writes": "s",
    "client CPU per 10k events": "s",
}
"""The figures of :meth:`Overhead.figures`, with their units."""


@dataclass
class Overhead:
    """The measured phases of one backend and what could not be taken."""

    backend: str
    objects: int
    events: int
    load: Delta
    fanout: Delta
    missing: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    """Seconds from each update to its event (the latency phase; empty without it)."""

    def performance(self) -> dict[str, float | None]:
        """Write rate of the load (objects/s) and write→event p50/p99 (ms; ``None``
        without the latency phase)."""
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else None

        rate = self.objects / self.load.seconds if self.load.seconds > 0 else None
        return {"write rate": rate, "write->event p50": pct(0.5), "write->event p99": pct(0.99)}

    def figures(self) -> dict[str, float | None]:
        """Each figure of :data:`FIGURES` (``None``: not taken)."""

        def per(value: float | None, count: int, unit: int, scale: float = 1.0) -> float | None:
            return None if value is None or count <= 0 else value * unit / count / scale

        rss = self.load.after.rss
        return {
            "server RSS after the load": None if rss is None else rss / _MB,
            "server RSS per 100k objects": per(self.load.rss_growth, self.objects, 100_000, _MB),
            "server CPU per 10k writes": per(self.load.server_cpu, self.objects, 10_000),
            "server CPU per 10k delivered events": per(self.fanout.server_cpu, self.events, 10_000),
            "disk per 100k objects": per(self.load.disk_growth, self.objects, 100_000, _MB),
            "client CPU per 10k writes": per(self.load.client_cpu, self.objects, 10_000),
            "client CPU per 10k events": per(self.fanout.client_cpu, self.events, 10_000),
        }

    def as_dict(self) -> dict[str, Any]:
        """The figures, the counts and what was not taken, for a JSON report."""
        return {
            "backend": self.backend,
            "objects": self.objects,
            "events": self.events,
            "load_seconds": self.load.seconds,
            "fanout_seconds": self.fanout.seconds,
            "figures": self.figures(),
            "performance": self.performance(),
            "missing": self.missing,
        }


async def _fanout(url: DatabaseURL, run: str, controllers: int, writes: int, within: float) -> int:
    """Creates ``writes`` ports over ``controllers`` topics, each watched by its own
    stream; returns the events delivered once every stream has had its own."""
    ports = [sample_port(i, run, controllers) for i in range(writes)]
    expected = [len(ports[k::controllers]) for k in range(controllers)]
    async with connect(url, timeout=600) as nb, contextlib.AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(nb.watch(LogicalPort, topics=[f"tenant-{k}"])) for k in range(controllers)
        ]

        async def drain(k: int) -> int:
            got = 0
            while got < expected[k]:
                await anext(streams[k])
                got += 1
            return got

        readers = [asyncio.ensure_future(drain(k)) for k in range(controllers)]
        try:
            results = await nb.create_many(ports)
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                raise RuntimeError(f"fan-out: {len(failed)} writes failed, e.g. {failed[0]}")
            counts = await asyncio.wait_for(asyncio.gather(*readers), within)
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    return sum(counts)


async def measure_overhead(
    backend: str,
    url: str | DatabaseURL,
    *,
    objects: int,
    controllers: int,
    writes: int,
    server: LocalServer | None = None,
    cleanup: bool = False,
    within: float = 600.0,
    latency_events: int = 0,
) -> Overhead:
    """Measure the load and fan-out phases on ``url`` (in a namespace of its own).

    ``server``: the local server behind ``url`` (its processes and data folder), else
    the local process listening on the URL's port is sampled, where there is one.
    With ``cleanup`` (a server of your own) the namespace is removed at the end.
    """
    base = DatabaseURL.parse(url)
    tmp = Path(tempfile.mkdtemp(prefix="dfdb-overhead-"))
    spaces = Namespaces(base, tmp)
    run = uuid.uuid4().hex[:8]
    ns = spaces.url(f"bench-{run}")
    target: Target = locate(ns if base.scheme == "sqlite" else base, server)
    meter = Meter(target)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if base.scheme == "memory":  # memory:// lives while a connection is open
                await stack.enter_async_context(connect(ns))
            ports = [sample_port(i, run) for i in range(objects)]
            async with connect(ns, timeout=600) as nb:
                with meter.measure() as load:
                    results = await nb.create_many(ports)
                failed = [r for r in results if isinstance(r, Exception)]
                if failed:
                    raise RuntimeError(f"load: {len(failed)} writes failed, e.g. {failed[0]}")
            del ports, results
            with meter.measure() as fanout:
                events = await _fanout(ns, f"{run}f", controllers, writes, within)
            latencies = await _dfdb_latency(ns, f"{run}l", latency_events) if latency_events > 0 else []
    finally:
        if cleanup:
            raw = raw_client_for(base, tmp)
            if raw is not None:
                await raw.open()
                try:
                    await raw.drop(spaces.made)
                finally:
                    await raw.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return Overhead(backend, objects, events, load, fanout, list(target.missing), latencies)


def _shown(value: float | None, unit: str) -> str:
    if value is None:
        return "not taken"
    if unit == "s":
        return f"{value:.3g}"
    return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"


def render_overhead(rows: list[Overhead]) -> str:
    """A markdown table (a row per figure, a column per backend) and, under it, what
    could not be taken on each backend."""
    lines = [
        "| figure | unit | " + " | ".join(r.backend for r in rows) + " |",
        "| --- | --- | " + " | ".join("---" for _ in rows) + " |",
    ]
    figures = [r.figures() for r in rows]
    for name, unit in FIGURES.items():
        lines.append(f"| {name} | {unit} | " + " | ".join(_shown(f[name], unit) for f in figures) + " |")
    lines.append("")
    for r in rows:
        lines.append(
            f"- {r.backend}: {r.objects:,} objects loaded in {r.load.seconds:.1f} s; "
            f"{r.events:,} events delivered in {r.fanout.seconds:.1f} s"
        )
        lines += [f"  - not taken: {m}" for m in r.missing]
    return "\n".join(lines) + "\n"
