"""The benchmark report: its rows, the markdown table, the JSON file, the machine."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfdb.bench.raw import RAW
from dfdb.bench.workload import POLL_INTERVAL, Sizes
from dfdb.url import DatabaseURL

__all__ = ["NOTES", "BenchResult", "load_results", "load_versions", "render_markdown", "versions", "write_reports"]


@dataclass
class BenchResult:
    """One row of the report."""

    case: str
    backend: str
    unit: str
    dfdb: list[float]
    raw: list[float] = field(default_factory=list)
    higher_is_better: bool = True
    target: float | None = None
    """The ratio dfdb/raw aimed at (a floor when higher is better, else a ceiling)."""
    pooled: tuple[float, float | None] | None = None
    """Latency rows: the percentile over every event of every run (dfdb, raw); the
    samples are then the per-run percentiles, which give the spread."""
    part: str = "cases"
    """Which part of the benchmark made the row: ``"cases"`` (the five cases) or ``"growth"``."""
    objects: int | None = None
    """Growth rows of one size: the objects synced (``None`` elsewhere)."""

    @property
    def value(self) -> float:
        """dfdb's figure: the pooled percentile, else the median of the runs."""
        return self.pooled[0] if self.pooled is not None else statistics.median(self.dfdb)

    @property
    def raw_value(self) -> float | None:
        """The raw client's figure, or ``None`` without one."""
        if self.pooled is not None:
            return self.pooled[1]
        return statistics.median(self.raw) if self.raw else None

    @property
    def ratio(self) -> float | None:
        """dfdb's figure over raw's, or ``None`` without a raw figure."""
        raw = self.raw_value
        return None if not raw else self.value / raw

    @property
    def met(self) -> bool | None:
        """Whether the target is met (``None``: no target or no ratio)."""
        ratio = self.ratio
        if self.target is None or ratio is None:
            return None
        return ratio >= self.target if self.higher_is_better else ratio <= self.target

    def as_dict(self) -> dict[str, Any]:
        """The row with its samples, for the JSON report."""
        out = dataclasses.asdict(self)
        out.update(value=self.value, raw_value=self.raw_value, ratio=self.ratio, met=self.met)
        return out


def _figure(x: float, unit: str) -> str:
    if unit in ("ms", "s"):
        return f"{x:.3g}" if x < 100 else f"{x:,.0f}"
    return f"{x:,.0f}"


def _cell(row: BenchResult, raw: bool) -> str:
    samples = row.raw if raw else row.dfdb
    value = row.raw_value if raw else row.value
    if value is None or not samples:
        return "-"
    text = _figure(value, row.unit)
    if len(samples) > 1:
        text += f" ({_figure(min(samples), row.unit)} to {_figure(max(samples), row.unit)})"
    return text


def _target(row: BenchResult) -> str:
    if row.target is None or row.ratio is None:
        return ""
    bound = f"{'≥' if row.higher_is_better else '≤'} {row.target:g}x"
    met = row.met
    return bound if met is None else f"{bound} {'met' if met else '**missed**'}"


NOTES = ("redis parser", "growth memory")
"""Keys of the versions that describe how a part was measured: shown with that part, not
under the machine."""

_ALLOCATOR_TEXT = (
    "the allocators' own counters: pymalloc's bytes in allocated blocks (`sys._debugmallocstats`) plus "
    "the bytes glibc's `malloc` has in use (`mallinfo2`), each read after a full garbage collection. "
    "Unlike `tracemalloc`, which slows a million-port sync several times and takes gigabytes of its own, "
    "they cost the sync nothing, so that Replica is one of the timed runs; they count each block at its "
    "allocated size, so they read above what `tracemalloc` counts (the memory row of case 4): by 2 per cent "
    "for the dict of models and 8 to 10 for a Replica at 100,000 ports (smaller blocks, more rounding)"
)


def _table(rows: list[BenchResult]) -> list[str]:
    lines = [
        "| case | backend | unit | dfdb | raw | dfdb/raw | target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ratio = row.ratio
        lines.append(
            f"| {row.case} | {row.backend} | {row.unit} | {_cell(row, False)} | {_cell(row, True)} | "
            f"{'' if ratio is None else f'{ratio:.2f}x'} | {_target(row)} |"
        )
    return lines


def _raw_line(backend: str, versions: dict[str, str]) -> str:
    text = RAW.get(DatabaseURL.parse(versions.get(f"url {backend}", backend + "://")).scheme, "")
    if backend == "redis" and "redis parser" in versions:
        text += (
            f" Replies parsed by {versions['redis parser']} on both sides (the raw client is given the parser "
            "and protocol of dfdb's connections, read from them in the same run)."
        )
    return f"- **{backend}**: {text}"


def _growth_section(rows: list[BenchResult], sizes: Sizes, versions: dict[str, str], chart: str | None) -> list[str]:
    method = versions.get("growth memory", "")
    how = _ALLOCATOR_TEXT if method == "allocator counters" else f"`{method}`, in a sync of its own (not timed)"
    lines = [
        "## Growth",
        "",
        "A FULL Replica's sync as the ports grow (regenerate this part alone with "
        "`python benchmarks/run.py --only growth --update`). One namespace per backend grows through the sizes "
        "below: the LogicalPorts are added with `create_many` (not timed), then at each size "
        f"{sizes.repeat} Replicas sync it one after another, each on a connection of its own opened before the "
        "clock starts (the median, lowest-highest in brackets). Each `/` row divides a size's sync by the "
        "previous size's (its raw column); the target is 1.1 times the ratio of the sizes (≤ 11x for ten times "
        "the ports). Memory per cached port: what the first of those Replicas holds once synced, against the "
        f"same ports validated into a plain `dict` of models (target ≤ 1.0x), measured with {how}. On "
        "memory:// a Replica holds the in-process store's own entries, so its figure leaves out the stored "
        "values that the store keeps anyway.",
        "",
        *_table(rows),
        "",
    ]
    if chart:
        lines += [chart, ""]
    return lines


def render_markdown(
    results: list[BenchResult], *, sizes: Sizes, versions: dict[str, str], quick: bool, chart: str | None = None
) -> str:
    """The report: one table (case, backend, dfdb, raw, ratio, target), then the raw
    baselines, the growth rows (with ``chart``: the line that shows their chart) and the
    machine."""
    cases = [r for r in results if r.part != "growth"]
    growth = [r for r in results if r.part == "growth"]
    backends = list(dict.fromkeys(r.backend for r in cases))
    lines = [
        "# Benchmarks",
        "",
        "dfdb against the raw client of each backend, in one process, interleaved (dfdb, raw, dfdb, raw …), "
        f"{sizes.repeat} runs each: the median, with the lowest-highest run in brackets "
        "(latency: the percentile over every event, the per-run percentiles in brackets). "
        "Regenerate with `nox -s bench`; `dfdb bench --db URL` runs the same cases on a server of your own.",
        "",
    ]
    if quick:
        lines += ["**Quick mode: a smoke test with small sizes, not a measurement.**", ""]
    if cases:
        lines += [*_table(cases), "", "## Raw baselines", ""]
        lines += [_raw_line(b, versions) for b in backends]
        lines += [
            "",
            "Case 4's memory row measures, with `tracemalloc`, what a FULL Replica holding every port retains per "
            "object (store, indexes, revisions) against the same ports validated into a plain `dict` of models. "
            f"Case 3's polling rows poll every {POLL_INTERVAL} s and compare with the raw native stream. Case 5: "
            f"{sizes.controllers} controllers, each a SELECTIVE Replica of one topic, one connection, while "
            f"{sizes.fanout_writes:,} creates are spread over the topics; the row shows the most any controller "
            "read from the server (records, and bytes as the driver received them: keys, values, metadata) "
            "against what one topic holds.",
            "",
        ]
    if growth:
        lines += _growth_section(growth, sizes, versions, chart)
    lines += ["## Machine and versions", ""]
    lines += [f"- {k}: {v}" for k, v in versions.items() if not k.startswith("url ") and k not in NOTES]
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    """The machine, Python, the client libraries and the servers found here."""
    from importlib import metadata

    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "Python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    for dist in ("dfdb", "pydantic", "redis", "hiredis", "aetcd", "grpcio", "aiozk", "aiosqlite"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    for name, cmd in (("redis-server", ["redis-server", "--version"]), ("etcd", ["etcd", "--version"])):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
            out[name] = text.splitlines()[0] if text else "?"
    jars = sorted(Path("/usr/share/java").glob("zookeeper-[0-9]*.jar"))
    if jars:
        out["ZooKeeper"] = jars[0].stem.removeprefix("zookeeper-")
    import sqlite3

    out["SQLite"] = sqlite3.sqlite_version
    return out


def load_results(path: Path) -> list[BenchResult]:
    """The rows of a JSON report written by :func:`write_reports`."""
    rows = json.loads(path.read_text())["results"]
    names = {f.name for f in dataclasses.fields(BenchResult)}
    out = []
    for row in rows:
        fields = {k: v for k, v in row.items() if k in names}
        if fields.get("pooled") is not None:
            fields["pooled"] = tuple(fields["pooled"])
        out.append(BenchResult(**fields))
    return out


def load_versions(path: Path) -> dict[str, str]:
    """The versions of a JSON report written by :func:`write_reports` (empty without one)."""
    try:
        found = json.loads(path.read_text()).get("versions", {})
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def write_reports(
    results: list[BenchResult],
    info: dict[str, str],
    sizes: Sizes,
    *,
    quick: bool,
    markdown: Path | None,
    json_path: Path | None,
    chart: str | None = None,
) -> None:
    """The markdown report (docs/benchmarks.md) and the JSON file with every sample;
    ``chart`` is the growth section's line about its chart."""
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(render_markdown(results, sizes=sizes, versions=info, quick=quick, chart=chart))
    if json_path is None:
        return
    payload = {
        "quick": quick,
        "sizes": dataclasses.asdict(sizes),
        "versions": info,
        "results": [r.as_dict() for r in results],
    }
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
