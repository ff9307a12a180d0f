"""The benchmark's growth part: memory read from the allocators, the chart with and without
matplotlib, the Redis raw client's reply parser, and ``run.py --only growth --update``."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dfdb.bench import BenchResult, Sizes, write_reports
from dfdb.bench.heap import ALLOCATOR, TRACEMALLOC, Heap, allocated_bytes
from dfdb.bench.raw import default_redis_reading, describe_redis, raw_client_for, redis_options
from dfdb.url import DatabaseURL

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"


def _chart_module() -> Any:
    """benchmarks/growth_chart.py, imported (a script beside run.py, not a module of the package)."""
    spec = importlib.util.spec_from_file_location("growth_chart", ROOT / "benchmarks" / "growth_chart.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _growth_rows() -> list[BenchResult]:
    rows = []
    for backend in ("memory", "sqlite"):
        for n, seconds in ((100, 0.01), (1000, 0.08)):
            rows.append(
                BenchResult(f"sync {n}", backend, "s", [seconds, seconds * 1.2], [], False, part="growth", objects=n)
            )
            rows.append(
                BenchResult(f"memory {n}", backend, "bytes", [300.0], [2000.0], False, 1.0, part="growth", objects=n)
            )
        rows.append(BenchResult("1000 / 100", backend, "s", [0.08], [0.01], False, 11.0, part="growth"))
    return rows


@pytest.mark.parametrize("method", [ALLOCATOR, TRACEMALLOC])
def test_heap_measures_what_a_block_keeps(method: str) -> None:
    """A block that keeps 20,000 objects of 1,000 bytes (20 MB) and drops 20 MB more is
    measured at about 20 MB by either method."""
    if method == ALLOCATOR and allocated_bytes() is None:
        pytest.skip("the allocator counters cannot be read here")
    heap = Heap(method)
    with heap.measure() as held:
        kept = [bytes(1000) + str(i).encode() for i in range(20_000)]
        dropped = [bytes(1000) + str(i).encode() for i in range(20_000)]
        del dropped
    assert 20_000_000 <= held[0] <= 22_000_000, held
    assert len(kept) == 20_000


def test_heap_falls_back_to_tracemalloc_while_tracing() -> None:
    """While ``tracemalloc`` traces, pymalloc's counters are not there: Heap says so."""
    import tracemalloc

    tracemalloc.start()
    try:
        assert allocated_bytes() is None
        assert Heap().method == TRACEMALLOC
    finally:
        tracemalloc.stop()


def test_the_chart_is_drawn_with_matplotlib(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "benchmarks-growth.png"
    line = _chart_module().chart(_growth_rows(), png)
    assert line.startswith("![") and line.endswith("(benchmarks-growth.png)")
    assert png.read_bytes().startswith(b"\x89PNG")


def test_no_chart_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without matplotlib the chart is skipped with a line saying so (no exception)."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an import of it fails
    png = tmp_path / "benchmarks-growth.png"
    line = _chart_module().chart(_growth_rows(), png)
    assert line.startswith("No chart: matplotlib is not installed") and "dfdb[bench]" in line
    assert not png.exists()
    assert _chart_module().chart([r for r in _growth_rows() if r.objects is None], png) == ""  # nothing to draw


async def test_the_raw_redis_client_reads_replies_as_it_is_told(tmp_path: Path) -> None:
    """The raw Redis client is given dfdb's parser and protocol; no server needed: they
    are read from a connection made, never connected."""
    from redis.asyncio.connection import _AsyncRESP2Parser, _AsyncRESP3Parser

    url = DatabaseURL.parse("redis://127.0.0.1:1/0")
    for options in (
        {"parser_class": _AsyncRESP2Parser, "protocol": 2},
        {"parser_class": _AsyncRESP3Parser, "protocol": None},
    ):
        raw: Any = raw_client_for(url, tmp_path, redis=options)
        await raw.open()
        try:
            assert redis_options(raw.client) == options and redis_options(raw.reader) == options
            said = describe_redis(raw.client)
        finally:
            await raw.close()
        assert said.startswith(f"redis-py's own in Python (`{options['parser_class'].__name__}`; `hiredis` is ")
        assert said.endswith(
            " over RESP2" if options["protocol"] == 2 else (" over RESP2", " over RESP3")
        )  # None: redis-py's


def test_only_growth_with_update_keeps_the_other_rows_and_sections(tmp_path: Path) -> None:
    """``--only growth --update`` measures the growth rows again and keeps the cases' rows,
    the growth rows of backends not run, and the sections appended after the report."""
    out = tmp_path / "benchmarks.md"
    old = [
        BenchResult("sequential create", "redis", "objects/s", [100.0], [200.0], target=0.8),
        BenchResult(
            "growth: Replica full sync of 100 ports", "memory", "s", [9.0], [], False, part="growth", objects=100
        ),
        BenchResult(
            "growth: Replica full sync of 100 ports", "sqlite", "s", [7.0], [], False, part="growth", objects=100
        ),
    ]
    info = {"Python": "3", "redis parser": "`hiredis` 9.9 over RESP3"}
    write_reports(old, info, Sizes(), quick=False, markdown=out, json_path=out.with_suffix(".json"))
    with out.open("a") as f:
        f.write("\n## SQLite change-log polling\n\nkept section\n")
    argv = [sys.executable, str(RUN), "--quick", "--only", "growth", "--update", "--growth-backends", "memory"]
    result = subprocess.run(
        [*argv, "--growth-sizes", "30,60", "--out", str(out)], capture_output=True, text=True, timeout=100, check=False
    )
    assert result.returncode == 0, result.stderr
    now = default_redis_reading()
    assert f"the kept redis rows read replies with `hiredis` 9.9 over RESP3; a run now would use {now}" in result.stderr
    rows = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [(r["case"], r["backend"], r["part"]) for r in rows] == [
        ("sequential create", "redis", "cases"),
        ("growth: Replica full sync of 30 ports", "memory", "growth"),
        ("growth: memory per cached port, 30 ports (raw: dict of models)", "memory", "growth"),
        ("growth: Replica full sync of 60 ports", "memory", "growth"),
        ("growth: memory per cached port, 60 ports (raw: dict of models)", "memory", "growth"),
        ("growth: full sync of 60 / of 30 ports (raw: the 30)", "memory", "growth"),
        ("growth: Replica full sync of 100 ports", "sqlite", "growth"),
    ]
    assert all(r["value"] > 0 for r in rows)
    text = out.read_text()
    assert "| sequential create | redis | objects/s | 100 | 200 | 0.50x | ≥ 0.8x **missed** |" in text
    assert "Replies parsed by `hiredis` 9.9 over RESP3 on both sides" in text  # how the kept redis rows were measured
    assert "| growth: Replica full sync of 60 ports | memory | s |" in text
    assert text.endswith("\n## SQLite change-log polling\n\nkept section\n") and text.count("kept section") == 1


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--growth-sizes", "10,lots"], "--growth-sizes takes numbers of ports separated by commas"),
        (["--growth-sizes", "0,10"], "--growth-sizes: each size must be at least 1"),
        (["--growth-backends", "memory,mongo"], "--growth-backends: unknown backend(s) mongo"),
        (["--only", "everything"], "argument --only: invalid choice"),
    ],
)
def test_run_refuses_bad_growth_options(tmp_path: Path, args: list[str], said: str) -> None:
    result = subprocess.run(
        [sys.executable, str(RUN), "--out", str(tmp_path / "b.md"), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and said in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "b.md").exists()
