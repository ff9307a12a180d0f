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
    print(table(sorted(OUT.glob("*.json"))))
    return 1 if failed else 0


def table(files: list[Path]) -> str:
    """A markdown table of the runs kept in ``files``."""
    rows = [
        "| backend | controllers | objects | held per controller | cold start | steady p50 / p99"
        " | restart: converged, relists | history lost: converged, relists, at once"
        " | peak server CPU (cold / restart / history) | check |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for f in files:
        r = json.loads(f.read_text())
        s = r["scenarios"]
        cold, steady, restart, hist = (s.get(k, {}) for k in ("cold", "steady", "restart", "history"))
        held = cold.get("per_controller", {}).get("objects", {}).get("mean", "-")

        def cpu(d: dict[str, object]) -> str:
            return f"{d['peak_server_cpu_pct']}%" if d.get("peak_server_cpu_pct") is not None else "-"

        rows.append(
            f"| {r['backend']} | {r['config']['controllers']} | {r['objects']:,} | {held} "
            f"| {cold.get('converged_s', '-')} s | {steady.get('p50_ms', '-')} / {steady.get('p99_ms', '-')} ms "
            f"| {restart.get('converged_s', '-')} s, {restart.get('relists', '-')} "
            f"| {hist.get('converged_s', '-')} s, {hist.get('relists', '-')}, {hist.get('peak_relists_at_once', '-')} "
            f"| {cpu(cold)} / {cpu(restart)} / {cpu(hist)} "
            f"| {'ok' if r.get('ok') else 'FAILED'} ({s.get('check', {}).get('diverged', '-')} differ) |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
