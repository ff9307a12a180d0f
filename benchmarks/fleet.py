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
from typing import Any


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backends", default="redis,etcd")
    p.add_argument("--sizes", default="50,200")
    p.add_argument("--suffix", default="", help="added to each run's file name: BACKEND-N-SUFFIX.json")
    p.add_argument("--chart-only", action="store_true", help="only redraw the table and chart from the runs kept")
    p.add_argument("--runs", type=Path, default=OUT, help="where the runs' JSON is kept (default: docs/fleet)")
    p.add_argument("--chart", type=Path, default=CHART, help="the PNG drawn (default: docs/scale-chart.png)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options for every dfdb fleet run")
    args = p.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    failed = 0
    for backend in [] if args.chart_only else args.backends.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            target = args.runs / f"{backend}-{size}{'-' + args.suffix if args.suffix else ''}.json"
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
    runs = load(sorted(args.runs.glob("*.json")))
    print(table(runs))
    chart(runs, args.chart)
    print(f"chart: {args.chart}")
    return 1 if failed else 0


OUT = Path(__file__).resolve().parent.parent / "docs" / "fleet"
CHART = OUT.parent / "scale-chart.png"
COLOURS = {"redis": "#c0392b", "etcd": "#2471a3", "zk": "#1e8449"}
NAMES = {"zk": "zookeeper"}
SCENARIOS = (("cold", "cold start"), ("restart", "server restart"), ("history", "history lost"))
FIGURES = (("converged_s", "seconds until all converged"), ("peak_server_cpu_pct", "peak server CPU, % of a core"))
DEFAULT_PORTS = 20


def load(files: list[Path]) -> list[dict[str, Any]]:
    """The runs kept in ``files``, each with its file's name (``file``); a run with only
    some of the scenarios has only those."""
    runs = []
    for f in files:
        r = json.loads(f.read_text())
        r["file"] = f.name
        runs.append(r)
    return runs


def series(run: dict[str, Any]) -> str:
    """The line a run belongs to: its backend, and its database's shape when it is not the
    default (ports per tenant, tenants other than one per controller): the objects grow
    with the controllers along a line."""
    cfg = run["config"]
    name = NAMES.get(run["backend"], run["backend"])
    shape = []
    if cfg.get("ports", DEFAULT_PORTS) != DEFAULT_PORTS:
        shape.append(f"{cfg['ports']} ports per tenant")
    if cfg.get("tenants") and cfg["tenants"] != cfg["controllers"]:
        shape.append(f"{cfg['tenants']:,} tenants")
    return f"{name} ({', '.join(shape)})" if shape else name


def points(runs: list[dict[str, Any]], scenario: str, key: str) -> dict[tuple[str, str], list[tuple[int, float, bool]]]:
    """Per (backend, series), (controllers, figure, every controller converged) of the runs that
    measured it; a run without the scenario is no point. Of several runs of one series
    and size, the newest that measured it counts, one where every controller converged
    before one where some did not."""
    best: dict[tuple[str, str, int], tuple[tuple[bool, str, str], float, bool]] = {}
    for r in runs:
        d = r["scenarios"].get(scenario) or {}
        value = d.get(key)
        if value is None:
            continue
        whole = not d.get("not_converged")
        rank = (whole, r.get("started", ""), r["file"])
        where = (r["backend"], series(r), r["config"]["controllers"])
        if where not in best or best[where][0] <= rank:
            best[where] = (rank, float(value), whole)
    found: dict[tuple[str, str], list[tuple[int, float, bool]]] = {}
    for (backend, name, n), (_, value, whole) in best.items():
        found.setdefault((backend, name), []).append((n, value, whole))
    return {line: sorted(pts) for line, pts in found.items()}


def chart(runs: list[dict[str, Any]], target: Path) -> None:
    """A PNG of ``runs``: time to converge and the server's peak CPU (rows) at a cold
    start, a server restart and a history loss (columns) against the controllers, per
    backend and database shape. A dotted line from each series' smallest run shows where
    linear growth would be; an open marker is a run where some controllers did not
    converge (its time is the last one that did)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, grid = plt.subplots(len(FIGURES), len(SCENARIOS), figsize=(4.4 * len(SCENARIOS), 3.4 * len(FIGURES)))
    sizes = sorted({r["config"]["controllers"] for r in runs})
    for row, (key, what) in zip(grid, FIGURES, strict=True):
        for ax, (scenario, title) in zip(row, SCENARIOS, strict=True):
            found = points(runs, scenario, key)
            for (backend, name), pts in sorted(found.items()):
                colour = COLOURS.get(backend, "black")
                marker, style = ("s", "--") if "(" in name else ("o", "-")  # another database shape
                whole = [(n, v) for n, v, ok in pts if ok]
                if whole:
                    ax.plot(*zip(*whole, strict=True), marker + style, color=colour, label=name)
                partial = [(n, v) for n, v, ok in pts if not ok]
                if partial:
                    ax.plot(*zip(*partial, strict=True), marker, mfc="none", color=colour, label=f"{name}: not all")
                if key == "converged_s" and len(whole) > 1 and whole[0][1] > 0:
                    xs = [n for n, _ in whole]
                    ax.plot(xs, [whole[0][1] * n / xs[0] for n in xs], ":", color=colour, lw=1)
            ax.set_title(f"{title}: {what}", fontsize=9)
            ax.set_xlabel("controllers")
            ax.set_xscale("log")
            ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
            ax.minorticks_off()
            if key == "converged_s" and found:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
                ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))
            else:
                ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            if found:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no run", transform=ax.transAxes, ha="center", va="center", color="grey")
    fig.text(0.5, 0.005, "dotted: linear growth from a series' smallest run", ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(target, dpi=90)
    plt.close(fig)


def _n(value: Any, unit: str = "") -> str:
    """A figure with its unit, or ``-`` when the run did not measure it."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def _refused(s: dict[str, Any]) -> str:
    seen = [d["connections"]["refused"] for d in s.values() if isinstance(d, dict) and d.get("connections")]
    return "-" if not seen else ("yes" if any(seen) else "no")


def table(runs: list[dict[str, Any]]) -> str:
    """A markdown table of ``runs``: a scenario a run did not include is ``-``."""
    rows = [
        "| backend | controllers | tenants x ports | objects | held per controller | cold start"
        " | steady p50 / p99 | restart: converged, relists"
        " | history lost: converged, relists, at once, records read"
        " | peak server CPU (cold / restart / history) | connections refused | check | load average |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    order = sorted(runs, key=lambda r: (r["backend"], r["config"]["controllers"], r["objects"], r.get("started", "")))
    for r in order:
        s, cfg = r["scenarios"], r["config"]
        cold, steady, restart, hist = (s.get(k) or {} for k in ("cold", "steady", "restart", "history"))
        held = cold.get("per_controller", {}).get("objects", {}).get("mean")
        tenants = cfg.get("tenants") or cfg["controllers"]
        load = (r.get("load_average") or {}).get("start")

        def cpu(d: dict[str, Any]) -> str:
            return _n(d.get("peak_server_cpu_pct"), "%")

        def took(d: dict[str, Any]) -> str:
            if d.get("converged_s") is None:
                return "-"
            late = f" ({d['not_converged']:,} not)" if d.get("not_converged") else ""
            return f"{d['converged_s']} s{late}"

        steady_ms = f"{_n(steady.get('p50_ms'))} / {_n(steady.get('p99_ms'))} ms" if steady else "-"
        restart_fig = f"{took(restart)}, {_n(restart.get('relists'))}" if restart else "-"
        total = hist.get("records_read_total")
        if total is None and hist:
            total = hist.get("objects_relisted", 0) + hist.get("records_read", 0)
        hist_fig = (
            f"{took(hist)}, {_n(hist.get('relists'))}, {_n(hist.get('peak_relists_at_once'))}, {_n(total)}"
            if hist
            else "-"
        )
        check = s.get("check")
        verdict = f"{'ok' if r.get('ok') else 'FAILED'} ({_n(check['diverged'])} differ)" if check else "not run"
        rows.append(
            f"| {NAMES.get(r['backend'], r['backend'])} | {cfg['controllers']:,} | {tenants:,} x {cfg['ports']} "
            f"| {r['objects']:,} | {_n(held)} | {took(cold)} | {steady_ms} | {restart_fig} | {hist_fig} "
            f"| {cpu(cold)} / {cpu(restart)} / {cpu(hist)} | {_refused(s)} | {verdict} "
            f"| {_n(load[0]) if load else '-'} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
