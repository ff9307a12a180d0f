"""The write and event cases alone (sequential create, bulk load, write->event latency),
dfdb interleaved with the raw client in one process, on chosen backends.

Usage: python benchmarks/writes.py [--backends sqlite,redis,etcd,zookeeper]
       [--cases seq,bulk,events] [--seq N] [--bulk N] [--events N] [--repeat N]

The same dfdb and raw code as ``benchmarks/run.py`` (``dfdb.bench``), at sizes of your
choice and without the read cases: a quick way to profile one backend and case. Prints
one line per case: dfdb and raw medians (lowest-highest) and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import uuid
from pathlib import Path

from dfdb.bench.cases import _dfdb_bulk, _dfdb_latency, _dfdb_seq, _pct, _rate, _servers
from dfdb.bench.raw import raw_client_for
from dfdb.bench.workload import Namespaces, sample_values
from dfdb.url import DatabaseURL

CASES = ("seq", "bulk", "events")


def _line(case: str, backend: str, unit: str, d: list[float], r: list[float]) -> str:
    def show(xs: list[float]) -> str:
        return f"{statistics.median(xs):,.4g} ({min(xs):,.4g}-{max(xs):,.4g})" if xs else "-"

    ratio = f"{statistics.median(d) / statistics.median(r):.2f}x" if d and r else ""
    return f"{backend:9s} {case:18s} {unit:9s} dfdb {show(d):32s} raw {show(r):32s} {ratio}"


async def _backend(backend: str, url: str, cases: list[str], args: argparse.Namespace) -> None:
    base = DatabaseURL.parse(url)
    tmp = Path(tempfile.mkdtemp(prefix="dfdb-writes-"))
    spaces = Namespaces(base, tmp)
    raw = raw_client_for(base, tmp)
    if raw is not None:
        await raw.open()
    try:
        for case, n, run_dfdb, run_raw, label in (
            ("seq", args.seq, _dfdb_seq, "seq", "sequential create"),
            ("bulk", args.bulk, _dfdb_bulk, "bulk", f"bulk load {args.bulk:,}"),
        ):
            if case not in cases:
                continue
            d, r = [], []
            for _ in range(args.repeat):
                run = uuid.uuid4().hex[:8]
                d.append(await run_dfdb(spaces.url(f"bench-{run}"), run, n))
                if raw is not None:
                    name = spaces.remember(f"bench-raw-{run}")
                    await raw.prepare(name)
                    r.append(await _rate(n, getattr(raw, run_raw)(name, sample_values(n, run))))
                    if case == "bulk":
                        await raw.drop([name, f"bench-{run}"])
            print(_line(label, backend, "objects/s", d, r), flush=True)
        if "events" in cases and backend != "memory":
            dl: list[float] = []
            rl: list[float] = []
            for _ in range(args.repeat):
                run = uuid.uuid4().hex[:8]
                dl += await _dfdb_latency(spaces.url(f"bench-{run}"), run, args.events)
                if raw is not None:
                    rl += await raw.latency(spaces.remember(f"bench-raw-{run}"), args.events)
            for q in (0.5, 0.99):
                d, r = [_pct(dl, q)], [_pct(rl, q)] if rl else []
                print(_line(f"write->event p{q * 100:.0f}", backend, "ms", d, r), flush=True)
    finally:
        if raw is not None:
            await raw.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,redis,etcd,zookeeper")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--seq", type=int, default=1000)
    parser.add_argument("--bulk", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=400, help="events per run")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    for backend in [b for b in args.backends.split(",") if b]:
        with _servers([backend]) as urls:
            asyncio.run(_backend(backend, urls[backend], cases, args))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
