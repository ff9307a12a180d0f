"""The conformance suite can fail: each injected fault makes the tests written against
it fail, and a lost reply (which the NbApi must absorb) fails none.

Each fault runs the whole suite in a subprocess against ``faulty://`` (over memory://)
and reads which tests failed from its JUnit report, so a fault that the suite stops
catching fails here by name. The runs, which mostly wait (a test that a fault fails waits
for its timeout), go on side by side: all start with the first test of this module.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfdb.testing import FAULTS

ROOT = Path(__file__).resolve().parent.parent

CATCHERS: dict[str, frozenset[str]] = {
    "drop": frozenset({"test_gap_free_list_then_watch_with_racing_writes"}),
    "reorder": frozenset({"test_per_key_order"}),
    "ignore_expect": frozenset(
        {
            "test_update_checks_version",
            "test_stale_copy_after_recreate_conflicts",
            "test_concurrent_read_update_loops_lose_nothing",
        }
    ),
    "trim": frozenset({"test_resume_from_stream_cursor", "test_resync_when_history_is_gone"}),
    "leak": frozenset(
        {
            "test_watch_delivers_create_update_delete",
            "test_multi_table_watch",
            "test_topic_filter",
            "test_stream_cancelled_mid_iteration_cleans_up",
        }
    ),
    "lose_reply": frozenset(),
}
"""Fault -> the conformance tests that must fail under it (at least these); none for
``lose_reply``, under which the whole suite must pass."""


class SuiteReport:
    """One run of the conformance suite: every test's outcome, from its JUnit report."""

    def __init__(self, returncode: int, junit: Path, output: str) -> None:
        self.returncode = returncode
        self.output = output
        self.outcomes: dict[str, str] = {}
        root = ET.parse(junit).getroot()
        for case in root.iter("testcase"):
            name = case.get("name", "").split("[", 1)[0]
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome = "failed"
                elif child.tag == "skipped" and outcome == "passed":
                    outcome = "skipped"
            if self.outcomes.get(name) != "failed":  # a parametrized test fails if any of its cases does
                self.outcomes[name] = outcome

    @property
    def failed(self) -> set[str]:
        return {name for name, outcome in self.outcomes.items() if outcome == "failed"}

    @property
    def passed(self) -> set[str]:
        return {name for name, outcome in self.outcomes.items() if outcome == "passed"}


class SuiteRun:
    """The conformance suite on ``url``, running in a subprocess of its own."""

    def __init__(self, url: str, folder: Path) -> None:
        folder.mkdir(parents=True)
        self.junit = folder / "junit.xml"
        self.stdout, self.stderr = folder / "stdout", folder / "stderr"
        with self.stdout.open("w") as stdout, self.stderr.open("w") as stderr:  # files: no pipe fills up
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-p",
                    "no:cacheprovider",
                    "-q",
                    "--timeout=60",
                    f"--junitxml={self.junit}",
                    str(ROOT / "tests" / "test_conformance.py"),
                    "--dfdb-url",
                    url,
                ],
                cwd=ROOT,
                stdout=stdout,
                stderr=stderr,
                text=True,
            )

    def report(self) -> SuiteReport:
        """Wait for the run to end; its report."""
        returncode = self.proc.wait(timeout=600)
        output = self.stdout.read_text()[-3000:] + self.stderr.read_text()[-2000:]
        assert self.junit.exists(), output
        return SuiteReport(returncode, self.junit, output)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def suite_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, SuiteRun]]:
    """The suite under each fault whose test is selected, all started at once (fault -> run)."""
    faults = set()
    for item in request.session.items:
        if isinstance(item, pytest.Function) and item.module is request.module:
            if item.originalname == "test_suite_catches_fault":
                faults.add(item.callspec.params["fault"])
            elif item.originalname == "test_suite_passes_when_replies_are_lost":
                faults.add("lose_reply")
    folder = tmp_path_factory.mktemp("faults")
    runs = {fault: SuiteRun(f"faulty://{{name}}?fault={fault}", folder / fault) for fault in sorted(faults)}
    try:
        yield runs
    finally:
        for run in runs.values():
            run.stop()


@pytest.mark.parametrize("fault", [f for f in FAULTS if CATCHERS.get(f)])
def test_suite_catches_fault(fault: str, suite_runs: dict[str, SuiteRun]) -> None:
    report = suite_runs[fault].report()
    assert report.returncode == 1, report.output
    missed = CATCHERS[fault] - report.failed
    assert not missed, f"fault {fault!r} no longer fails {sorted(missed)}; failed: {sorted(report.failed)}"
    assert report.passed, report.output  # the suite ran: the fault, not a broken run, failed those


def test_suite_passes_when_replies_are_lost(suite_runs: dict[str, SuiteRun]) -> None:
    report = suite_runs["lose_reply"].report()
    assert report.returncode == 0, report.output
    assert not report.failed
    caught = set().union(*CATCHERS.values())
    assert caught <= report.passed  # each catcher passes when its fault is absent


def test_every_fault_is_listed_here() -> None:
    assert set(CATCHERS) == set(FAULTS)
    assert [f for f in FAULTS if not CATCHERS[f]] == ["lose_reply"]
