"""Run the benchmark cases on every backend and write docs/benchmarks.md and docs/benchmarks.json.

Usage: python benchmarks/run.py [--quick] [--backends memory,sqlite,redis,etcd,zookeeper]
       [--repeat N] [--only cases|growth] [--growth-backends memory,sqlite]
       [--growth-sizes 10000,100000,1000000] [--update] [--out docs/benchmarks.md]
       [--json docs/benchmarks.json]

The cases and the raw baselines are described in ``dfdb.bench``; the servers are
started here on loopback (as the tests do). ``--quick`` is a smoke test, not a
measurement. The reports are rewritten after each backend; ``--update`` keeps the rows
not measured this time (from the JSON file), but measures redis again when its kept rows
read Redis replies otherwise than a run here would (``hiredis`` installed or removed).
Then the growth rows (``dfdb.bench.growth``: a FULL Replica's sync and memory at each of
``--growth-sizes`` on each of ``--growth-backends``) and their chart,
docs/benchmarks-growth.png (with matplotlib: ``pip install 'dfdb[bench]'``). ``--only``
runs one of the two parts. Unless ``--only growth``, it also runs the SQLite change-log
polling benchmark (``sqlite_polling.py``), unless ``--quick`` the TLS cost of the server
backends run (``tls_cost.py``), and with redis the Sentinel benchmark (``sentinel.py``:
min_replicas and failover); with ``--only growth --update`` their sections of the old
report stay.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

from growth_chart import chart

from dfdb.bench import (
    BACKENDS,
    GROWTH,
    NOTES,
    BenchResult,
    Sizes,
    load_results,
    load_versions,
    run_all,
    run_growth,
    write_reports,
)
from dfdb.bench import versions as machine_versions
from dfdb.bench.raw import default_redis_reading

HERE = Path(__file__).resolve().parent
PARTS = ("cases", GROWTH)
MACHINE = "\n## Machine and versions\n"


def _names(parser: argparse.ArgumentParser, option: str, text: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        parser.error(f"{option}: unknown backend(s) {', '.join(unknown)}; known: {', '.join(BACKENDS)}")
    return names


def _sizes(parser: argparse.ArgumentParser, text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(n.replace("_", "")) for n in text.split(",") if n.strip()}))
    except ValueError:
        parser.error(f"--growth-sizes takes numbers of ports separated by commas, not {text!r}")
    if not sizes or sizes[0] < 1:
        parser.error("--growth-sizes: each size must be at least 1")
    return sizes


def _tail(markdown: Path) -> str:
    """The sections another script appended to the report at ``markdown`` (after the machine)."""
    try:
        text = markdown.read_text()
    except OSError:
        return ""
    machine = text.find(MACHINE)
    after = text.find("\n## ", machine + len(MACHINE)) if machine >= 0 else -1
    return text[after:] if after >= 0 else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="the backends of the cases")
    parser.add_argument("--repeat", type=int, help="runs of each case (default 5; quick: 2)")
    parser.add_argument("--only", choices=PARTS, help="run only the cases or only the growth rows (default: both)")
    parser.add_argument("--growth-backends", default="memory,sqlite", help="the backends of the growth rows")
    parser.add_argument("--growth-sizes", help="ports held at each growth step (default 10000,100000,1000000)")
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks.md"))
    parser.add_argument("--json", default=None, help="default: --out with .json")
    parser.add_argument("--update", action="store_true", help="keep the rows of the JSON file not measured this time")
    args = parser.parse_args()
    backends = _names(parser, "--backends", args.backends) if args.only != GROWTH else []
    growing = _names(parser, "--growth-backends", args.growth_backends) if args.only != "cases" else []
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.repeat is not None:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    if args.growth_sizes is not None:
        sizes = dataclasses.replace(sizes, growth=_sizes(parser, args.growth_sizes))
    out = Path(args.out)
    json_path = Path(args.json) if args.json else out.with_suffix(".json")
    png = out.with_name(f"{out.stem}-growth.png")
    run = {"cases": backends, GROWTH: growing}
    kept: list[BenchResult] = []
    old: dict[str, str] = {}
    if args.update and json_path.exists():
        kept = [r for r in load_results(json_path) if r.backend not in run.get(r.part, [])]
        old = load_versions(json_path)
    reading, before = default_redis_reading(), old.get("redis parser")
    if reading and before and reading != before and any(r.backend == "redis" and r.part == "cases" for r in kept):
        if args.only == GROWTH:
            print(f"the kept redis rows read replies with {before}; a run now would use {reading}", file=sys.stderr)
        else:  # a client option changed: the raw baseline is measured again, with dfdb
            print(f"redis measured again: its kept rows read replies with {before}, now {reading}", file=sys.stderr)
            backends = [b for b in BACKENDS if b in {*backends, "redis"}]
            run["cases"] = backends
            kept = [r for r in kept if not (r.backend == "redis" and r.part == "cases")]
    tail = _tail(out) if args.update and args.only == GROWTH else ""
    info = machine_versions()
    cases: list[BenchResult] = []
    growth: list[BenchResult] = []
    said: set[str] = set()

    def write() -> None:
        for note in NOTES:  # how kept rows were measured, unless measured again
            if note not in info and note in old:
                info[note] = old[note]
        order = {b: i for i, b in enumerate(BACKENDS)}
        rows = sorted([*kept, *cases, *growth], key=lambda r: (r.part == GROWTH, order.get(r.backend, 99)))
        line = chart(rows, png)
        if line.startswith("No chart") and line not in said:
            said.add(line)
            print(line, file=sys.stderr)
        write_reports(rows, info, sizes, quick=args.quick, markdown=out, json_path=json_path, chart=line or None)
        if tail:
            with out.open("a") as f:
                f.write(tail)

    def cases_done(results: list[BenchResult], _info: dict[str, str]) -> None:
        cases[:] = results
        write()

    def growth_done(results: list[BenchResult]) -> None:
        growth[:] = results
        write()

    if backends:
        asyncio.run(run_all(backends, sizes, log=sys.stderr, done=cases_done, info=info))
    if growing:
        asyncio.run(run_growth(growing, sizes, log=sys.stderr, info=info, done=growth_done))
    if args.only == GROWTH:
        print(f"wrote {out} and {json_path}", file=sys.stderr)
        return 0
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
