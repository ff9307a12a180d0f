"""The write and event cases alone (sequential create, bulk load, write->event latency),
dfdb interleaved with the raw client in one process, on chosen backends.

Usage: python benchmarks/writes.py [--backends sqlite,redis,etcd,zookeeper]
       [--cases seq,bulk,events] [--seq N] [--bulk N] [--events N] [--repeat N]

The same dfdb and raw code as ``benchmarks/run.py`` (``dfdb.bench``), at sizes of your
choice and without the read cases: a quick way to profile one backend and case. Prints
one line per case: dfdb and raw medians (lowest-highest) and their ratio.

On ZooKeeper, a dfdb create is one ``multi`` with its change-log entry, so the sequential
create is also compared with a raw two-operation ``multi`` (a bare create and a sequential
create of a log node), and the events case also counts the requests one write and its
event cost (writer and stream share the connection).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from dfdb.bench.cases import _dfdb_bulk, _dfdb_latency, _dfdb_seq, _pct, _rate, local_servers
from dfdb.bench.raw import raw_client_for
from dfdb.bench.workload import Namespaces, sample_port, sample_values
from dfdb.connecting import connect
from dfdb.models import LogicalPort
from dfdb.url import DatabaseURL

CASES = ("seq", "bulk", "events")


def _line(case: str, backend: str, unit: str, d: list[float], r: list[float]) -> str:
    def show(xs: list[float]) -> str:
        return f"{statistics.median(xs):,.4g} ({min(xs):,.4g}-{max(xs):,.4g})" if xs else "-"

    ratio = f"{statistics.median(d) / statistics.median(r):.2f}x" if d and r else ""
    return f"{backend:9s} {case:18s} {unit:9s} dfdb {show(d):32s} raw {show(r):32s} {ratio}"


async def _zk_multi_seq(client: Any, run: str, values: list[bytes]) -> None:
    """The raw baseline of a dfdb create on ZooKeeper: one ``multi`` per object of a bare
    create and a sequential create of a log node holding the same value."""
    await client.ensure_path(f"/{run}/log")
    for i, v in enumerate(values):
        txn = client.begin_transaction()
        txn.create(f"/{run}/{i}", v)
        txn.create(f"/{run}/log/c", v, sequential=True)
        await txn.commit()


async def _zk_requests(url: DatabaseURL, run: str, n: int) -> dict[str, float]:
    """Requests sent per update and its event (the write, its pre-reads and the stream's
    reads and re-arming; a background re-read or lease round falls in too), by type."""
    counts: Counter[str] = Counter()
    async with connect(url) as nb:
        calls = nb.driver._calls  # type: ignore[attr-defined]
        obj = await nb.create(sample_port(0, run))
        async with nb.watch(LogicalPort) as stream:
            send = calls.send

            async def counting(request: Any, check: Any = None) -> Any:
                counts[type(request).__name__] += 1
                return await send(request, check)

            calls.send = counting
            try:
                for i in range(n):
                    event = asyncio.ensure_future(anext(stream))
                    obj = await nb.update(obj.model_copy(update={"name": str(i)}))
                    await asyncio.wait_for(event, 30)
            finally:
                calls.send = send
    return {name: count / n for name, count in counts.most_common()}


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
            d, r, rm = [], [], []
            for _ in range(args.repeat):
                run = uuid.uuid4().hex[:8]
                d.append(await run_dfdb(spaces.url(f"bench-{run}"), run, n))
                if raw is not None:
                    name = spaces.remember(f"bench-raw-{run}")
                    await raw.prepare(name)
                    r.append(await _rate(n, getattr(raw, run_raw)(name, sample_values(n, run))))
                    if case == "bulk":
                        await raw.drop([name, f"bench-{run}"])
                    elif backend == "zookeeper":
                        name = spaces.remember(f"bench-rawm-{run}")
                        await raw.prepare(name)
                        values = sample_values(n, run)
                        rm.append(await _rate(n, _zk_multi_seq(raw.client, name, values)))  # type: ignore[attr-defined]
            print(_line(label, backend, "objects/s", d, r), flush=True)
            if rm:
                print(_line("create vs 2-op multi", backend, "objects/s", d, rm), flush=True)
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
            if backend == "zookeeper":
                per = await _zk_requests(spaces.url(f"bench-req-{uuid.uuid4().hex[:8]}"), "req", 200)
                shown = ", ".join(f"{name.removesuffix('Request')} {count:.2f}" for name, count in per.items())
                print(f"{backend:9s} requests per write->event: {shown}", flush=True)
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
        with local_servers([backend]) as urls:
            asyncio.run(_backend(backend, urls[backend], cases, args))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
