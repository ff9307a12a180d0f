"""The conformance suite in a third-party project, set up as the README tells driver authors."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Collection
from pathlib import Path

import pytest

import dfdb
from dfdb.drivers import register_driver
from dfdb.drivers.base import EventSource, RawEvent
from dfdb.drivers.memory import MemoryDriver
from dfdb.testing.conformance import ConformanceItem

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


class _CreateAfterItsUpdate(EventSource):
    """A change source out of order: a create comes after the next change of its key."""

    def __init__(self, inner: EventSource) -> None:
        self._inner = inner
        self._held: list[RawEvent] = []

    async def __anext__(self) -> RawEvent:
        if self._held:
            return self._held.pop()
        event = await self._inner.__anext__()
        if event.action == "create":
            following = await self._inner.__anext__()
            if (following.table, following.id) == (event.table, event.id):
                event, following = following, event
            self._held.append(following)
        return event

    @property
    def position(self) -> int:
        return self._inner.position

    async def add_topics(self, topics: Collection[str | None], since: int) -> None:
        await self._inner.add_topics(topics, since)

    async def aclose(self) -> None:
        await self._inner.aclose()


class MisorderingDriver(MemoryDriver):
    """A third-party driver whose change stream delivers a key's create after its update."""

    async def watch(
        self, tables: Collection[str], topics: Collection[str | None] | None = None, since: int | None = None
    ) -> EventSource:
        return _CreateAfterItsUpdate(await super().watch(tables, topics, since))


register_driver("misordering", MisorderingDriver)


async def test_a_change_older_than_one_delivered_for_its_key_resyncs_its_table_and_topic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with dfdb.connect("misordering://out-of-order") as nb, nb.watch(ConformanceItem) as stream:
        created = await nb.create(ConformanceItem(id="a", topic="t1", n=1))
        updated = await nb.update(created.model_copy(update={"n": 2}))
        other = await nb.create(ConformanceItem(id="b", topic="t2", n=3))
        await nb.update(other.model_copy(update={"n": 4}))
        with caplog.at_level(logging.WARNING, logger="dfdb.events"):
            got = [await asyncio.wait_for(anext(stream), 5) for _ in range(4)]
    assert [(ev.action, ev.id, ev.topic) for ev in got] == [
        (dfdb.Action.UPDATE, "a", "t1"),
        (dfdb.Action.RESYNC, "", "t1"),  # in place of a's create
        (dfdb.Action.UPDATE, "b", "t2"),
        (dfdb.Action.RESYNC, "", "t2"),
    ]
    assert (got[1].revision, got[3].revision) == (got[0].revision - 1, got[2].revision - 1)  # the creates'
    assert got[0].obj == updated
    assert got[1].model is ConformanceItem and got[1].obj is None
    assert (stream.out_of_order, stream.resyncs, stream.duplicates) == (2, 2, 0)
    assert "'a' at revision" in caplog.text and "out of order" in caplog.text
