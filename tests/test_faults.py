"""The conformance suite can fail: each injected fault makes it fail, and a lost
reply (which the NbApi must absorb) does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dfdb.testing import FAULTS

ROOT = Path(__file__).resolve().parent.parent

CAUGHT = [f for f in FAULTS if f != "lose_reply"]


def run_suite(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "--timeout=60",
            *extra,
            str(ROOT / "tests" / "test_conformance.py"),
            "--dfdb-url",
            url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize("fault", CAUGHT)
def test_suite_catches_fault(fault: str) -> None:
    result = run_suite(f"faulty://{{name}}?fault={fault}", "-x")
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    assert result.returncode == 1, f"the suite did not fail against fault {fault!r}: {summary}"
    assert "failed" in summary or "error" in summary, summary


def test_suite_passes_when_replies_are_lost() -> None:
    result = run_suite("faulty://{name}?fault=lose_reply")
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout


def test_every_fault_is_listed_here() -> None:
    assert set(CAUGHT) | {"lose_reply"} == set(FAULTS)
