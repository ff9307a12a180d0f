"""The conformance suite in a third-party project, set up as the README tells driver authors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import dfdb

TOY_DRIVER = '''
from dfdb.drivers.memory import MemoryDriver


class ToyDriver(MemoryDriver):
    """The in-memory driver under a scheme of its own."""
'''

OWN_TEST = """
import pytest

import dfdb
from dfdb.testing.conformance import ConformanceItem


@pytest.mark.asyncio
async def test_own_async_test_uses_the_nb_fixture(nb: dfdb.NbApi) -> None:
    await nb.create(ConformanceItem(id="a", topic="t", n=1))
    assert (await nb.get(ConformanceItem, "a")).n == 1
"""


def _project(root: Path) -> Path:
    """A driver package ``toydb`` installed into ``root/site`` (its dist-info registers the
    ``toy`` scheme), and a project using it whose pytest runs in pytest-asyncio's strict mode."""
    site = root / "site"
    (site / "toydb").mkdir(parents=True)
    (site / "toydb" / "__init__.py").write_text("")
    (site / "toydb" / "driver.py").write_text(TOY_DRIVER)
    info = site / "toydb-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toydb\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dfdb.drivers]\ntoy = toydb.driver:ToyDriver\n")
    project = root / "project"
    (project / "tests").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        textwrap.dedent("""
        [tool.pytest.ini_options]
        asyncio_mode = "strict"
        asyncio_default_fixture_loop_scope = "function"
        filterwarnings = ["error"]
        dfdb_urls = ["toy://{name}"]
        """)
    )
    (project / "tests" / "conftest.py").write_text('pytest_plugins = ["dfdb.testing.plugin"]\n')
    (project / "tests" / "test_conformance.py").write_text("from dfdb.testing.suite import *  # noqa: F403\n")
    (project / "tests" / "test_own.py").write_text(OWN_TEST)
    return project


def test_conformance_suite_runs_in_a_third_party_project_in_strict_mode(tmp_path: Path) -> None:
    project = _project(tmp_path)
    dfdb_root = Path(dfdb.__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), str(dfdb_root)])
    selected = "create_and_get or watch_delivers or resume_from_stream_cursor or bad_ids or own_async"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-k", selected],
        cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"asyncio: mode=(Mode\.)?strict", output, re.IGNORECASE), output
    passed = [line for line in output.splitlines() if line.startswith("PASSED")]
    assert "PASSED tests/test_conformance.py::test_create_and_get[toy-asyncio]" in passed, output
    assert "PASSED tests/test_conformance.py::test_resume_from_stream_cursor[toy-asyncio]" in passed, output
    assert "PASSED tests/test_own.py::test_own_async_test_uses_the_nb_fixture[toy]" in passed, output
    assert len(passed) == 12, output  # 3 conformance tests, 8 bad ids, and the project's own
