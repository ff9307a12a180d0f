"""Run the benchmark cases on every backend and write docs/benchmarks.md and docs/benchmarks.json.

Usage: python benchmarks/run.py [--quick] [--backends memory,sqlite,redis,etcd,zookeeper]
       [--repeat N] [--update] [--out docs/benchmarks.md] [--json docs/benchmarks.json]

The cases and the raw baselines are described in ``dfdb.bench``; the servers are
started here on loopback (as the tests do). ``--quick`` is a smoke test, not a
measurement. The reports are rewritten after each backend; ``--update`` keeps the rows
of the backends not run this time (from the JSON file). Also runs the SQLite
change-log polling benchmark (``sqlite_polling.py``), unless ``--quick`` the TLS cost of
the server backends run (``tls_cost.py``), and with redis the Sentinel benchmark
(``sentinel.py``: min_replicas and failover).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

from dfdb.bench import BACKENDS, BenchResult, Sizes, load_results, run_all, write_reports

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--repeat", type=int, help="runs of each case (default 5; quick: 2)")
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks.md"))
    parser.add_argument("--json", default=None, help="default: --out with .json")
    parser.add_argument("--update", action="store_true", help="keep the other backends' rows of the JSON file")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(BACKENDS)}")
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.repeat is not None:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    out = Path(args.out)
    json_path = Path(args.json) if args.json else out.with_suffix(".json")
    kept = [r for r in load_results(json_path) if r.backend not in backends] if args.update else []

    def write(results: list[BenchResult], info: dict[str, str]) -> None:
        rows = sorted([*kept, *results], key=lambda r: BACKENDS.index(r.backend) if r.backend in BACKENDS else 99)
        write_reports(rows, info, sizes, quick=args.quick, markdown=out, json_path=json_path)

    asyncio.run(run_all(backends, sizes, log=sys.stderr, done=write))
    polling = [sys.executable, str(HERE / "sqlite_polling.py")]
    if args.quick:
        polling += ["--sizes", "2000", "--events", "100"]
    report = subprocess.run(polling, capture_output=True, text=True, check=True).stdout.strip()
    shown = " ".join(["benchmarks/sqlite_polling.py", *polling[2:]])
    with out.open("a") as f:
        f.write(f"\n## SQLite change-log polling\n\n`python {shown}`\n\n{report}\n")
    servers = [b for b in backends if b in ("redis", "etcd", "zookeeper")]
    if servers and not args.quick:  # the TLS cost: its own servers, plain and TLS-only
        tls = [sys.executable, str(HERE / "tls_cost.py"), "--backends", ",".join(servers)]
        if args.repeat is not None:
            tls += ["--repeat", str(args.repeat)]
        report = subprocess.run(tls, capture_output=True, text=True, check=True).stdout.strip()
        with out.open("a") as f:
            f.write(f"\n{report}\n")
    if "redis" in backends:
        sentinel = [sys.executable, str(HERE / "sentinel.py")]
        if args.quick:
            sentinel += ["--creates", "50", "--slices", "1", "--failovers", "0"]
        report = subprocess.run(sentinel, capture_output=True, text=True, check=True).stdout.strip()
        shown = " ".join(["benchmarks/sentinel.py", *sentinel[2:]])
        with out.open("a") as f:
            f.write(f"\n## Redis Sentinel: min_replicas and failover\n\n`python {shown}`\n\n{report}\n")
    writes = out.parent / "benchmarks-writes.md"
    if writes.exists():  # kept apart: a regeneration rewrites this report
        with out.open("a") as f:
            f.write(f"\nThe write path's changes, measured before and after: [{writes.name}]({writes.name}).\n")
    print(f"wrote {out} and {json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
