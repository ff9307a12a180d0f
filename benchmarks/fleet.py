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
    p.add_argument("--chart-only", action="store_true", help="only redraw the table and chart from docs/fleet/")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options for every dfdb fleet run")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    failed = 0
    for backend in [] if args.chart_only else args.backends.split(","):
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
    runs = sorted(OUT.glob("*.json"))
    print(table(runs))
    chart(runs, CHART)
    print(f"chart: {CHART}")
    return 1 if failed else 0


CHART = OUT.parent / "scale-chart.png"
COLOURS = {"redis": "#c0392b", "etcd": "#2471a3", "zk": "#1e8449"}
PANELS = (
    ("cold start: seconds until all converged", "cold", "converged_s"),
    ("history lost: seconds until all converged", "history", "converged_s"),
    ("history lost: peak server CPU, % of a core", "history", "peak_server_cpu_pct"),
    ("cold start: peak server CPU, % of a core", "cold", "peak_server_cpu_pct"),
)


def points(files: list[Path], scenario: str, key: str) -> dict[str, list[tuple[int, float]]]:
    """Per backend, (controllers, figure) of every run in ``files`` that measured it."""
    found: dict[str, list[tuple[int, float]]] = {}
    for f in files:
        r = json.loads(f.read_text())
        value = r["scenarios"].get(scenario, {}).get(key)
        if value is not None:
            found.setdefault(r["backend"], []).append((r["config"]["controllers"], float(value)))
    return {b: sorted(p) for b, p in found.items()}


def chart(files: list[Path], target: Path) -> None:
    """A PNG of the runs in ``files``: time to converge (cold start, history lost) and the
    server's peak CPU against the controllers, per backend; a dotted line from each
    backend's smallest run shows where linear growth would be."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    sizes = sorted({json.loads(f.read_text())["config"]["controllers"] for f in files})
    for ax, (title, scenario, key) in zip(axes, PANELS, strict=True):
        for backend, pts in sorted(points(files, scenario, key).items()):
            colour = COLOURS.get(backend, "black")
            xs, ys = [n for n, _ in pts], [v for _, v in pts]
            ax.plot(xs, ys, "o-", color=colour, label=backend)
            if key == "converged_s" and len(pts) > 1 and ys[0] > 0:
                ax.plot(xs, [ys[0] * n / xs[0] for n in xs], ":", color=colour, label=f"{backend}: linear")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("controllers")
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_yscale("log" if key == "converged_s" else "linear")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target, dpi=90)
    plt.close(fig)


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
