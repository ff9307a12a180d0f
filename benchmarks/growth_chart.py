"""The growth chart of docs/benchmarks.md: a FULL Replica's sync seconds and its memory per
cached object against the ports held, per backend (``benchmarks/run.py`` draws it from the
growth rows; matplotlib comes with ``pip install 'dfdb[bench]'``)."""

from __future__ import annotations

from pathlib import Path

from dfdb.bench import BenchResult

COLOURS = {
    "memory": "tab:purple",
    "sqlite": "tab:green",
    "redis": "tab:red",
    "etcd": "tab:blue",
    "zookeeper": "tab:orange",
}

NO_MATPLOTLIB = (
    "No chart: matplotlib is not installed where this report was made (`pip install 'dfdb[bench]'`, then "
    "`python benchmarks/run.py --only growth --update` draws `{name}`)."
)


def series(rows: list[BenchResult], unit: str) -> dict[str, list[BenchResult]]:
    """The growth rows of one size in ``unit`` ("s": syncs, "bytes": memory), by backend, by size."""
    found: dict[str, list[BenchResult]] = {}
    for row in rows:
        if row.part == "growth" and row.objects is not None and row.unit == unit:
            found.setdefault(row.backend, []).append(row)
    return {backend: sorted(got, key=lambda r: r.objects or 0) for backend, got in found.items()}


def chart(rows: list[BenchResult], target: Path) -> str:
    """Draw ``rows``' growth rows into the PNG ``target``; returns the line the report shows
    (the image, or why there is none: no growth rows, or no matplotlib)."""
    syncs, memory = series(rows, "s"), series(rows, "bytes")
    if not syncs and not memory:
        return ""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator
    except ImportError:
        return NO_MATPLOTLIB.format(name=target.name)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = sorted({r.objects for got in (*syncs.values(), *memory.values()) for r in got if r.objects})
    for backend, got in syncs.items():
        colour = COLOURS.get(backend, "black")
        xs = [r.objects or 0 for r in got]
        ys = [r.value for r in got]
        spread = [
            [y - min(r.dfdb) for y, r in zip(ys, got, strict=True)],
            [max(r.dfdb) - y for y, r in zip(ys, got, strict=True)],
        ]
        left.errorbar(xs, ys, yerr=spread, fmt="o-", color=colour, capsize=3, label=backend)
        if len(xs) > 1 and ys[0] > 0:
            left.plot(xs, [ys[0] * x / xs[0] for x in xs], ":", color=colour, lw=1)
    for backend, got in memory.items():
        colour = COLOURS.get(backend, "black")
        xs = [r.objects or 0 for r in got]
        right.plot(xs, [r.value for r in got], "o-", color=colour, label=f"{backend}: Replica")
        plain = [(x, r.raw_value) for x, r in zip(xs, got, strict=True) if r.raw_value is not None]
        if plain:
            right.plot(*zip(*plain, strict=True), "s--", color=colour, mfc="none", label=f"{backend}: dict of models")
    left.set_title("FULL Replica sync (median; bars: lowest-highest)", fontsize=9)
    left.set_ylabel("seconds")
    left.set_yscale("log")
    left.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    left.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    left.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))
    right.set_title("memory per cached port", fontsize=9)
    right.set_ylabel("bytes per object")
    right.set_ylim(bottom=0)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("ports held")
        if sizes:
            ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.text(0.5, 0.005, "dotted: linear growth from a backend's smallest size", ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=90)
    plt.close(fig)
    return f"![FULL Replica sync seconds and memory per cached port against the ports held]({target.name})"
