"""Leases at their edges, in one process: what reaping costs a watcher, the ZooKeeper guard
checked against the holder's own deadline, and a hostile user of the lease, lock and
presence API."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest

import dfdb
from dfdb.drivers import ABSENT
from dfdb.drivers.sqlite import SqliteDriver
from dfdb.leases import guard_of
from dfdb.servers import EtcdServer, LocalServer, ZooKeeperServer
from dfdb.testing.plugin import fill_url
from watching import serve, stop

ZK_URL = "zk://{zookeeper}/{name}?bucket_size=100&keep=30&idle=1"


class EdgeItem(dfdb.NbModel, table="lease_edge_item"):
    n: int = 0


class Collector:
    """Reads a stream all the time (a stream reads its backend only while it is read)."""

    def __init__(self, stream: dfdb.ChangeStream) -> None:
        self.stream = stream
        self.events: list[dfdb.ChangeEvent] = []
        self.taken = 0
        self._arrived = anyio.Event()

    async def run(self) -> None:
        async for ev in self.stream:
            self.events.append(ev)
            self._arrived.set()

    async def next(self, within: float = 10) -> dfdb.ChangeEvent:
        with anyio.fail_after(within):
            while self.taken == len(self.events):
                self._arrived = anyio.Event()
                await self._arrived.wait()
        self.taken += 1
        return self.events[self.taken - 1]


@contextlib.asynccontextmanager
async def collected(nb: dfdb.NbApi) -> AsyncIterator[Collector]:
    async with nb.watch(EdgeItem) as stream, anyio.create_task_group() as tg:
        collector = Collector(stream)
        tg.start_soon(collector.run)
        yield collector
        tg.cancel_scope.cancel()


async def test_sqlite_watcher_reaps_only_when_a_lease_is_due(tmp_path: Path) -> None:
    """An idle SQLite watcher spends one statement per poll, also while a lease is held and
    not due; it reaps (and the expiry arrives) once one is due."""
    url = f"sqlite:///{tmp_path}/reap.db?poll_interval=0.02"
    async with dfdb.connect(url) as nb, dfdb.connect(url) as holder, collected(nb) as stream:
        driver = nb.driver
        assert isinstance(driver, SqliteDriver)
        statements: list[str] = []
        with driver._mutex:
            assert driver._db is not None
            driver._db.set_trace_callback(statements.append)

        async def polls(count: int) -> list[str]:
            """The statements of the watcher's next ``count`` polls."""
            start = len(statements)
            with anyio.fail_after(10):
                while sum("FROM dfdb_changelog" in s for s in statements[start:]) < count:
                    await anyio.sleep(0.01)
            return statements[start:]

        idle = await polls(10)
        assert all("FROM dfdb_changelog" in s for s in idle), idle  # nothing but the poll itself
        async with holder.lease(ttl=30) as kept:
            await holder.create(EdgeItem(id="kept"), lease=kept)
            assert (await stream.next()).id == "kept"
            held = await polls(10)
            assert all("FROM dfdb_changelog" in s for s in held), held  # a lease, none due: nothing more
            async with holder.lease(ttl=0.5, keepalive=False) as dying:
                await holder.create(EdgeItem(id="dying"), lease=dying)
                assert (await stream.next()).id == "dying"
                ev = await stream.next(within=5)  # the holder makes no call: the watcher reaps
                assert (ev.action, ev.id, ev.expired) == (dfdb.Action.DELETE, "dying", True)
                assert any("FROM dfdb_leases WHERE deadline <" in s for s in statements), "the watcher did not reap"
    with sqlite3.connect(f"{tmp_path}/reap.db") as db:
        plan = " | ".join(r[-1] for r in db.execute("EXPLAIN QUERY PLAN SELECT MIN(deadline) FROM dfdb_leases"))
    assert "dfdb_leases_deadline" in plan, plan  # the earliest deadline is an index search


async def test_zookeeper_watcher_reaps_only_when_a_lease_may_be_due(
    tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """A ZooKeeper watcher reads the leases only when one came, went or may be due: nothing
    while none exists or none is due; the expiry of one that is due still arrives."""
    url = fill_url(ZK_URL, tmp_path, request)
    caplog.set_level(logging.DEBUG, logger="aiozk.connection.payload")
    async with dfdb.connect(url) as nb, dfdb.connect(url) as holder, collected(nb) as stream:
        folder = f"{nb.driver.root}/le"  # type: ignore[attr-defined]

        def lease_reads() -> int:
            return sum(f"GetChildrenRequest(path={folder}," in r.getMessage() for r in caplog.records)

        await holder.create(EdgeItem(id="first"))
        assert (await stream.next()).id == "first"  # the watcher has run a round or more
        before = lease_reads()
        await anyio.sleep(0.8)  # more than the watcher's half-second reaping period
        assert lease_reads() == before, "the watcher read the leases while none exist"
        async with holder.lease(ttl=30) as kept:
            await holder.create(EdgeItem(id="kept"), lease=kept)
            assert (await stream.next()).id == "kept"
            with anyio.fail_after(5):
                while lease_reads() == before:  # the lease folder's watch fired: one round
                    await anyio.sleep(0.05)
            before = lease_reads()
            await anyio.sleep(0.8)
            assert lease_reads() == before, "the watcher read the leases while none is due"
            async with holder.lease(ttl=0.5, keepalive=False) as dying:
                await holder.create(EdgeItem(id="dying"), lease=dying)
                assert (await stream.next()).id == "dying"
                ev = await stream.next(within=0.5 + 2)
                assert (ev.action, ev.id, ev.expired) == (dfdb.Action.DELETE, "dying", True)


async def test_zookeeper_guarded_write_after_the_holder_s_deadline_is_not_sent(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A guard checked while valid, then kept past the lease's deadline with no reaper about
    (a holder paused between its check and its write): ZooKeeper still has the lease node,
    but the write is refused before it is sent, and nothing is written."""
    url = fill_url(ZK_URL, tmp_path, request)
    table = EdgeItem.__table__
    async with dfdb.connect(url) as nb, nb.lease(ttl=0.5, keepalive=False) as lease:
        guard = guard_of(nb, lease)
        assert guard is not None
        await anyio.sleep(0.6)  # the deadline passes; nobody watches, so nobody reaps
        assert await nb.driver._calls.exists(nb.driver._lease_path(lease.id)) is not None  # type: ignore[attr-defined]
        with pytest.raises(dfdb.LeaseLostError, match="deadline passed"):
            await nb.driver.put_bound(table, "late", None, b'{"id": "late"}', ABSENT, None, guard)
        assert await nb.driver.get(table, "late") is None


# ---------------------------------------------------------------- a hostile user


async def test_lock_timeout_must_be_a_duration() -> None:
    async with dfdb.connect("memory://") as nb:
        for timeout in (-1, float("nan"), "3", True):
            with pytest.raises(ValueError, match="timeout"):
                nb.lock("x", ttl=5, timeout=timeout)  # type: ignore[arg-type]
        async with nb.lock("x", ttl=5), nb.lock("y", ttl=5, timeout=0):
            with pytest.raises(dfdb.LockedError):
                async with nb.lock("x", ttl=5, timeout=0):
                    pytest.fail("a second holder")


async def test_presence_interval_must_be_a_duration() -> None:
    async with dfdb.connect("memory://") as nb:
        for interval in (float("nan"), float("inf"), "5", True, -1):
            with pytest.raises(ValueError, match="interval"):
                dfdb.publish_presence(nb, "svc", interval=interval)  # type: ignore[arg-type]


async def test_lock_names_that_are_hostile_ids(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Any valid id is a lock name, also where ZooKeeper refuses its characters in a path."""
    async with dfdb.connect(fill_url(ZK_URL, tmp_path, request)) as nb:
        for name in ("🔒", "\uf000", "%2F", "*", "[x]", "a\\b", "x" * 255, ".x", " "):
            with anyio.fail_after(10):
                async with nb.lock(name, ttl=5) as first:
                    await nb.put(EdgeItem(id="i", n=first.token), guard=first)
                async with nb.lock(name, ttl=5, timeout=5) as second:
                    assert second.token > first.token, name
        assert (await nb.get(EdgeItem, "i")).n == first.token


def lease_rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM dfdb_leases").fetchone()[0])


async def test_a_lease_revoked_before_use_is_never_granted(tmp_path: Path) -> None:
    async with dfdb.connect(f"sqlite:///{tmp_path}/r.db") as nb:
        lease = nb.lease(ttl=5)
        await lease.revoke()
        await lease.revoke()  # idempotent
        with pytest.raises(dfdb.DfdbError, match="revoked before"):
            async with lease:
                pytest.fail("a revoked lease was granted")
        async with nb.lease(ttl=5) as used:
            await used.revoke()
            await used.revoke()
        assert lease_rows(tmp_path / "r.db") == 0


async def test_a_lease_ends_with_its_nbapi(tmp_path: Path) -> None:
    """Closing the NbApi inside a lease's block ends the lease (reported through ``lost``)
    instead of failing the block, and the lease refuses further use clearly."""
    nb = dfdb.connect(f"sqlite:///{tmp_path}/c.db")
    async with nb, nb.lease(ttl=1.5) as lease:
        await nb.create(EdgeItem(id="a"), lease=lease)
        await nb.aclose()
        with anyio.fail_after(5):
            await lease.lost  # at the next keep-alive, not at the TTL's end
        assert lease.error is not None and "closed" in str(lease.error)
        with pytest.raises(dfdb.StreamClosedError):
            await lease.refresh()
    async with dfdb.connect(f"sqlite:///{tmp_path}/c.db") as again:
        with pytest.raises(dfdb.LeaseLostError):
            await again.create(EdgeItem(id="b"), lease=lease)
        with anyio.fail_after(5):
            while await again.get_all(EdgeItem):  # expired by the backend (the watchers' reaping)
                await again.driver.reap()
                await anyio.sleep(0.1)


async def test_cancelling_a_lease_block_at_every_await_leaves_nothing_behind(tmp_path: Path) -> None:
    """A task running ``async with nb.lease()`` cancelled at each of its awaits in turn: the
    cancellation goes through, and no lease, object or task is left behind (a lease granted
    for a caller cancelled meanwhile is revoked at once)."""
    url = f"sqlite:///{tmp_path}/x.db"
    async with dfdb.connect(url) as nb:
        tasks_before = len(asyncio.all_tasks())
        finished = 0
        for k in range(60):

            async def use(k: int = k) -> None:
                async with nb.lease(ttl=30) as lease:
                    await nb.create(EdgeItem(id=f"c{k}"), lease=lease)
                    await nb.put(EdgeItem(id=f"c{k}", n=1), lease=lease, guard=lease)

            task = asyncio.create_task(use())
            for _ in range(k):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
                finished += 1
            except asyncio.CancelledError:
                pass
            assert lease_rows(tmp_path / "x.db") == 0, f"a lease left behind when cancelled after {k} steps"
            assert await nb.get_all(EdgeItem) == [], f"an object left behind when cancelled after {k} steps"
            assert len(asyncio.all_tasks()) == tasks_before
        assert finished < 60  # the cancellations did land inside the block


async def test_status_against_an_empty_or_unreachable_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # a file with no dfdb tables yet
    for extra, expected in (((), "0 live services\n"), (("--json",), "[]\n")):
        code, out, err = await anyio.to_thread.run_sync(cli, ["--db", f"sqlite:///{empty}", "status", *extra])
        assert (code, err) == (0, "") and out.endswith(expected)
    started = anyio.current_time()
    code, out, err = await anyio.to_thread.run_sync(cli, ["--db", "redis://127.0.0.1:1/0", "--timeout", "1", "status"])
    assert code == 1 and out == "" and err.count("\n") == 1 and "127.0.0.1:1" in err, err
    assert anyio.current_time() - started < 15  # a time-out of 1 s and its retries, on a loaded machine


def cli(args: list[str]) -> tuple[int, str, str]:
    from dfdb.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("failing", [True, False], ids=["block-error", "no-error"])
async def test_a_failed_revoke_never_hides_the_block_s_own_error(tmp_path: Path, failing: bool) -> None:
    """Leaving a lease block while the database refuses the revoke (SQLite write-locked by
    another connection): the block's own error is what the caller sees (the lease ends by
    its TTL); a block that ended without an error is told that the revoke failed."""
    path = f"{tmp_path}/revoke.db"
    async with dfdb.connect(f"sqlite:///{path}?timeout=0.3") as nb:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=5)) as db:
            with pytest.raises(ValueError if failing else dfdb.DfdbError) as info:
                async with nb.lease(ttl=5) as lease:
                    await nb.create(EdgeItem(id="bound"), lease=lease)
                    db.execute("BEGIN IMMEDIATE")  # held while the block is left
                    if failing:
                        raise ValueError("the block's own error")
            db.execute("ROLLBACK")
        if failing:
            assert str(info.value) == "the block's own error"
        else:
            assert "revoke" in str(info.value)


@pytest.mark.parametrize("ending", ["block-error", "cancelled", "deadline", "no-error"])
async def test_a_failed_unlock_never_hides_the_block_s_own_error_or_cancellation(tmp_path: Path, ending: str) -> None:
    """Leaving a lock block while the database refuses the unlock (SQLite write-locked by
    another connection): the block's own error, its task's cancellation or the caller's
    anyio deadline is what the caller sees (the lock ends with its lease); a block that ended without an error is told
    that the unlock failed."""
    path = f"{tmp_path}/unlock.db"
    entered = asyncio.Event()

    async def hold(db: sqlite3.Connection) -> None:
        with anyio.fail_after(1) if ending == "deadline" else contextlib.nullcontext():
            async with nb.lock("edge", ttl=5):
                db.execute("BEGIN IMMEDIATE")  # held while the block is left
                if ending == "block-error":
                    raise ValueError("the block's own error")
                if ending in ("cancelled", "deadline"):
                    entered.set()
                    await asyncio.sleep(30)

    async with dfdb.connect(f"sqlite:///{path}?timeout=0.3") as nb:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=5)) as db:
            expected = {
                "block-error": ValueError,
                "cancelled": asyncio.CancelledError,
                "deadline": TimeoutError,
                "no-error": dfdb.DfdbError,
            }
            with pytest.raises(expected[ending]) as info:
                task = asyncio.create_task(hold(db))
                if ending == "cancelled":
                    await asyncio.wait_for(entered.wait(), 10)
                    task.cancel()
                await asyncio.wait_for(task, 10)
            db.execute("ROLLBACK")
    if ending == "block-error":
        assert str(info.value) == "the block's own error"
    elif ending == "deadline":
        assert type(info.value) is TimeoutError
    elif ending == "no-error":
        assert "unlock" in str(info.value)


async def test_a_guard_from_another_nbapi(tmp_path: Path) -> None:
    """A lock held through one NbApi guards writes through another of the same database while
    held, and refuses them once released; a guard of another database is refused."""
    url = f"sqlite:///{tmp_path}/g.db"
    async with dfdb.connect(url) as one, dfdb.connect(url) as two, dfdb.connect("memory://") as elsewhere:
        async with one.lock("g", ttl=5) as lock:
            await two.put(EdgeItem(id="a", n=lock.token), guard=lock)
        with pytest.raises(dfdb.LeaseLostError):
            await two.put(EdgeItem(id="a", n=99), guard=lock)
        with pytest.raises(ValueError, match="another database"):
            await elsewhere.put(EdgeItem(id="a"), guard=lock)
        assert [(o.id, o.n) for o in await one.get_all(EdgeItem)] == [("a", lock.token)]
        assert await elsewhere.get_all(EdgeItem) == []


@pytest.fixture(params=["etcd", "zookeeper"])
def own_server(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    """A server of this test's own, to stop with SIGSTOP (resumed before it is stopped)."""
    factory: Callable[[], LocalServer] = {"etcd": EtcdServer, "zookeeper": ZooKeeperServer}[request.param]
    for server in serve(factory):
        try:
            yield server
        finally:
            for index in range(len(server.processes)):
                server.resume(index)


async def test_lease_calls_to_a_server_that_stopped_answering_end_as_their_deadline_says(
    own_server: LocalServer, dfdb_leak_check: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Against a server stopped with SIGSTOP: a keep-alive that meets the holder's own
    deadline (the TTL, here shorter than the driver's time-out per call) ends the lease with
    LeaseLostError, never a bare CancelledError or TimeoutError, and the background
    keep-alive retries quietly until then. A grant stopped by the NbApi's deadline is a dfdb
    error; by the caller's anyio deadline, its TimeoutError (the grant runs to its end first,
    to revoke a lease granted meanwhile); by task.cancel(), the caller's CancelledError.
    Nothing is left behind once the server answers again."""
    url = f"{own_server.url}/lease-pause?timeout=5"

    async def grant() -> None:
        async with nb.lease(ttl=5):
            pass

    caplog.set_level(logging.WARNING, "dfdb.leases")
    async with dfdb.connect(url, timeout=1) as nb:
        async with nb.lease(ttl=2, keepalive=False) as lease, nb.lease(ttl=2) as kept:
            stop(own_server)
            try:
                with anyio.fail_after(5), pytest.raises(dfdb.LeaseLostError, match="not kept alive within its TTL"):
                    await lease.refresh()
                with anyio.fail_after(5):
                    await kept.lost
                assert isinstance(kept.error, dfdb.LeaseLostError)
                with anyio.fail_after(5), pytest.raises(dfdb.BackendUnavailableError):
                    await grant()
                with anyio.fail_after(5), pytest.raises(TimeoutError) as deadline:
                    with anyio.fail_after(0.3):
                        await grant()
                assert type(deadline.value) is TimeoutError
                task = asyncio.create_task(grant())
                await asyncio.sleep(0.3)
                task.cancel()
                with anyio.fail_after(5), pytest.raises(asyncio.CancelledError):
                    await task
            finally:
                own_server.resume()
        assert [r.getMessage() for r in caplog.records] == []
        assert await nb.get_all(EdgeItem) == []  # the server answers again
