"""SQLite change-log polling: idle-poll cost and write->event latency at the default interval.

Usage: python benchmarks/sqlite_polling.py [--sizes 10000,100000] [--events 500]

For each table size it reports:
- the cost of one idle poll ("changes after R" when nothing changed);
- write->event latency when the writer is another OS process (seen on the poll timer,
  default interval 0.1 s) and when it is the same process (woken at once).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import dfdb
from dfdb.drivers.sqlite import SqliteDriver


class BenchPort(dfdb.NbModel, table="bench_port"):
    t: float = 0.0
    name: str = ""


WRITER = """
import asyncio, sys, time
sys.path.insert(0, {here!r})
import dfdb
from sqlite_polling import BenchPort

async def main():
    async with dfdb.connect({url!r}) as nb:
        for i in range({events}):
            await nb.patch(BenchPort, f"p{{i % 1000}}", t=time.time())
            await asyncio.sleep(0.005)

asyncio.run(main())
"""


def populate(path: str, size: int) -> None:
    rows = [
        (
            "bench_port",
            f"p{i}",
            f"t{i % 50}",
            BenchPort(id=f"p{i}", topic=f"t{i % 50}", version=1).model_dump_json().encode(),
        )
        for i in range(size)
    ]
    con = sqlite3.connect(path)
    with con:
        con.executemany(
            "INSERT INTO dfdb_changelog (tbl, id, topic, action, value, at) VALUES (?, ?, ?, 'create', ?, 0)", rows
        )
        con.execute(
            "INSERT INTO dfdb_entries (tbl, id, topic, value, revision) "
            "SELECT tbl, id, topic, value, revision FROM dfdb_changelog"
        )
    con.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(size: int, events: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/bench.db"
        url = f"sqlite:///{path}"
        async with dfdb.connect(url) as nb:
            pass  # creates the schema
        populate(path, size)
        async with dfdb.connect(url) as nb:
            driver = nb.driver
            assert isinstance(driver, SqliteDriver)
            head = (await driver.list("bench_port", "t0")).revision
            polls = 2000
            started = time.perf_counter()
            for _ in range(polls):
                await driver.changes_after(head, {"bench_port"}, None)
            idle_us = (time.perf_counter() - started) / polls * 1e6

            latencies: list[float] = []
            async with nb.watch(BenchPort) as stream:
                script = WRITER.format(here=str(Path(__file__).parent), url=url, events=events)
                proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
                while len(latencies) < events:
                    ev = await asyncio.wait_for(anext(stream), 30)
                    if isinstance(ev.obj, BenchPort):
                        latencies.append(time.time() - ev.obj.t)
                await proc.wait()

            local: list[float] = []
            async with nb.watch(BenchPort) as stream:
                for i in range(events):
                    t0 = time.perf_counter()
                    await nb.patch(BenchPort, f"p{i % 1000}", name=str(i))
                    await asyncio.wait_for(anext(stream), 30)
                    local.append(time.perf_counter() - t0)
        return {
            "idle_us": idle_us,
            "cross_p50": pct(latencies, 0.5),
            "cross_p99": pct(latencies, 0.99),
            "local_p50": pct(local, 0.5),
            "local_p99": pct(local, 0.99),
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--events", type=int, default=500)
    args = parser.parse_args()
    print(f"sqlite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print("| objects | idle poll | cross-process write->event p50 / p99 | same-process p50 / p99 |")
    print("| --- | --- | --- | --- |")
    for size in (int(s) for s in args.sizes.split(",")):
        r = await measure(size, args.events)
        print(
            f"| {size:,} | {r['idle_us']:.0f} µs | {r['cross_p50']:.1f} / {r['cross_p99']:.1f} ms "
            f"| {r['local_p50']:.2f} / {r['local_p99']:.2f} ms |"
        )


if __name__ == "__main__":
    asyncio.run(main())
