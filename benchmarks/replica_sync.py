"""A Replica's full sync against the driver's own listing, in one process, and where its time goes.

Usage: python benchmarks/replica_sync.py [--db URL] [--ports 20000] [--repeat 3] [--profile]

Fills ``--db`` with ``--ports`` ports (the benchmark's ports) when it holds none, then times,
``--repeat`` times each, interleaved: a Replica's full sync, the driver's listing of the table
plus ``json.loads`` of every value, and (on a server or SQLite) the raw client's read and parse
of as many values, as ``nox -s bench`` does it. The best run of each and the ratios are printed;
``--profile`` adds the functions that took the most time in the last sync (cProfile). On a
machine shared with other work the absolute figures vary a lot: compare ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import tempfile
import time
from pathlib import Path

from dfdb.bench.raw import raw_client_for
from dfdb.bench.workload import sample_port, sample_values
from dfdb.connecting import connect
from dfdb.models import LogicalPort
from dfdb.replica import Replica
from dfdb.url import DatabaseURL


async def main(url: str, ports: int, repeat: int, profile: bool) -> None:
    async with connect(url, timeout=600) as nb:
        if not (await nb.list(LogicalPort)).items:
            await nb.create_many([sample_port(i, "sync") for i in range(ports)])
        raw = raw_client_for(DatabaseURL.parse(url), Path(tempfile.mkdtemp()))
        if raw is not None:
            await raw.open()
            await raw.prepare("sync-raw")
            await raw.bulk("sync-raw", sample_values(ports, "sync-raw"))
        listed: list[float] = []
        synced: list[float] = []
        read: list[float] = []
        profiler = cProfile.Profile()
        for run in range(repeat):
            if raw is not None:
                t0 = time.perf_counter()
                await raw.read_all("sync-raw")
                read.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            listing = await nb.driver.list(LogicalPort.__table__, None)
            for entry in listing.entries:
                json.loads(entry.value)
            listed.append(time.perf_counter() - t0)
            last = profile and run == repeat - 1
            t0 = time.perf_counter()
            if last:
                profiler.enable()
            async with Replica(nb, [LogicalPort]) as replica:
                synced.append(time.perf_counter() - t0)
                if last:
                    profiler.disable()
                held = len(replica)
        if raw is not None:
            await raw.drop(["sync-raw"])
            await raw.close()
        print(
            f"{url}: {held:,} ports; Replica full sync {min(synced):.3f} s, "
            f"driver listing + json.loads {min(listed):.3f} s: {min(synced) / min(listed):.2f}x"
            + (f"; raw client read + json.loads {min(read):.3f} s: {min(synced) / min(read):.2f}x" if read else "")
        )
        if profile:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="memory://sync")
    parser.add_argument("--ports", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.db, args.ports, args.repeat, args.profile))
