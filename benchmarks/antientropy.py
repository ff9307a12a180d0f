"""The cost of a Replica's consistency check (anti-entropy) on a large scope.

Usage: python benchmarks/antientropy.py [--objects 100000] [--backends memory,sqlite,redis,etcd,zookeeper]

For each backend (servers started on loopback, as ``benchmarks/run.py`` does) it loads
``--objects`` ports, opens a FULL Replica of them and reports:
- a check of the unchanged scope: its time, the buckets, the round trips, the keys and
  values it received and their bytes (from ``CheckReport``), and the CPU time of the
  Replica's own digest of its store;
- a check after one object went silently wrong in the Replica: the same figures, and the
  object repaired.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import dfdb
from dfdb.bench import BACKENDS
from dfdb.bench.cases import local_servers
from dfdb.drivers.digest import buckets_for, digest_of


class CheckedPort(dfdb.NbModel, table="ae_bench_port"):
    name: str = ""
    mac: str = ""
    ips: tuple[str, ...] = ()


def row(backend: str, what: str, seconds: float, report: dfdb.replica.antientropy.CheckReport) -> str:
    return (
        f"| {backend} | {what} | {seconds:.2f} | {report.buckets} | {report.differing} | {report.round_trips} "
        f"| {report.keys_read} | {report.values_read} | {report.bytes_read:,} | {report.repaired} |"
    )


async def one(backend: str, url: str, objects: int) -> list[str]:
    async with dfdb.connect(url, timeout=300) as nb:  # a listing of 100k objects on a busy machine
        ports = [
            CheckedPort(
                id=f"port-{i:06d}", topic=f"tenant-{i % 100}", name=f"p{i}", mac=f"fa:16:3e:{i:06x}", ips=["10.0.0.1"]
            )
            for i in range(objects)
        ]
        for start in range(0, objects, 10_000):
            await nb.create_many(ports[start : start + 10_000])
        async with dfdb.Replica(nb, [CheckedPort], check_interval=None) as replica:
            rows = replica._store.rows[CheckedPort]
            n = buckets_for(len(rows))
            began = time.process_time()
            digest_of(((id, rev) for id, (_, rev) in rows.items()), n)
            local = time.process_time() - began
            began = time.perf_counter()
            unchanged = await replica.check(settle=30)
            lines = [
                row(backend, f"unchanged (local digest {local:.2f} s CPU)", time.perf_counter() - began, unchanged)
            ]
            obj = replica.get(CheckedPort, "port-000042")  # built: a sync holds values as stored
            assert obj is not None
            rev = rows["port-000042"][1]
            rows["port-000042"] = (obj.model_copy(update={"name": "stale"}), rev - 1)  # silently wrong
            began = time.perf_counter()
            repaired = await replica.check(settle=30)
            lines.append(row(backend, "one object wrong", time.perf_counter() - began, repaired))
            return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    backends = args.backends.split(",")
    print(f"{args.objects:,} objects in one FULL Replica")
    print(
        "| backend | check | s | buckets | differing | round trips | keys read | values read | bytes read | repaired |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with local_servers(backends) as urls:
        for backend in backends:
            for line in await one(backend, urls[backend], args.objects):
                print(line, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
