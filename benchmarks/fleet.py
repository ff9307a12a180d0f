"""The fleet simulator at several sizes on each server backend (``nox -s fleet``).

Runs ``dfdb fleet --server BACKEND --controllers N`` for every backend and size given
(default: redis and etcd at 50 and 200 controllers), keeps each run's JSON in
``docs/fleet/BACKEND-N.json`` and prints one line per run. Extra arguments after ``--``
go to every run (``nox -s fleet -- --sizes 50,200,1000 --backends redis -- --ports 40``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "fleet"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backends", default="redis,etcd")
    p.add_argument("--sizes", default="50,200")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options for every dfdb fleet run")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    failed = 0
    for backend in args.backends.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            target = OUT / f"{backend}-{size}.json"
            command = [sys.executable, "-m", "dfdb", "fleet", "--server", backend, "--controllers", str(size)]
            command += [*[a for a in args.rest if a != "--"], "--json", str(target)]
            print("$", " ".join(command[1:]), flush=True)
            done = subprocess.run(command, check=False)
            failed += done.returncode != 0
            if target.exists():
                figures = json.loads(target.read_text())
                scen = figures["scenarios"]
                times = ", ".join(f"{k} {v['converged_s']}s" for k, v in scen.items() if "converged_s" in v)
                print(f"{backend:6} {size:5}: converged: {times}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
