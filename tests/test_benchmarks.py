"""The benchmarks still run (quick mode: a smoke test; no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dfdb.testing.servers import RedisServer, require_servers

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_run_in_quick_mode(tmp_path: Path) -> None:
    if not RedisServer.available() and not require_servers():
        pytest.skip("redis-server is not installed")
    out = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = out.read_text()
    assert "| sequential create (ops/s) |" in text
    assert "| objects | idle poll |" in text
