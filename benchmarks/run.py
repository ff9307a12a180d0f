"""Run every benchmark and write docs/benchmarks.md.

Usage: python benchmarks/run.py [--quick] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CASES = [
    ("SQLite change-log polling", "sqlite_polling.py", [], ["--sizes", "2000", "--events", "100"]),
    ("Redis: dfdb against the raw client", "redis_vs_raw.py", [], ["--quick", "--repeat", "2"]),
    ("etcd: dfdb against the raw client", "cluster_vs_raw.py", ["--backend", "etcd"],
     ["--backend", "etcd", "--quick", "--repeat", "2"]),
    ("ZooKeeper: dfdb against the raw client", "cluster_vs_raw.py", ["--backend", "zookeeper"],
     ["--backend", "zookeeper", "--quick", "--repeat", "2"]),
]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    sections = [
        "# Benchmarks",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.platform()}"
        + (" — **quick mode: smoke test, not a measurement**" if args.quick else "")
        + ". Regenerate with `nox -s bench` (or `python benchmarks/run.py`).",
        "",
    ]
    failed = False
    for title, script, full, quick in CASES:
        cmd = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        print("running", " ".join(cmd[1:]), flush=True)
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        shown = " ".join([f"benchmarks/{script}", *(quick if args.quick else full)])
        sections += [f"## {title}", "", f"`python {shown}`", ""]
        if result.returncode != 0:
            failed = True
            sections += ["Failed:", "", "```", result.stderr.strip()[-2000:], "```", ""]
        else:
            sections += [result.stdout.strip(), ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(sections))
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
