"""The benchmarks still run (quick mode: a smoke test; no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dfdb.servers import EtcdServer, RedisServer, ZooKeeperServer
from dfdb.testing.servers import BACKENDS, skip_missing_server

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_run_in_quick_mode(tmp_path: Path) -> None:
    """Every case on every backend, the growth rows on memory:// and SQLite, the markdown
    table, the JSON file and the growth chart (or the line saying why there is none)."""
    import json

    for server in (RedisServer, EtcdServer, ZooKeeperServer):
        if not server.available():
            skip_missing_server(BACKENDS[server])
    out = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = out.read_text()
    for backend in ("memory", "sqlite", "redis", "etcd", "zookeeper"):
        assert f"| sequential create | {backend} | objects/s |" in text
        assert f"| write->event p99 | {backend} | ms |" in text
    assert "| objects | idle poll |" in text
    assert "| sequential create, min_replicas=1 | objects/s |" in text
    assert "- **redis**: `redis.asyncio` on one connection" in text and "Replies parsed by " in text
    report = json.loads((tmp_path / "benchmarks.json").read_text())
    rows = report["results"]
    cases = [r for r in rows if r["part"] == "cases"]
    counts = {b: sum(r["backend"] == b for r in cases) for b in ("memory", "sqlite", "redis", "etcd", "zookeeper")}
    assert counts == {"memory": 10, "sqlite": 8, "redis": 10, "etcd": 10, "zookeeper": 10}  # sqlite: no polling mode
    assert all(r["value"] > 0 for r in rows)
    assert all(r["raw"] for r in cases if r["backend"] in ("redis", "etcd", "zookeeper"))
    assert report["versions"]["redis parser"] in text
    # growth: 100 then 1,000 ports (quick), on memory:// and SQLite (the default)
    growth = {(r["backend"], r["case"]): r for r in rows if r["part"] == "growth"}
    for backend in ("memory", "sqlite"):
        for n in ("100", "1,000"):
            sync = growth.pop((backend, f"growth: Replica full sync of {n} ports"))
            assert len(sync["dfdb"]) == 2 and sync["value"] > 0
            memory = growth.pop((backend, f"growth: memory per cached port, {n} ports (raw: dict of models)"))
            assert memory["value"] > 0 and memory["raw_value"] > 0 and memory["target"] == 1.0
            assert f"| growth: Replica full sync of {n} ports | {backend} | s |" in text
        ratio = growth.pop((backend, "growth: full sync of 1,000 / of 100 ports (raw: the 100)"))
        assert ratio["ratio"] > 0 and ratio["target"] == 11.0
    assert growth == {}
    assert "## Growth" in text and "measured with the allocators' own counters" in text
    if (tmp_path / "benchmarks-growth.png").exists():
        assert "(benchmarks-growth.png)" in text
    else:
        assert "No chart: matplotlib is not installed" in text
