"""The SQLite driver: persistence, several OS processes on one file, the change log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import dfdb
from dfdb.drivers.sqlite import SqliteDriver

HELPERS = Path(__file__).parent / "helpers"
sys.path.insert(0, str(HELPERS))

from sqlite_watcher import Obj  # noqa: E402


class Thing(dfdb.NbModel, table="sqlite_thing"):
    n: int = 0


def remove_database(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/dfdb.db"


async def test_data_survives_reopening_and_cursors_resume(db_url: str) -> None:
    async with dfdb.connect(db_url) as nb:
        await nb.create(Thing(id="a", topic="t"))
        cursor = (await nb.list(Thing)).cursor
    async with dfdb.connect(db_url) as nb:
        assert (await nb.get(Thing, "a")).version == 1
        await nb.patch(Thing, "a", n=2)
    async with dfdb.connect(db_url) as nb, nb.watch(Thing, since=cursor) as stream:
        ev = await asyncio.wait_for(anext(stream), 10)
        assert (ev.action, ev.id, ev.obj and ev.obj.version) == (dfdb.Action.UPDATE, "a", 2)


async def test_a_new_file_is_another_backend(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    async with dfdb.connect(url) as nb:
        await nb.create(Thing(id="a"))
        cursor = (await nb.list(Thing)).cursor
    remove_database(f"{tmp_path}/x.db")
    async with dfdb.connect(url) as nb, nb.watch(Thing, since=cursor) as stream:
        ev = await asyncio.wait_for(anext(stream), 10)
        assert ev.action == dfdb.Action.RESYNC


async def test_bounded_log_announces_loss(tmp_path: Path) -> None:
    async with dfdb.connect(f"sqlite:///{tmp_path}/x.db?log_size=10") as nb:
        cursor = (await nb.list(Thing)).cursor
        for i in range(600):  # the log is trimmed every 256 writes
            await nb.create(Thing(id=f"t{i}"))
        count = sqlite3.connect(f"{tmp_path}/x.db").execute("SELECT count(*) FROM dfdb_changelog").fetchone()[0]
        assert count < 600
        async with nb.watch(Thing, since=cursor) as stream:
            ev = await asyncio.wait_for(anext(stream), 10)
            assert ev.action == dfdb.Action.RESYNC


async def test_idle_poll_is_an_index_search(db_url: str, tmp_path: Path) -> None:
    async with dfdb.connect(db_url) as nb:
        await nb.create(Thing(id="a", topic="t"))
        driver = nb.driver
        assert isinstance(driver, SqliteDriver)
        for topics in (None, {"t"}, {"t", None}):
            sql, params = driver.changes_sql({"sqlite_thing", "other"}, topics)
            plan = sqlite3.connect(f"{tmp_path}/dfdb.db").execute("EXPLAIN QUERY PLAN " + sql, [0, *params]).fetchall()
            details = " | ".join(row[-1] for row in plan)
            assert "SEARCH dfdb_changelog USING INTEGER PRIMARY KEY (rowid>?)" in details, details
            # no table scan of the log or the entries; sqlite_sequence holds one row per
            # autoincrement table (one here), the other SCANs read the subquery's result
            assert "SCAN dfdb_changelog" not in details and "SCAN dfdb_entries" not in details, details


@pytest.mark.parametrize(
    ("url", "match"),
    [("sqlite://host/x.db", "path"), ("sqlite://", "path"), ("sqlite:///x.db?bogus=1", "bogus")],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(dfdb.InvalidURL, match=match):
        dfdb.connect(url)


async def test_unopenable_file_is_backend_unavailable(tmp_path: Path) -> None:
    with pytest.raises(dfdb.BackendUnavailableError, match="cannot open"):
        async with dfdb.connect(f"sqlite:///{tmp_path}/missing-dir/x.db", timeout=0.5):
            pass


async def test_writers_in_several_processes_lose_nothing(db_url: str) -> None:
    async with dfdb.connect(db_url) as nb:
        from sqlite_counter import Counter

        await nb.create(Counter(id="c"))
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, str(HELPERS / "sqlite_counter.py"), db_url, "100", stdout=subprocess.PIPE
            )
            for _ in range(3)
        ]
        outputs = [await asyncio.wait_for(p.communicate(), 120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0]
        assert (await nb.get(Counter, "c")).n == 300
        keys = [int(k) for out, _ in outputs for k in out.split()]
        assert len(keys) == 300 and len(set(keys)) == 300


class Watcher:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def read_until(self, marker: str, within: float = 30) -> list[str]:
        got: list[str] = []
        async with asyncio.timeout(within):
            while True:
                assert self.proc.stdout is not None
                raw = await self.proc.stdout.readline()
                assert raw, f"the watcher exited; last lines: {got[-5:]}"
                line = raw.decode().strip()
                got.append(line)
                if line == marker:
                    return got


async def test_two_processes_one_writes_one_watches(db_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HELPERS / "sqlite_watcher.py"), db_url, stdout=subprocess.PIPE
    )
    watcher = Watcher(proc)
    try:
        async with dfdb.connect(db_url) as nb:
            await watcher.read_until("READY")
            # phase 1: 1,000 changes, every one arrives once, in order, no RESYNC
            expected: list[tuple[str, str, int]] = []
            live: dict[str, Obj] = {}
            for n in range(1000):
                key = f"k{n % 37}"
                if key not in live:
                    live[key] = await nb.create(Obj(id=key, topic=f"t{n % 3}", n=n))
                    expected.append(("create", key, 1))
                elif n % 7 == 0:
                    await nb.delete(Obj, key)
                    expected.append(("delete", key, live.pop(key).version))
                else:
                    live[key] = await nb.update(live[key].model_copy(update={"n": n}))
                    expected.append(("update", key, live[key].version))
            await nb.create(Obj(id="marker-1"))
            lines = await watcher.read_until("SEEN marker-1")
            assert "RESYNC" not in lines
            events = [json.loads(line) for line in lines if line.startswith("{")]
            got = [(e["action"], e["id"], e["version"]) for e in events if not e["id"].startswith("marker-")]
            assert got == expected
            revisions = [e["revision"] for e in events]
            assert revisions == sorted(set(revisions))

            # phase 2: the watcher is paused while the log is trimmed past its cursor
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                for i in range(50):
                    await nb.patch(Obj, "k1", n=-i) if "k1" in live else await nb.create(Obj(id=f"x{i}"))
                await nb.delete(Obj, "k2")
                await nb.driver.compact()
                await nb.create(Obj(id="marker-2"))
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            lines = await watcher.read_until("SEEN marker-2")
            assert "RESYNC" in lines
            state_line = next(line for line in lines if line.startswith("STATE "))
            truth = {o.id: o.version for o in await nb.get_all(Obj)}
            assert json.loads(state_line[len("STATE ") :]) == truth

            # phase 3: a caught-up watcher gets no RESYNC when the log is trimmed
            await nb.driver.compact()
            await nb.create(Obj(id="marker-3"))
            lines = await watcher.read_until("SEEN marker-3")
            assert "RESYNC" not in lines
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


def test_cli_commands_share_the_default_file(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DFDB_URL"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dfdb", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )

    watch = subprocess.Popen(
        [sys.executable, "-m", "dfdb", "watch", "lswitch", "--count", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run("put", "lswitch", '{"id": "net1", "topic": "t1"}').returncode == 0
        assert (tmp_path / "dfdb.sqlite3").exists()
        got = run("get", "lswitch", "net1")
        assert got.returncode == 0 and json.loads(got.stdout)["id"] == "net1"
        # the watcher may have subscribed after that put: keep changing until it reports one
        for i in range(100):
            if watch.poll() is not None:
                break
            run("put", "lswitch", json.dumps({"id": "net1", "topic": "t1", "name": f"n{i}"}))
        out, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert watch.returncode == 0, err
    record = json.loads(out.splitlines()[0])
    assert record["table"] == "lswitch" and record["id"] == "net1"


def test_cli_unopenable_file_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dfdb",
            "--db",
            f"sqlite:///{tmp_path}/no/such/dir.db",
            "--timeout",
            "1",
            "ls",
            "lswitch",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot open" in result.stderr
