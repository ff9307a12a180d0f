"""The fleet simulator at several sizes on each server backend (``nox -s fleet``).

Runs ``dfdb fleet --server BACKEND --controllers N`` for every backend and size given
(default: redis and etcd at 50 and 200 controllers), keeps each run's JSON in
``docs/fleet/BACKEND-N.json`` and prints one line per run. Extra arguments after ``--``
go to every run (``nox -s fleet -- --sizes 50,200,1000 --backends redis -- --ports 40``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    runs = sorted(OUT.glob("*.json"))
    print(table(runs))
    CHART.write_text(chart(runs))
    if shutil.which("convert"):  # ImageMagick: the PNG beside the SVG
        subprocess.run(["convert", str(CHART), str(CHART.with_suffix(".png"))], check=False)
    return 1 if failed else 0


CHART = OUT.parent / "scale-chart.svg"
COLOURS = {"redis": "#c0392b", "etcd": "#2471a3", "zk": "#1e8449"}


def chart(files: list[Path]) -> str:
    """An SVG chart of the runs in ``files``: time to converge after a history loss and at a
    cold start, and the server's peak CPU after a history loss, against the controllers."""
    runs: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for f in files:
        r = json.loads(f.read_text())
        runs.setdefault(r["backend"], []).append((r["config"]["controllers"], r["scenarios"]))
    panels = [
        ("history lost: seconds to converge", lambda s: s.get("history", {}).get("converged_s")),
        ("cold start: seconds to converge", lambda s: s.get("cold", {}).get("converged_s")),
        ("history lost: peak server CPU, %", lambda s: s.get("history", {}).get("peak_server_cpu_pct")),
    ]
    sizes = sorted({n for points in runs.values() for n, _ in points}) or [1]
    w, h, pad = 300, 220, 45
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * len(panels)}" height="{h + 30}" font-size="11">']
    for i, (title, pick) in enumerate(panels):
        x0 = i * w
        values = [v for points in runs.values() for _, s in points if (v := pick(s)) is not None]
        top = max(values, default=1) * 1.1 or 1

        def px(n: int, x0: int = x0) -> float:
            return x0 + pad + (w - 2 * pad) * (sizes.index(n) / max(len(sizes) - 1, 1))

        def py(v: float, top: float = top) -> float:
            return h - pad + 10 - (h - 2 * pad) * v / top

        out.append(f'<text x="{x0 + pad}" y="15" font-weight="bold">{title}</text>')
        out.append(
            f'<line x1="{x0 + pad}" y1="{h - pad + 10}" x2="{x0 + w - pad}" y2="{h - pad + 10}" stroke="black"/>'
        )
        out.append(f'<line x1="{x0 + pad}" y1="{pad - 10}" x2="{x0 + pad}" y2="{h - pad + 10}" stroke="black"/>')
        out.append(f'<text x="{x0 + 5}" y="{py(top / 1.1) + 4:.0f}">{top / 1.1:.0f}</text>')
        out.append(f'<text x="{x0 + 30}" y="{py(0) + 4:.0f}">0</text>')
        out += [f'<text x="{px(n) - 10:.0f}" y="{h - pad + 25}">{n}</text>' for n in sizes]
        out.append(f'<text x="{x0 + w / 2 - 30:.0f}" y="{h}">controllers</text>')
        for j, (backend, points) in enumerate(sorted(runs.items())):
            pts = [(px(n), py(v)) for n, s in sorted(points) if (v := pick(s)) is not None]
            colour = COLOURS.get(backend, "black")
            line = " ".join(f"{x:.0f},{y:.0f}" for x, y in pts)
            out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
            out += [f'<circle cx="{x:.0f}" cy="{y:.0f}" r="3" fill="{colour}"/>' for x, y in pts]
            out.append(f'<text x="{x0 + w - pad - 40}" y="{pad + 14 * j}" fill="{colour}">{backend}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


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
