"""Redis behind Sentinel: create throughput with and without min_replicas, and failover time.

Usage: python benchmarks/sentinel.py [--creates 300] [--repeat 15] [--failovers 3]

On a local deployment (a master, 2 replicas, 3 sentinels) it reports:
- sequential creates per second with ``min_replicas=0``, ``1`` and ``2``, interleaved
  (0, 1, 2, 0, 1, 2 …), the median run with the lowest-highest in brackets (the
  sentinels' down-after is 10 s here, so that a busy machine causes no failover);
- how soon writes resume after ``kill -9`` of the master under one sequential writer
  (from the kill to the first create, sent after it, that succeeds), one fresh
  deployment (down-after 1 s) per failover.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import dfdb
from dfdb.sentinel_server import SentinelSetup


class BenchPort(dfdb.NbModel, table="bench_port"):
    name: str = ""


async def creates_per_second(url: str, count: int, prefix: str) -> float:
    async with dfdb.connect(url + f"&prefix={prefix}", timeout=30) as nb:
        start = time.perf_counter()
        for i in range(count):
            await nb.create(BenchPort(id=f"p{i}", topic=f"t{i % 50}", name=f"port {i}"))
        return count / (time.perf_counter() - start)


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
    parser.add_argument("--creates", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--failovers", type=int, default=3)
    args = parser.parse_args()
    rates: dict[int, list[float]] = {0: [], 1: [], 2: []}
    with SentinelSetup(down_after=10) as setup:  # no failover when a busy machine slows the master
        for run in range(args.repeat):
            for replicas, samples in rates.items():
                url = setup.url + f"&min_replicas={replicas}&min_replicas_timeout=5"
                samples.append(await creates_per_second(url, args.creates, f"r{replicas}-{run}"))
    resumed = []
    for _ in range(args.failovers):
        with SentinelSetup() as setup:
            resumed.append(await failover_seconds(setup))
    server = server_version()
    print(f"redis-server {server}, Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print("| case | unit | median (lowest to highest) |")
    print("| --- | --- | --- |")
    for replicas, samples in rates.items():
        print(f"| sequential create, min_replicas={replicas} | objects/s | {spread(samples, 0)} |")
    if resumed:
        print(f"| writes resume after kill -9 of the master (down-after 1 s) | s | {spread(resumed, 2)} |")


if __name__ == "__main__":
    asyncio.run(main())
