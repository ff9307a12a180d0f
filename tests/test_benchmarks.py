"""The benchmarks still run (quick mode: a smoke test; no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dfdb.servers import EtcdServer, RedisServer, ZooKeeperServer
from dfdb.testing.servers import BACKENDS, skip_missing_server

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_run_in_quick_mode(tmp_path: Path) -> None:
    """Every case on every backend, the markdown table and the JSON file."""
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
    rows = json.loads((tmp_path / "benchmarks.json").read_text())["results"]
    counts = {b: sum(r["backend"] == b for r in rows) for b in ("memory", "sqlite", "redis", "etcd", "zookeeper")}
    assert counts == {"memory": 10, "sqlite": 8, "redis": 10, "etcd": 10, "zookeeper": 10}  # sqlite: no polling mode
    assert all(r["value"] > 0 for r in rows)
    assert all(r["raw"] for r in rows if r["backend"] in ("redis", "etcd", "zookeeper"))
