"""Measure every backend on one workload and write docs/choosing-a-backend.md.

Usage: python benchmarks/choose.py [--objects 100000] [--controllers 50] [--writes 10000]
       [--events 500] [--warmup 2000] [--backends memory,sqlite,redis,redis-sentinel,etcd,...]
       [--copy sqlite>redis,redis>etcd] [--out docs/choosing-a-backend.md]

Per set-up (``choose_setups.SETUPS``: the single servers, Redis with Sentinel, 3-member
etcd and ZooKeeper), one at a time, started here on loopback with the persistence
settings listed on the page: a warm-up load (not measured), the load of ``--objects``
LogicalPorts, a selective fan-out of ``--writes`` creates to ``--controllers`` change
streams (one topic each), and ``--events`` write->event latencies
(``dfdb.bench.overhead``); the servers' memory, CPU and disk (every member summed) and
this process's CPU are read from /proc around each phase (``dfdb.bench.resources``).
Then the faults: a restart of each single server on its data, a restart of Redis
without persistence, SQLite closed and opened again, ``kill -9`` of the leader or master
of each replicated set-up. ``dfdb copy`` of ``--objects`` ports along ``--copy`` comes first.

Writes the page, the figures as JSON next to it, and a PNG chart of latency against
resource use (with matplotlib: ``pip install 'dfdb[bench]'``; without it the page says
there is no chart). The page is rewritten after each set-up, so a stopped run leaves
what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from choose_page import Run, chart, render
from choose_setups import (
    REPLICATED,
    SETTINGS,
    SETUPS,
    Recovery,
    copy_seconds,
    failover_to_first_write,
    restart_to_first_event,
    sqlite_reopen,
    started,
    volatile_restart,
)

from dfdb.bench.overhead import measure_overhead
from dfdb.errors import DfdbError

HERE = Path(__file__).resolve().parent


def uptime() -> str:
    """The ``uptime`` line (the load averages), or the load averages alone without it."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def write_page(run: Run, args: argparse.Namespace) -> str:
    """The page, its JSON and (with matplotlib) its chart, from what the run has so far;
    returns the page's line about the chart."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    line = chart(run, out.with_suffix(".png"))
    out.write_text(render(run, args, line))
    payload = {
        "sizes": {k: getattr(args, k) for k in ("objects", "controllers", "writes", "events", "warmup")},
        "uptime": run.uptime,
        "load average": run.loads,
        "seconds": run.seconds,
        "settings": {r.backend: SETTINGS[r.backend] for r in run.rows},
        "rows": [r.as_dict() for r in run.rows],
        "restart": {k: v.as_dict() for k, v in run.restart.items()},
        "failover": {k: v.as_dict() for k, v in run.failover.items()},
        "restart without persistence (redis)": None if run.volatile is None else run.volatile.as_dict(),
        "sqlite reopened": None if run.reopen is None else run.reopen.as_dict(),
        "copy seconds": run.copies,
        "chart": line,
        "failed": run.failed,
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    return line


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


async def measure_setup(run: Run, args: argparse.Namespace, setup: str, folder: Path) -> None:
    """Every figure of one set-up, started for it and stopped after."""
    with started(setup, folder) as (url, server):
        say(f"{setup}: {args.objects} objects, {args.writes} fan-out writes")
        if args.warmup:  # not measured: the server's start-up growth stays out of the figures
            warm = args.warmup
            await measure_overhead(setup, url, objects=warm, controllers=args.controllers, writes=warm // 4)
        run.rows.append(
            await measure_overhead(
                setup,
                url,
                objects=args.objects,
                controllers=args.controllers,
                writes=args.writes,
                server=server,
                latency_events=args.events,
            )
        )
        if server is not None and setup in REPLICATED:
            say(f"{setup}: kill -9 of the leader")
            run.failover[setup] = await failover_to_first_write(url, server, folder)
        elif server is not None:
            say(f"{setup}: restart")
            run.restart[setup] = await restart_to_first_event(url, server, folder)
    if setup == "redis":
        say("redis without persistence: restart")
        run.volatile = await volatile_restart(folder)
    if setup == "sqlite":
        run.reopen = await sqlite_reopen(folder)


async def measure(run: Run, args: argparse.Namespace, setups: list[str], pairs: list[tuple[str, str]]) -> None:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dfdb-choose-") as tmp:
        if pairs:
            say(f"dfdb copy of {args.objects} objects: {', '.join(f'{a} > {b}' for a, b in pairs)}")
            folder = Path(tmp) / "copy"
            folder.mkdir()
            try:
                run.copies = await copy_seconds(pairs, args.objects, folder)
            except (DfdbError, RuntimeError, OSError, TimeoutError) as exc:
                run.failed["dfdb copy"] = f"{type(exc).__name__}: {exc}"
        for setup in setups:
            folder = Path(tmp) / setup
            folder.mkdir()
            try:
                await measure_setup(run, args, setup, folder)
            except (DfdbError, RuntimeError, OSError, TimeoutError) as exc:  # the page says so; the others go on
                run.failed[setup] = f"{type(exc).__name__}: {exc}"
                say(f"{setup}: failed: {run.failed[setup]}")
            run.seconds = time.perf_counter() - start
            write_page(run, args)
    run.seconds = time.perf_counter() - start


class Stored:
    """One set-up's row as a run's JSON file holds it (what the page reads of an Overhead)."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row
        self.backend: str = row["backend"]
        self.missing: list[str] = row["missing"]

    def figures(self) -> dict[str, float | None]:
        return dict(self.row["figures"])

    def performance(self) -> dict[str, float | None]:
        return dict(self.row["performance"])

    def as_dict(self) -> dict[str, Any]:
        return self.row


def rerender(args: argparse.Namespace) -> int:
    """The page, the chart and the JSON again from a run's JSON file."""
    data = json.loads(Path(args.render).read_text())
    for key, value in data["sizes"].items():
        setattr(args, key, value)
    run = Run(
        rows=[Stored(r) for r in data["rows"]],
        restart={k: Recovery(**v) for k, v in data["restart"].items()},
        failover={k: Recovery(**v) for k, v in data["failover"].items()},
        volatile=None
        if data["restart without persistence (redis)"] is None
        else Recovery(**data["restart without persistence (redis)"]),
        reopen=None if data["sqlite reopened"] is None else Recovery(**data["sqlite reopened"]),
        copies=data["copy seconds"],
        uptime=data["uptime"],
        loads=data["load average"],
        seconds=data["seconds"],
        failed=data["failed"],
    )
    write_page(run, args)
    say(f"wrote {args.out} from {args.render}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--controllers", type=int, default=50)
    parser.add_argument("--writes", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=2000, help="objects written (not measured) first")
    parser.add_argument("--backends", default=",".join(SETUPS), help="the set-ups measured, in this order")
    parser.add_argument(
        "--copy", default="sqlite>redis,redis>etcd", help="dfdb copy timed along these pairs ('' for none)"
    )
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "choosing-a-backend.md"))
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="measure nothing: write the page and chart again from the JSON file of a run (its figures unchanged)",
    )
    args = parser.parse_args()
    if args.render:
        return rerender(args)
    setups = [b.strip() for b in args.backends.split(",") if b.strip()]
    pairs = [tuple(p.split(">", 1)) for p in args.copy.split(",") if p.strip()]
    named = setups + [s for p in pairs for s in p]
    unknown = sorted({s.strip() for s in named} - set(SETUPS))
    if unknown:
        parser.error(f"unknown set-up(s) {', '.join(unknown)}; known: {', '.join(SETUPS)}")
    if any(len(p) != 2 or "memory" in p for p in pairs):
        parser.error("--copy takes pairs FROM>TO of set-ups other than memory (the command runs in its own process)")
    if min(args.objects, args.controllers, args.writes, args.events) < 1:
        parser.error("--objects, --controllers, --writes and --events must be at least 1")
    logging.getLogger("aiozk").setLevel(logging.CRITICAL)  # each refused reconnect while a server restarts
    run = Run(uptime=[uptime()], loads=[list(os.getloadavg())])
    try:
        asyncio.run(measure(run, args, setups, [(a.strip(), b.strip()) for a, b in pairs]))
    finally:
        run.uptime.append(uptime())
        run.loads.append(list(os.getloadavg()))
        line = write_page(run, args)
    if line.startswith("No chart"):
        say(line)
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
