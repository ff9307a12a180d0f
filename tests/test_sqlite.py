"""The SQLite driver: persistence, several OS processes on one file, the change log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import dfdb
from dfdb.drivers.base import ABSENT, ANY, Entry, PutRequest
from dfdb.drivers.sqlite import SqliteDriver
from dfdb.testing.faults import FaultyDriver
from dfdb.url import DatabaseURL

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
        with contextlib.closing(sqlite3.connect(f"{tmp_path}/x.db")) as db:
            count = db.execute("SELECT count(*) FROM dfdb_changelog").fetchone()[0]
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
            with contextlib.closing(sqlite3.connect(f"{tmp_path}/dfdb.db")) as db:
                plan = db.execute("EXPLAIN QUERY PLAN " + sql, [0, *params]).fetchall()
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


def write_file(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)


@pytest.mark.parametrize("case", ["missing directory", "not a database"])
async def test_an_unusable_file_fails_at_once(tmp_path: Path, case: str) -> None:
    if case == "missing directory":
        path, match = f"{tmp_path}/missing-dir/x.db", f"directory {tmp_path}/missing-dir does not exist"
    else:
        path, match = f"{tmp_path}/x.db", "not a database"
        write_file(path, b"this is no SQLite file, " * 100)
    started = time.monotonic()
    with pytest.raises(dfdb.ConfigurationError, match=match):
        async with dfdb.connect(f"sqlite:///{path}", timeout=10):
            pass
    assert time.monotonic() - started < 2  # not retried for the whole deadline


async def test_a_file_whose_write_lock_is_held_opens_and_reads(db_url: str, tmp_path: Path) -> None:
    async with dfdb.connect(db_url) as nb:
        await nb.create(Thing(id="a"))
    with locked(f"{tmp_path}/dfdb.db"):
        async with dfdb.connect(db_url, timeout=5) as nb:
            assert [t.id for t in await nb.get_all(Thing)] == ["a"]


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
    assert result.returncode == 2, result.stderr  # a wrong --db, like a wrong argument
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "does not exist" in result.stderr


# ---------------------------------------------------------------- locks, deadlines, threads
class Locker:
    """Another OS process holding the database's lock (tests/helpers/sqlite_locker.py)."""

    def __init__(self, path: str, mode: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPERS / "sqlite_locker.py"), path, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "LOCKED"

    def release(self) -> None:
        if self.proc.returncode is None:
            out, _ = self.proc.communicate("\n", timeout=30)
            assert out.strip() == "RELEASED"


@contextlib.contextmanager
def locked(path: str, mode: str = "write") -> Iterator[Locker]:
    locker = Locker(path, mode)
    try:
        yield locker
    finally:
        if locker.proc.poll() is None:
            locker.proc.kill()
            locker.proc.communicate()


def take_write_lock_at_once(path: str) -> None:
    """Fails unless nobody holds the file's write lock."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=0)) as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")


@pytest.mark.parametrize("cancel", ["asyncio.timeout", "anyio.fail_after", "NbApi timeout"])
async def test_a_write_cancelled_while_locked_leaves_no_damage(tmp_path: Path, cancel: str) -> None:
    path = f"{tmp_path}/x.db"
    async with dfdb.connect(f"sqlite:///{path}", timeout=0.5) as nb:
        await nb.create(Thing(id="before"))
        driver = nb.driver
        with locked(path) as locker:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                if cancel == "asyncio.timeout":
                    async with asyncio.timeout(0.3):
                        await driver.put("sqlite_thing", "a", None, b'{"id": "a", "version": 1}', ABSENT)
                elif cancel == "anyio.fail_after":
                    with anyio.fail_after(0.3):
                        await driver.put("sqlite_thing", "a", None, b'{"id": "a", "version": 1}', ABSENT)
                else:  # a write that cannot have landed is not an unknown outcome
                    with pytest.raises(dfdb.LockedError, match="was not applied") as caught:
                        await nb.create(Thing(id="a"))
                    assert not isinstance(caught.value, dfdb.OutcomeUnknownError)
                    raise caught.value
            assert time.monotonic() - started < 3  # the deadline, not the 10 s busy timeout
            locker.release()
        # the cancelled write did not happen, and nothing was left half-done: later
        # writes work, and nobody's lock is held any more
        with pytest.raises(dfdb.NotFoundError):
            await nb.get(Thing, "a")
        await nb.create(Thing(id="after"))
        await nb.patch(Thing, "before", n=1)
        take_write_lock_at_once(path)
        assert [t.id for t in await nb.get_all(Thing)] == ["after", "before"]


async def test_a_batch_refused_by_a_locked_database_is_not_an_unknown_outcome(tmp_path: Path) -> None:
    """A batch that found the database locked until its deadline wrote nothing: each of its
    writes is a LockedError, as a single write's is, not an OutcomeUnknownError."""
    path = f"{tmp_path}/x.db"
    async with dfdb.connect(f"sqlite:///{path}", timeout=0.5) as nb:
        before = await nb.create(Thing(id="before"))
        with locked(path) as locker:
            started = time.monotonic()
            created = await nb.create_many([Thing(id="a"), Thing(id="b")])
            updated = await nb.update_many([before.model_copy(update={"n": 1})])
            for outcome in [*created, *updated]:
                assert isinstance(outcome, dfdb.LockedError) and not isinstance(outcome, dfdb.OutcomeUnknownError)
                assert "was not applied" in str(outcome)
            assert time.monotonic() - started < 6
            locker.release()
        assert [t.id for t in await nb.get_all(Thing)] == ["before"]
        assert (await nb.get(Thing, "before")).n == 0


async def test_a_delete_refused_by_a_locked_database_is_a_locked_error(tmp_path: Path) -> None:
    """A delete that found the database locked until its deadline did nothing: it raises
    LockedError at that deadline, as a write does, not BackendUnavailableError after a retry."""
    path = f"{tmp_path}/x.db"
    async with dfdb.connect(f"sqlite:///{path}", timeout=0.5) as nb:
        await nb.create(Thing(id="a"))
        with locked(path) as locker:
            with pytest.raises(dfdb.LockedError, match="delete of sqlite_thing/a was not applied") as caught:
                await nb.delete(Thing, "a")
            assert not isinstance(caught.value, dfdb.OutcomeUnknownError)
            locker.release()
        assert [t.id for t in await nb.get_all(Thing)] == ["a"]


async def test_a_locked_database_honours_the_deadline(tmp_path: Path) -> None:
    path = f"{tmp_path}/x.db"
    with locked(path, "exclusive"):  # not even readable
        started = time.monotonic()
        with pytest.raises(dfdb.BackendUnavailableError, match="locked"):
            async with dfdb.connect(f"sqlite:///{path}", timeout=1):
                pass
        assert time.monotonic() - started < 3


def run_cli(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "dfdb", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


def test_cli_on_a_locked_file_is_one_line_within_the_timeout(tmp_path: Path) -> None:
    path = f"{tmp_path}/x.db"
    seconds = tmp_path / "seconds"  # the command's own time, its interpreter's start left out
    with locked(path, "exclusive"):
        timed = (str(HELPERS / "timed_cli.py"), str(seconds), "--db", f"sqlite:///{path}")
        result = subprocess.run(
            [sys.executable, *timed, "--timeout", "2", "ls", "lswitch"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "locked" in result.stderr, result.stderr
    assert float(seconds.read_text()) < 6  # the 2 s deadline, then a one-line error


def test_cli_with_a_tiny_timeout_ends(tmp_path: Path) -> None:
    created, _ = run_cli("--db", f"sqlite:///{tmp_path}/x.db", "put", "lswitch", '{"id": "a"}', cwd=tmp_path)
    assert created.returncode == 0, created.stderr  # ls reads an existing file (it refuses a missing one)
    for _ in range(3):
        result, _ = run_cli("--db", f"sqlite:///{tmp_path}/x.db", "--timeout", "1e-9", "ls", "lswitch", cwd=tmp_path)
        # it ends: done (a call already in the SQLite thread finishes) or one line, exit 1
        assert result.returncode in (0, 1), result.stderr
        assert len(result.stderr.strip().splitlines()) == result.returncode, result.stderr


def _new_threads_end(before: set[threading.Thread]) -> None:
    """Every thread started since ``before`` ends (daemon threads may idle a while:
    they never keep the process alive)."""
    for thread in set(threading.enumerate()) - before:
        if not thread.daemon:
            thread.join(10)
            assert not thread.is_alive(), f"thread left running: {thread.name}"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_no_thread_is_left_behind(tmp_path: Path, backend: str) -> None:
    path = f"{tmp_path}/x.db"

    async def scenario() -> None:
        # an open cut short by its deadline
        driver = SqliteDriver(DatabaseURL.parse(f"sqlite:///{path}"))
        with anyio.move_on_after(1e-9):
            await driver.open()
        await driver.aclose()
        # an open that fails on a locked file
        with locked(path, "exclusive"):
            driver = SqliteDriver(DatabaseURL.parse(f"sqlite:///{path}?busy_timeout=0.3"))
            with pytest.raises(dfdb.BackendTimeoutError, match="locked"):
                await driver.open()
            await driver.aclose()
        # a driver used and closed
        async with SqliteDriver(DatabaseURL.parse(f"sqlite:///{path}")) as driver:
            await driver.put("t", "a", None, b"1", ABSENT)

    before = set(threading.enumerate())
    anyio.run(scenario, backend=backend)
    _new_threads_end(before)


async def test_no_thread_is_left_behind_in_a_running_loop(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    for timeout in (1e-9, 1e-6, 1e-3):
        with contextlib.suppress(dfdb.BackendUnavailableError):
            async with dfdb.connect(f"sqlite:///{tmp_path}/x.db", timeout=timeout) as nb:
                await nb.get_all(Thing)
    # the event loop's idle worker threads are stopped with its main task; nothing else remains
    left = [t.name for t in set(threading.enumerate()) - before if t.name != "AnyIO worker thread"]
    assert left == []


# ---------------------------------------------------------------- trio
def test_the_driver_runs_under_trio(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteDriver(DatabaseURL.parse(f"sqlite:///{tmp_path}/x.db")) as driver:
            r1 = await driver.put("t", "a", "p", b"1", ABSENT)
            assert (await driver.get("t", "a")) == Entry("t", "a", "p", b"1", r1)
            outcomes = await driver.put_many(
                [PutRequest("t", "b", None, b"2", ABSENT), PutRequest("t", "a", "p", b"x", ABSENT)]
            )
            assert isinstance(outcomes[0], int) and isinstance(outcomes[1], dfdb.AlreadyExistsError)
            listing = await driver.list("t")
            assert sorted(e.id for e in listing.entries) == ["a", "b"] and listing.revision == outcomes[0]
            assert [await driver.allocate_unique_key("t") for _ in range(3)] == [1, 2, 3]
            deleted = await driver.delete("t", "b")
            assert deleted.revision > outcomes[0]
            batch = await driver.changes_after(0, {"t"}, None)
            assert [(ev.action, ev.id) for ev in batch.events] == [("create", "a"), ("create", "b"), ("delete", "b")]

    anyio.run(main, backend="trio")


# ---------------------------------------------------------------- malformed log rows
def insert_log_rows(path: str, *rows: tuple[str, str, str]) -> None:
    """Append change-log rows as another tool could: (table, id SQL, action)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=10)) as db:
        for table, id_sql, action in rows:
            db.execute(
                f"INSERT INTO dfdb_changelog (tbl, id, topic, action, value, at) VALUES (?, {id_sql}, NULL, ?, ?, 0)",
                (table, action, b"{}"),
            )


async def test_a_malformed_log_row_is_a_resync_not_a_dead_stream(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = f"{tmp_path}/dfdb.db"
    async with dfdb.connect(db_url) as nb, nb.watch(Thing) as stream:
        async with dfdb.Replica(nb, [Thing]) as replica:
            await replica.wait_synced()
            await nb.create(Thing(id="a"))
            insert_log_rows(path, ("sqlite_thing", "'x'", "frobnicate"))
            await nb.create(Thing(id="b"))
            insert_log_rows(path, ("sqlite_thing", "CAST(X'FF00' AS TEXT)", "update"))  # not UTF-8
            c = await nb.create(Thing(id="c"))

            got = []
            async with asyncio.timeout(10):
                while len(got) < 5:
                    ev = await anext(stream)
                    got.append((ev.action, ev.model, ev.id))
            assert got == [
                (dfdb.Action.CREATE, Thing, "a"),
                (dfdb.Action.RESYNC, Thing, ""),
                (dfdb.Action.CREATE, Thing, "b"),
                (dfdb.Action.RESYNC, Thing, ""),
                (dfdb.Action.CREATE, Thing, "c"),
            ]

            revision = dfdb.revision_of(c)
            assert revision is not None
            await asyncio.wait_for(replica.wait_for(revision), 10)
            assert sorted(t.id for t in replica.get_all(Thing)) == ["a", "b", "c"]
            assert replica.stats().resyncs == 2
            driver = nb.driver
            assert isinstance(driver, SqliteDriver)
            assert driver.malformed_records == 4  # two rows, read by two watchers
            await nb.create(Thing(id="d"))  # and it goes on
            ev = await asyncio.wait_for(anext(stream), 10)
            assert (ev.action, ev.id) == (dfdb.Action.CREATE, "d")
    warnings = [r.getMessage() for r in caplog.records if "unreadable change-log row" in r.getMessage()]
    assert any("revision 2 (table 'sqlite_thing', key 'x')" in w and "'frobnicate'" in w for w in warnings), warnings


# ---------------------------------------------------------------- value size
async def test_values_over_the_limit_are_refused(db_url: str) -> None:
    limit = SqliteDriver.max_value_size
    assert limit == 16 * 1024 * 1024
    async with dfdb.connect(db_url) as nb:
        driver = nb.driver
        big = b"x" * (limit + 1)
        with pytest.raises(ValueError, match="limit of 16,777,216 bytes"):
            await driver.put("t", "big", None, big, ABSENT)
        outcomes = await driver.put_many(
            [PutRequest("t", "a", None, b"1", ABSENT), PutRequest("t", "b", None, big, ABSENT)]
        )
        assert isinstance(outcomes[0], int) and isinstance(outcomes[1], ValueError)
        assert await driver.get("t", "big") is None and await driver.get("t", "b") is None
        assert (await driver.put("t", "max", None, b"y" * limit, ABSENT)) > outcomes[0]


async def test_text_that_is_not_utf8_is_a_value_error(db_url: str) -> None:
    async with dfdb.connect(db_url) as nb:
        with pytest.raises(ValueError, match="not UTF-8") as caught:
            await nb.driver.put("t", "\udcff", None, b"1", ABSENT)
        assert not isinstance(caught.value, UnicodeError)
        assert await nb.driver.get("t", "a") is None  # and the driver goes on


async def test_corruption_found_by_a_relist_is_told_as_corruption(tmp_path: Path) -> None:
    """A value corrupted without a change record (at a revision of its own), found when a
    RESYNC relists the scope: the Replica evicts it with a DELETE marked corrupt, never an
    ordinary delete. (A relist by keys trusts a revision to name one write: a value
    rewritten in place at its revision is read by a whole listing only.)"""
    path = f"{tmp_path}/x.db"
    async with dfdb.connect(f"faulty:///{path}?inner=sqlite") as nb:
        await nb.create(Thing(id="good"))
        await nb.create(Thing(id="bad"))
        async with dfdb.Replica(nb, [Thing]) as replica:
            events = replica.events()
            with contextlib.closing(sqlite3.connect(path, timeout=10)) as db, db:
                db.execute(
                    "UPDATE dfdb_entries SET value = ?, revision = revision + 1000 WHERE id = 'bad'",
                    (b'{"n": "many"}',),
                )
            driver = nb.driver
            assert isinstance(driver, FaultyDriver)
            assert await driver.cut(lose_history=True) == 1  # the stream comes back with a RESYNC
            probe = await nb.create(Thing(id="probe"))
            revision = dfdb.revision_of(probe)
            assert revision is not None
            await asyncio.wait_for(replica.wait_for(revision), 10)
            got = [await asyncio.wait_for(anext(events), 10) for _ in range(2)]
            assert sorted((e.action, e.id, e.corrupt) for e in got) == [
                (dfdb.Action.CREATE, "probe", False),
                (dfdb.Action.DELETE, "bad", True),
            ]
            assert replica.stats().corrupt == 1 and replica.get(Thing, "good") is not None
            await events.aclose()


@pytest.mark.parametrize(
    "damage",
    [
        "INSERT INTO dfdb_entries VALUES ('sqlite_thing', x'fffe', NULL, x'7b7d', 99)",
        "INSERT INTO dfdb_entries VALUES ('sqlite_thing', CAST(x'fffe' AS TEXT), NULL, x'7b7d', 99)",
        "UPDATE dfdb_entries SET revision = 'abc' WHERE id = 't3'",
    ],
    ids=["blob id", "id not UTF-8", "text revision"],
)
async def test_hostile_rows_in_a_checked_scope_are_contained(db_url: str, damage: str) -> None:
    """A row another program wrote with an id that is not text, or not UTF-8, or with a
    revision that is not a number: a Replica's checks (periodic ones too) go on and repair
    nothing, again and again."""
    async with dfdb.connect(db_url) as nb:
        await nb.create_many([Thing(id=f"t{i}") for i in range(5)])
        async with dfdb.Replica(nb, [Thing], check_interval=0.05) as replica:
            with sqlite3.connect(DatabaseURL.parse(db_url).path) as db:
                db.execute(damage)
            listed = {t.id for t in await nb.get_all(Thing)}  # the hostile row is skipped
            assert listed == {f"t{i}" for i in range(5) if "'abc'" not in damage or i != 3}
            for _ in range(2):
                report = await asyncio.wait_for(replica.check(settle=1), 10)
                assert report.complete and report.repaired == 0
            async with asyncio.timeout(10):
                while replica.stats().checks < 5:  # the periodic checks go on
                    await asyncio.sleep(0.05)
            assert replica.stats().repaired == 0 and len(replica) == 5


async def test_a_batch_does_what_the_same_puts_one_by_one_do(tmp_path: Path) -> None:
    """``put_many`` reads and writes in bulk: outcomes, revisions, entries and change log
    are those of the same puts applied one after another (a key twice in one batch sees
    its first write; refused writes take no revision)."""
    batch = [
        PutRequest("t", "new", "p", b"1", ABSENT),
        PutRequest("t", "old", "p", b"2", ABSENT),  # exists: AlreadyExistsError
        PutRequest("t", "new", "p", b"3", ANY),  # the batch's own first write, updated
        PutRequest("t", "new", "p", b"4", ABSENT),  # exists by now
        PutRequest("t", "old", "q", b"5", ANY),  # another topic: ValueError
        PutRequest("u", "old", None, b"6", ABSENT),  # another table, same id
        PutRequest("t", "\udcff", None, b"7", ABSENT),  # not UTF-8: fails alone
        PutRequest("t", "gone", "p", b"8", 1),  # absent: NotFoundError
        PutRequest("t", "old", "p", b"9", 1),  # stale revision: ConflictError
    ]
    logs, results = [], []
    for name in ("one-by-one", "batch"):
        async with SqliteDriver(DatabaseURL.parse(f"sqlite:///{tmp_path}/{name}.db")) as driver:
            first = await driver.put("t", "old", "p", b"0", ABSENT)
            await driver.put("t", "old", "p", b"0", first)
            if name == "batch":
                outcomes = await driver.put_many(batch)
            else:
                outcomes = []
                for w in batch:
                    try:
                        outcomes.append(await driver.put(w.table, w.id, w.topic, w.value, w.expect))
                    except (dfdb.DfdbError, ValueError) as exc:
                        outcomes.append(exc)
            results.append([o if isinstance(o, int) else type(o) for o in outcomes])
            changes = await driver.changes_after(0, {"t", "u"}, None)
            listing = {**{e.id: e for e in (await driver.list("t")).entries}, "u": (await driver.list("u")).entries}
            logs.append(([(e.action, e.table, e.id, e.value, e.revision) for e in changes.events], listing))
    assert results[0] == results[1] == [
        3, dfdb.AlreadyExistsError, 4, dfdb.AlreadyExistsError, ValueError, 5, ValueError, dfdb.NotFoundError,
        dfdb.ConflictError,
    ]  # fmt: skip
    assert logs[0] == logs[1]
    assert logs[1][0][2] == ("create", "t", "new", b"1", 3)
