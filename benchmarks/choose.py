"""Measure every backend on one workload and write docs/choosing-a-backend.md.

Usage: python benchmarks/choose.py [--objects 100000] [--controllers 50] [--writes 10000]
       [--events 500] [--warmup 2000] [--backends memory,sqlite,redis,etcd,zookeeper]
       [--out docs/choosing-a-backend.md]

Per backend, one server at a time started here on loopback with the persistence
settings listed on the page (``SETTINGS``): a warm-up load (not measured), the load of ``--objects`` LogicalPorts, a
selective fan-out of ``--writes`` creates to ``--controllers`` change streams (one
topic each), and ``--events`` write->event latencies (``dfdb.bench.overhead``); the
server's memory, CPU and disk and this process's CPU are read from /proc around each
phase (``dfdb.bench.resources``). Writes the page, the figures as JSON next to it, and
a PNG chart of latency against resource use when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from dfdb.bench import versions
from dfdb.bench.overhead import FIGURES, Overhead, measure_overhead
from dfdb.bench.workload import Namespaces, sample_port
from dfdb.connecting import connect
from dfdb.errors import DfdbError
from dfdb.models import LogicalPort
from dfdb.servers import EtcdServer, LocalServer, RedisServer, ZooKeeperServer
from dfdb.url import DatabaseURL

HERE = Path(__file__).resolve().parent
BACKENDS = ("memory", "sqlite", "redis", "etcd", "zookeeper")

SETTINGS = {
    "memory": "in this process, nothing on disk (lost when the process ends)",
    "sqlite": "dfdb's defaults: WAL journal, `synchronous=NORMAL` (a power loss can lose the last "
    "transactions, a crash of the process cannot)",
    "redis": "append-only file with `appendfsync always` (every acknowledged write is on disk), RDB snapshots off",
    "etcd": "etcd's defaults: the WAL is fsynced on every commit, a snapshot every 100,000 changes; "
    "WAL segments are preallocated 64 MB at a time, so its disk figure moves in steps at small loads",
    "zookeeper": "standalone, `-Xmx512m`, `forceSync=no` (the loopback setting of dfdb's test "
    "servers: the transaction log is written but not fsynced per write; a production ensemble keeps "
    "the default `forceSync=yes`, which costs more per write than shown)",
}
"""The persistence settings each backend runs with here."""

PERFORMANCE = {"write rate": "objects/s", "write->event p50": "ms", "write->event p99": "ms"}


@contextlib.contextmanager
def started(backend: str, tmp: Path) -> Iterator[tuple[str, LocalServer | None]]:
    if backend == "memory":
        yield "memory://choose", None
        return
    if backend == "sqlite":
        yield f"sqlite:///{tmp}/choose.db", None
        return
    server: LocalServer = {
        "redis": lambda: RedisServer(appendonly=True),
        "etcd": EtcdServer,
        "zookeeper": lambda: ZooKeeperServer(heap="512m"),
    }[backend]()
    with server:
        yield server.url, server


async def restart_to_first_event(url: str, server: LocalServer, tmp: Path, within: float = 120.0) -> str:
    """``kill -9`` and restart of the server (its data kept) under an open change
    stream: seconds from the restart to the stream's first event, retrying a create
    until one is accepted; the text names that event (a RESYNC or the create)."""
    ns = Namespaces(DatabaseURL.parse(url), tmp).url("choose-restart")
    async with connect(ns, timeout=10) as nb, nb.watch(LogicalPort) as stream:
        await nb.create(sample_port(0, "restart"))
        await asyncio.wait_for(anext(stream), within)
        t0 = time.perf_counter()
        await asyncio.to_thread(server.restart)
        i = 1
        while True:
            try:
                await nb.create(sample_port(i, "restart"))
                break
            except DfdbError:  # not served yet: the driver reconnects
                if time.perf_counter() - t0 > within:
                    raise
                i += 1
                await asyncio.sleep(0.05)
        event = await asyncio.wait_for(anext(stream), within)
        return f"{time.perf_counter() - t0:.2g} ({event.action.value})"


def _shown(value: float | None, unit: str) -> str:
    if value is None:
        return "not taken"
    if unit in ("s", "ms"):
        return f"{value:.3g}"
    return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"


def chart(rows: list[Overhead], path: Path) -> str:
    """A PNG of write->event p99 against server + client CPU per 10k writes and
    against server RSS per 100k objects; returns the line the page shows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (
            "No chart: matplotlib is not installed on the machine that made this page "
            "(`pip install matplotlib` and run the script again to get `choosing-a-backend.png`)."
        )
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for row in rows:
        f, p = row.figures(), row.performance()
        p99 = p["write->event p99"]
        if p99 is None:
            continue
        cpu = (f["server CPU per 10k writes"] or 0.0) + (f["client CPU per 10k writes"] or 0.0)
        left.scatter([cpu], [p99])
        left.annotate(row.backend, (cpu, p99))
        rss = f["server RSS per 100k objects"]
        if rss is not None:
            right.scatter([rss], [p99])
            right.annotate(row.backend, (rss, p99))
    left.set_xlabel("CPU s per 10k writes (server + client)")
    right.set_xlabel("server RSS MB per 100k objects")
    for ax in (left, right):
        ax.set_ylabel("write->event p99 (ms)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"![latency against resource use]({path.name})"


def _best(rows: list[Overhead], figure: str, among: tuple[str, ...]) -> tuple[str, float] | None:
    """The backend of ``among`` with the lowest ``figure`` (resource figures, then performance)."""
    found = []
    for row in rows:
        value = {**row.figures(), **row.performance()}.get(figure)
        if row.backend in among and value is not None:
            found.append((value, row.backend))
    return (min(found)[1], min(found)[0]) if found else None


def recommend(rows: list[Overhead]) -> list[str]:
    """One recommendation per kind of deployment, each naming the figure it rests on."""
    servers = ("redis", "etcd", "zookeeper")
    lines = ["## Which backend", ""]
    lab = _best(rows, "client CPU per 10k writes", ("sqlite",))
    if lab is not None:
        lines.append(
            "- **A lab on one host**: SQLite — no server to run, its data survives a restart, and its whole "
            f"cost is this process's CPU (row *client CPU per 10k writes*: {lab[1]:.3g} s). memory:// is for "
            "tests: nothing survives the process."
        )
    fan = _best(rows, "server CPU per 10k delivered events", servers)
    p99 = _best(rows, "write->event p99", servers)
    if fan is not None:
        lines.append(
            "- **A production control plane of hundreds of hosts** (many controllers watching): a server "
            f"backend, on the figures that grow with the number of watchers: the lowest *server CPU per 10k "
            f"delivered events* here is {fan[0]}'s ({fan[1]:.3g} s)"
            + (f", the lowest *write->event p99* {p99[0]}'s ({p99[1]:.3g} ms)" if p99 is not None else "")
            + "; for a member loss without downtime, etcd or ZooKeeper as a 3-member cluster, or Redis with "
            "Sentinel (not measured on this page)."
        )
    disk = _best(rows, "disk per 100k objects", ("redis", "etcd"))
    if disk is not None:
        lines.append(
            "- **Strict durability** (no acknowledged write lost on a power cut): etcd (the WAL is fsynced "
            "on every commit, and a cluster commits on a majority) or Redis with `appendfsync always`; "
            "compare their *write rate* and *disk per 100k objects* rows (the lower disk use here: "
            f"{disk[0]}, {disk[1]:.3g} MB). ZooKeeper needs `forceSync=yes` for this, not the setting "
            "measured here."
        )
    return [*lines, ""]


def render(
    rows: list[Overhead], args: argparse.Namespace, load: list[float], chart_line: str, recover: dict[str, str]
) -> str:
    info = versions()
    names = [r.backend for r in rows]
    lines = [
        "# Choosing a backend",
        "",
        "What each backend costs to run next to how fast it is, measured in one run of "
        "`benchmarks/choose.py` on one machine and one workload: "
        f"{args.objects:,} LogicalPorts loaded with `create_many`; then {args.controllers} change streams, "
        f"each of one topic, while {args.writes:,} more ports are created spread over the topics; then "
        f"{args.events} write→event latencies (one writer, one stream). The server's resident memory and CPU "
        "seconds are read from `/proc/<pid>/stat`, its data folder's size on disk as `du` counts it (allocated "
        "blocks), and the client's CPU is this benchmark process's own (dfdb, the client library, the event "
        "loop). Per-100k and per-10k figures are the growth over the phase scaled linearly. "
        "`dfdb bench --db URL --resources` measures the same on a server of your own.",
        "",
        f"**The machine was loaded while this ran** (load average {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} "
        f"on {os.cpu_count()} cores), so the run used small sizes. **These figures must be regenerated on a "
        "quiet machine** (`python benchmarks/choose.py` with its defaults: 100,000 objects, 50 controllers, "
        "10,000 writes) before anyone relies on them; read them as orders of magnitude.",
        "",
        "| figure | unit | " + " | ".join(names) + " |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    perf = [r.performance() for r in rows]
    figs = [r.figures() for r in rows]
    for name, unit in PERFORMANCE.items():
        lines.append(f"| {name} | {unit} | " + " | ".join(_shown(p[name], unit) for p in perf) + " |")
    for name, unit in FIGURES.items():
        lines.append(f"| {name} | {unit} | " + " | ".join(_shown(f[name], unit) for f in figs) + " |")
    cells = " | ".join(recover.get(r.backend, "no server") for r in rows)
    lines.append(f"| restart (kill -9) to first event | s (first event) | {cells} |")
    lines += ["", "Not taken:", ""]
    lines += [f"- {r.backend}: {m}" for r in rows for m in r.missing] or ["- nothing"]
    lines += ["", chart_line, "", *recommend(rows), "## Persistence settings", ""]
    lines += [f"- **{r.backend}**: {SETTINGS[r.backend]}" for r in rows]
    lines += [
        "",
        "## Reading the table",
        "",
        "- memory and SQLite have no server: their whole cost is the client CPU rows (and the process's "
        "own memory, not measured here).",
        "- The write rate is the load phase's: `create_many` of every object, with the server's fsync policy above.",
        "- Server CPU per 10k delivered events covers the fan-out phase, its writes included.",
        "- Restart to first event: the server is killed (`kill -9`) and started again on its data under an "
        "open change stream; the time runs from the restart until the stream's first event (its kind in "
        "brackets: the create retried until the server accepted it, or a RESYNC), the server's own start-up "
        "included.",
        f"- Each server is freshly started and first takes a warm-up load of {args.warmup:,} objects (not "
        "measured); at small sizes the growth of its memory and CPU still includes some warm-up (the JVM's "
        "heap and JIT for ZooKeeper, etcd's caches), which inflates the per-100k and per-10k figures; at "
        "100,000 objects the data dominates.",
        "",
        "Not on this page yet: failover to first write, what "
        "survives what (restart with and without persistence, member loss, partition), the Sentinel and "
        "3-member set-ups, and the time `dfdb copy` takes to move 100k objects between backends.",
        "",
        "## Machine and versions",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    return "\n".join(lines) + "\n"


def write_page(rows: list[Overhead], args: argparse.Namespace, load: list[float], recover: dict[str, str]) -> None:
    """The page, its JSON and (with matplotlib) its chart, from the rows so far."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    line = chart(rows, out.with_suffix(".png"))
    out.write_text(render(rows, args, load, line, recover))
    payload = {"load average": load, "settings": SETTINGS, "rows": [r.as_dict() for r in rows], "restart": recover}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")


async def run(args: argparse.Namespace, backends: list[str]) -> list[Overhead]:
    rows: list[Overhead] = []
    recover: dict[str, str] = {}
    load = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="dfdb-choose-") as tmp:
        for backend in backends:
            with started(backend, Path(tmp)) as (url, server):
                print(f"{backend}: {args.objects} objects, {args.writes} fan-out writes", file=sys.stderr, flush=True)
                if args.warmup:  # not measured: the server's start-up growth stays out of the figures
                    await measure_overhead(
                        backend, url, objects=args.warmup, controllers=args.controllers, writes=args.warmup // 4
                    )
                rows.append(
                    await measure_overhead(
                        backend,
                        url,
                        objects=args.objects,
                        controllers=args.controllers,
                        writes=args.writes,
                        server=server,
                        latency_events=args.events,
                    )
                )
                if server is not None:
                    try:
                        recover[backend] = await restart_to_first_event(url, server, Path(tmp))
                    except (DfdbError, TimeoutError) as exc:
                        recover[backend] = f"not measured: {exc}"
            load = [max(a, b) for a, b in zip(load, os.getloadavg(), strict=True)]
            write_page(rows, args, load, recover)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--controllers", type=int, default=50)
    parser.add_argument("--writes", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=2000, help="objects written (not measured) first")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "choosing-a-backend.md"))
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(BACKENDS)}")
    if min(args.objects, args.controllers, args.writes, args.events) < 1:
        parser.error("--objects, --controllers, --writes and --events must be at least 1")
    logging.getLogger("aiozk").setLevel(logging.CRITICAL)  # each refused reconnect while a server restarts
    asyncio.run(run(args, backends))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
