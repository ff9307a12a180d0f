"""Redis behind Sentinel: create throughput with and without min_replicas, and failover time.

Usage: python benchmarks/sentinel.py [--creates 3000] [--slices 10] [--failovers 3]

On a local deployment (a master, 2 replicas, 3 sentinels) it reports:
- sequential creates per second with ``min_replicas=0``, ``1`` and ``2``, one create
  of each in turn (so that a busy machine slows all three alike), the median of
  ``slices`` parts of the run with the lowest-highest part in brackets (the sentinels'
  down-after is 10 s here, so that a busy machine causes no failover);
- how soon writes resume after ``kill -9`` of the master under one sequential writer
  (from the kill to the first create, sent after it, that succeeds), one fresh
  deployment (down-after 1 s) per failover.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time

import dfdb
from dfdb.sentinel_server import SentinelSetup


class BenchPort(dfdb.NbModel, table="bench_port"):
    name: str = ""


async def interleaved_creates(url: str, count: int, slices: int) -> dict[int, list[float]]:
    """Per ``min_replicas`` setting, creates per second in each of ``slices`` parts of the run."""
    settings = (0, 1, 2)
    seconds: dict[int, list[float]] = {r: [] for r in settings}
    async with contextlib.AsyncExitStack() as stack:
        nbs = {
            r: await stack.enter_async_context(
                dfdb.connect(url + f"&prefix=r{r}&min_replicas={r}&min_replicas_timeout=5", timeout=30)
            )
            for r in settings
        }
        for i in range(count):
            for r, nb in nbs.items():
                start = time.perf_counter()
                await nb.create(BenchPort(id=f"p{i}", topic=f"t{i % 50}", name=f"port {i}"))
                seconds[r].append(time.perf_counter() - start)
    part = max(1, count // slices)
    return {r: [len(s[i : i + part]) / sum(s[i : i + part]) for i in range(0, count, part)] for r, s in seconds.items()}


async def failover_seconds(setup: SentinelSetup) -> float:
    async with dfdb.connect(setup.url + "&prefix=failover", timeout=30) as nb:
        for i in range(50):
            await nb.create(BenchPort(id=f"b{i}", topic="t"))
        old = setup.master_index()
        setup.kill(old)
        killed = time.monotonic()
        i = 0
        while True:
            i += 1
            try:
                await nb.create(BenchPort(id=f"a{i}", topic="t"))
                return time.monotonic() - killed
            except (dfdb.OutcomeUnknownError, dfdb.BackendUnavailableError):
                continue


def server_version() -> str:
    out = subprocess.run([SentinelSetup.binary, "--version"], capture_output=True, text=True, check=False).stdout
    return out.split(" v=")[1].split()[0] if " v=" in out else "?"


def spread(values: list[float], digits: int) -> str:
    def show(v: float) -> str:
        return f"{v:,.{digits}f}"

    return f"{show(statistics.median(values))} ({show(min(values))} to {show(max(values))})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=3000)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--failovers", type=int, default=3)
    args = parser.parse_args()
    with SentinelSetup(down_after=10) as setup:  # no failover when a busy machine slows the master
        rates = await interleaved_creates(setup.url, args.creates, args.slices)
    resumed = []
    for _ in range(args.failovers):
        with SentinelSetup() as setup:
            resumed.append(await failover_seconds(setup))
    server = server_version()
    load = os.getloadavg()[0]
    print(f"redis-server {server}, Python {sys.version.split()[0]}, {os.cpu_count()} cores, load average {load:.0f}")
    print()
    print("| case | unit | median (lowest to highest) |")
    print("| --- | --- | --- |")
    for replicas, samples in rates.items():
        print(f"| sequential create, min_replicas={replicas} | objects/s | {spread(samples, 0)} |")
    if resumed:
        print(f"| writes resume after kill -9 of the master (down-after 1 s) | s | {spread(resumed, 2)} |")


if __name__ == "__main__":
    asyncio.run(main())
