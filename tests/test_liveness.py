"""Liveness with real processes: a lease holder killed with ``kill -9``, a lock holder paused
past its TTL, contending lock holders, and leases held through server faults (a restart, an
etcd leader kill, a ZooKeeper session expiry) (tests/helpers/lease_holder.py in other processes).

The ``kill -9`` test runs on SQLite in the default suite; on every backend, and the longer
tests, with ``DFDB_LIVENESS=1`` (``nox -s liveness``), which also measures and prints the
expiry delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import random
import signal
import statistics
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import dfdb
from dfdb.servers import EtcdServer, LocalServer, RedisServer, ZooKeeperServer
from dfdb.testing.plugin import fill_url
from watching import serve

HELPER = Path(__file__).parent / "helpers" / "lease_holder.py"
FULL = bool(os.environ.get("DFDB_LIVENESS"))
SLACK = 2.0
"""Seconds after the TTL by which an expiry must have reached every watcher."""

URLS = {
    "sqlite": "sqlite:///{tmp}/{name}.db",
    "redis": "redis://{redis}/0?prefix={name}",
    "etcd": "etcd://{etcd}/{name}",
    "zookeeper": "zk://{zookeeper}/{name}?bucket_size=100&keep=30&idle=1",
}
TTL = {"etcd": 2.0}  # etcd's shortest lease (2 s with its default election timeout)

liveness = pytest.mark.skipif(not FULL, reason="long liveness runs: DFDB_LIVENESS=1 (nox -s liveness)")


class LiveItem(dfdb.NbModel, table="liveness_item"):
    n: int = 0
    tokens: tuple[int, ...] = ()


@pytest.fixture(params=sorted(URLS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return fill_url(URLS[backend], tmp_path, request)


class Holder:
    """One helper process; its output read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, *args: object) -> Holder:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HELPER),
            url,
            *map(str, args),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def line(self, within: float = 30) -> str:
        assert self.proc.stdout is not None
        with anyio.fail_after(within):
            return (await self.proc.stdout.readline()).decode().strip()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


@pytest.fixture
async def holders() -> AsyncIterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        await holder.stop()


DELAYS: dict[str, list[float]] = {}


async def test_killed_holder_s_objects_expire_for_every_watcher(
    backend: str, url: str, holders: list[Holder], capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 of a holder: its objects are deleted within TTL + 2 s, seen by a watcher and
    a FULL Replica of this process as expiry deletes, in order; nothing else is lost.
    SQLite in the default suite, every backend with ``DFDB_LIVENESS=1``."""
    if backend != "sqlite" and not FULL:
        pytest.skip("the server backends run with DFDB_LIVENESS=1 (nox -s liveness)")
    ttl = TTL.get(backend, 1.0)
    async with dfdb.connect(url) as nb, dfdb.Replica(nb, [LiveItem]) as replica:
        await replica.wait_synced()
        replica_events = replica.events()
        async with nb.watch(LiveItem) as stream:
            holder = await Holder.start(url, "hold", ttl, 3)
            holders.append(holder)
            assert await holder.line() == "READY"
            created = [await anext(stream) for _ in range(3)]
            assert [(ev.action, ev.id) for ev in created] == [(dfdb.Action.CREATE, f"h{i}") for i in range(3)]
            with anyio.fail_after(10):
                held = [await anext(replica_events) for _ in range(3)]
            assert sorted((c.action, c.id) for c in held) == [(dfdb.Action.CREATE, f"h{i}") for i in range(3)]
            holder.signal(signal.SIGKILL)
            killed = anyio.current_time()
            await nb.create(LiveItem(id="other"))  # an ordinary change meanwhile, not lost
            seen: list[dfdb.ChangeEvent] = []
            with anyio.fail_after(ttl + SLACK + 5):
                while len([ev for ev in seen if ev.action == dfdb.Action.DELETE]) < 3:
                    seen.append(await anext(stream))
            delay = anyio.current_time() - killed
            assert delay <= ttl + SLACK, f"{backend}: the expiry took {delay:.2f}s after kill -9 (TTL {ttl:g}s)"
            deletes = [ev for ev in seen if ev.action == dfdb.Action.DELETE]
            assert sorted(ev.id for ev in deletes) == ["h0", "h1", "h2"]
            assert all(ev.expired for ev in deletes)
            assert [ev.revision for ev in deletes] == sorted(ev.revision for ev in deletes)
            assert [ev.id for ev in seen if ev.action == dfdb.Action.CREATE] == ["other"]
            DELAYS.setdefault(backend, []).append(delay)
        with anyio.fail_after(10):
            got = []
            async for change in replica_events:
                got.append((change.action, change.id))
                assert change.expired == (change.action == dfdb.Action.DELETE)
                if sum(action == dfdb.Action.DELETE for action, _ in got) == 3:
                    break
        expected = [(dfdb.Action.CREATE, "other")] + [(dfdb.Action.DELETE, f"h{i}") for i in range(3)]
        assert sorted(got) == sorted(expected)
        await replica_events.aclose()
        assert [o.id for o in replica.get_all(LiveItem)] == ["other"]
        assert [o.id for o in await nb.get_all(LiveItem)] == ["other"]
    with capsys.disabled():
        print(f"\n{backend}: expiry seen {delay:.2f}s after kill -9 (TTL {ttl:g}s)")


@liveness
async def test_expiry_delays(backend: str, url: str, holders: list[Holder]) -> None:
    """Measures the delay from a holder's death to its expiry at a watcher, 10 times."""
    ttl = TTL.get(backend, 1.0)
    delays = []
    async with dfdb.connect(url) as nb, nb.watch(LiveItem) as stream:
        for _ in range(10):
            holder = await Holder.start(url, "hold", ttl, 1)
            holders.append(holder)
            assert await holder.line() == "READY"
            assert (await anext(stream)).action == dfdb.Action.CREATE
            holder.signal(signal.SIGKILL)
            killed = anyio.current_time()
            with anyio.fail_after(ttl + SLACK + 5):
                ev = await anext(stream)
            delays.append(anyio.current_time() - killed)
            assert (ev.action, ev.expired) == (dfdb.Action.DELETE, True)
    print(
        f"\n{backend}: expiry after kill -9, TTL {ttl:g}s: median {statistics.median(delays):.2f}s,"
        f" worst {max(delays):.2f}s"
    )
    assert max(delays) <= ttl + SLACK


@liveness
async def test_paused_holder_loses_its_lock_and_cannot_write(backend: str, url: str, holders: list[Holder]) -> None:
    """SIGSTOP past the TTL, then SIGCONT: the lease is reported lost, the next guarded write is
    refused, and nothing the paused holder wrote after losing the lock exists."""
    ttl = TTL.get(backend, 1.0)
    holder = await Holder.start(url, "guarded", ttl)
    holders.append(holder)
    word, token = (await holder.line()).split()
    assert word == "READY"
    holder.send("\n")
    assert await holder.line() == "WROTE"
    holder.signal(signal.SIGSTOP)
    async with dfdb.connect(url) as nb, nb.lock("guard", ttl=5, timeout=ttl + SLACK + 5) as successor:
        assert successor.token > int(token)
        item = await nb.get(LiveItem, "g")
        assert item.n == 1
        mine = await nb.update(item.model_copy(update={"n": 100}), guard=successor)
        holder.signal(signal.SIGCONT)
        holder.send("\n")
        answers = {await holder.line(), await holder.line()}
        assert answers == {"LEASE-LOST", "REFUSED"}
        assert await nb.get(LiveItem, "g") == mine


@liveness
async def test_contending_lock_holders_never_lose_a_guarded_write(
    backend: str, url: str, holders: list[Holder]
) -> None:
    """8 processes take turns at a lock, each incrementing a counter with guard=lock; two are
    killed at random meanwhile. The count equals the successful guarded writes, and no two
    holders' tokens overlap in time."""
    async with dfdb.connect(url) as nb:
        await nb.create(LiveItem(id="count"))
        holders.extend([await Holder.start(url, "contend", 4) for _ in range(8)])
        victims = random.sample(holders, 2)
        outputs: dict[int, list[str]] = {i: [] for i in range(len(holders))}

        async def read(i: int, holder: Holder) -> None:
            while line := await holder.line(within=120):
                outputs[i].append(line)
                if holder in victims and len(outputs[i]) == 1:
                    holder.signal(signal.SIGKILL)  # killed while taking turns; what it said before still comes

        async with anyio.create_task_group() as tg:
            for i, holder in enumerate(holders):
                tg.start_soon(read, i, holder)
        final = await nb.get(LiveItem, "count")
    ok = [line.split() for lines in outputs.values() for line in lines if line.startswith("OK")]
    tokens = [int(words[1]) for words in ok]
    assert final.n == len(final.tokens)
    assert list(final.tokens) == sorted(final.tokens) and len(set(final.tokens)) == len(final.tokens)
    assert set(tokens) <= set(final.tokens)
    assert len(final.tokens) - len(tokens) <= len(victims)  # a victim killed after its write, before saying so
    spans = sorted((int(w[1]), float(w[2]), float(w[3])) for w in ok)
    for (_, _, end), (_, start, _) in itertools.pairwise(spans):
        assert end <= start, f"two holders overlapped: {spans}"
    survivors = [lines for i, lines in outputs.items() if holders[i] not in victims]
    assert all(len(lines) == 4 for lines in survivors), outputs  # every round ended: written, or refused
    assert len(tokens) >= 4


class Scene:
    """A watcher and a FULL Replica of :class:`LiveItem` in this process, both read all the
    time, and a ``hold`` holder process whose output is collected."""

    def __init__(self, nb: dfdb.NbApi, replica: dfdb.Replica) -> None:
        self.nb = nb
        self.replica = replica
        self.events: list[dfdb.ChangeEvent] = []
        self.changes: list[tuple[dfdb.Action, str, bool]] = []
        self.said: list[str] = []
        self.holder: Holder | None = None

    async def follow(self, stream: dfdb.ChangeStream) -> None:
        async for ev in stream:
            self.events.append(ev)

    async def follow_replica(self, changes: AsyncIterator[dfdb.ReplicaEvent]) -> None:
        async for change in changes:
            self.changes.append((change.action, change.id, change.expired))

    async def listen(self, holder: Holder) -> None:
        while line := await holder.line(within=math.inf):
            self.said.append(line)

    async def until(self, done: Callable[[], bool], within: float, what: str) -> None:
        try:
            with anyio.fail_after(within):
                while not done():
                    await anyio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"waited {within:g}s for {what}; the holder said {self.said}") from None

    def deletes(self) -> list[dfdb.ChangeEvent]:
        return [ev for ev in self.events if ev.action == dfdb.Action.DELETE]

    async def check_kept(self, count: int) -> None:
        """The holder kept its lease: nothing expired, nothing reported lost."""
        assert "LEASE-LOST" not in self.said, self.said
        assert self.deletes() == [], [(ev.id, ev.expired) for ev in self.deletes()]
        assert not any(ev.action == dfdb.Action.RESYNC for ev in self.events)
        held = sorted(o.id for o in await self.nb.get_all(LiveItem))
        assert [i for i in held if i.startswith("h")] == [f"h{i}" for i in range(count)]
        assert sorted(o.id for o in self.replica.get_all(LiveItem)) == held

    async def settle(self, count: int, ttl: float) -> str:
        """After a fault: either the holder kept its lease (nothing expired, nothing lost),
        or it reports the lease lost, its write with it is refused, and its objects expire
        as expiries for the watcher and the Replica; nothing half-way. Returns which."""
        if self.deletes() and "LEASE-LOST" not in self.said:  # the holder must learn it, within its TTL
            await self.until(lambda: "LEASE-LOST" in self.said, ttl, "the holder to report its lease lost")
        if "LEASE-LOST" not in self.said:
            await self.check_kept(count)
            return "kept"
        await self.until(lambda: len(self.said) >= 3, 20, "the holder's write after the loss")
        assert self.said[1:3] == ["LEASE-LOST", "REFUSED"], self.said
        await self.check_expired(count, ttl + SLACK + 5)
        return "lost"

    async def kill_and_check_expiry(self, label: str, count: int, ttl: float) -> None:
        """kill -9 of the holder that kept its lease: its objects expire within TTL + SLACK."""
        assert self.holder is not None
        self.holder.signal(signal.SIGKILL)
        delay = await self.check_expired(count, ttl + SLACK + 5)
        assert delay <= ttl + SLACK, f"{label}: the expiry took {delay:.2f}s after kill -9 (TTL {ttl:g}s)"
        print(f"{label}: then expiry {delay:.2f}s after kill -9")

    async def check_expired(self, count: int, within: float) -> float:
        """The holder's objects are deleted as expiries, in order, seen by the watcher and
        the Replica, nothing else; returns how long it took."""
        started = anyio.current_time()
        await self.until(lambda: len(self.deletes()) >= count, within, "the expiry deletes")
        delay = anyio.current_time() - started
        deletes = self.deletes()
        assert sorted(ev.id for ev in deletes) == [f"h{i}" for i in range(count)]
        assert all(ev.expired for ev in deletes)
        assert [ev.revision for ev in deletes] == sorted(ev.revision for ev in deletes)
        await self.until(lambda: sum(a == dfdb.Action.DELETE for a, _, _ in self.changes) >= count, 10, "the Replica")
        assert sorted((i, e) for a, i, e in self.changes if a == dfdb.Action.DELETE) == [
            (f"h{i}", True) for i in range(count)
        ]
        left = sorted(o.id for o in await self.nb.get_all(LiveItem))
        assert not [i for i in left if i.startswith("h") or i == "late"], left
        assert sorted(o.id for o in self.replica.get_all(LiveItem)) == left
        return delay


@contextlib.asynccontextmanager
async def scene(url: str, holders: list[Holder], ttl: float, count: int = 3) -> AsyncIterator[Scene]:
    """A :class:`Scene` whose holder has created its ``count`` items (seen by both)."""
    async with dfdb.connect(url) as nb, dfdb.Replica(nb, [LiveItem]) as replica:
        await replica.wait_synced()
        async with nb.watch(LiveItem) as stream, anyio.create_task_group() as tg:
            seen = Scene(nb, replica)
            tg.start_soon(seen.follow, stream)
            tg.start_soon(seen.follow_replica, replica.events())
            holder = await Holder.start(url, "hold", ttl, count)
            holders.append(holder)
            seen.holder = holder
            tg.start_soon(seen.listen, holder)
            await seen.until(lambda: "READY" in seen.said, 30, "the holder")
            await seen.until(lambda: len(seen.events) >= count and len(seen.changes) >= count, 10, "the creates")
            yield seen
            tg.cancel_scope.cancel()


def server_url(server: LocalServer, backend: str, query: str = "") -> str:
    if backend == "redis":
        return f"{server.url.removesuffix('/0')}/0?prefix=live{query and '&' + query}"
    return f"{server.url}/live{query and '?' + query}"


running = contextlib.contextmanager(serve)
"""A server for one test: ``with running(factory) as server``."""

RESTART_TTL = {"redis": 3.0, "etcd": 4.0, "zookeeper": 8.0}


@liveness
@pytest.mark.parametrize("backend", ["redis", "etcd", "zookeeper"])
async def test_server_restart_keeps_a_live_holder_s_leases(backend: str, holders: list[Holder]) -> None:
    """A server restart with persistence (Redis with its append-only file, etcd, ZooKeeper
    standalone) shorter than half the TTL while a holder keeps its lease: nothing expires,
    the holder loses nothing, the watcher and the Replica miss nothing; once the holder is
    killed its objects expire as usual. A longer restart may end the lease instead, and
    then wholly (:meth:`Scene.settle`)."""
    ttl = RESTART_TTL[backend]
    factory: dict[str, Callable[[], RedisServer | EtcdServer | ZooKeeperServer]] = {
        "redis": lambda: RedisServer(appendonly=True),
        "etcd": lambda: EtcdServer(1),
        "zookeeper": ZooKeeperServer,
    }
    with running(factory[backend]) as server:
        url = server_url(server, backend, "session_timeout=10" if backend == "zookeeper" else "")
        async with scene(url, holders, ttl) as seen:
            started = anyio.current_time()
            await anyio.to_thread.run_sync(server.restart)
            down = anyio.current_time() - started
            await seen.nb.create(LiveItem(id="other"))  # an ordinary change after the restart
            await seen.until(lambda: any(ev.id == "other" for ev in seen.events), 20, "the change after the restart")
            await anyio.sleep(ttl + 1)  # past the TTL counted from the restart
            outcome = await seen.settle(3, ttl)
            assert outcome == "kept" or down > ttl / 2, f"a restart of {down:.1f}s lost the lease (TTL {ttl:g}s)"
            print(f"\n{backend}: restart of {down:.2f}s, lease {outcome} (TTL {ttl:g}s)")
            if outcome == "kept":
                await seen.kill_and_check_expiry(backend, 3, ttl)


@liveness
async def test_etcd_leader_kill_keeps_a_live_holder_s_leases(holders: list[Holder]) -> None:
    """kill -9 of the leader of a 3-member etcd cluster while a holder keeps its lease:
    the new leader keeps the lease, nothing expires; a killed holder's objects then expire.
    (A failover longer than half the TTL may end the lease instead: then see :meth:`Scene.settle`.)"""
    ttl = 4.0
    with running(lambda: EtcdServer(3)) as server:
        url = server_url(server, "etcd")
        async with scene(url, holders, ttl) as seen:
            leader = await anyio.to_thread.run_sync(server.leader)
            server.kill(leader)
            killed = anyio.current_time()
            await seen.nb.create(LiveItem(id="other"))  # the cluster writes again
            await seen.until(lambda: any(ev.id == "other" for ev in seen.events), 20, "the change after the kill")
            back = anyio.current_time() - killed
            await anyio.sleep(ttl + 1)
            outcome = await seen.settle(3, ttl)
            assert outcome == "kept" or back > ttl / 2, f"a failover of {back:.1f}s lost the lease (TTL {ttl:g}s)"
            print(f"\netcd: leader m{leader} killed, writable again in {back:.2f}s, lease {outcome} (TTL {ttl:g}s)")
            if outcome == "kept":
                await seen.kill_and_check_expiry("etcd", 3, ttl)


@liveness
async def test_zookeeper_session_expiry_of_the_holder(
    tmp_path: Path, request: pytest.FixtureRequest, holders: list[Holder]
) -> None:
    """A ZooKeeper holder paused past its session's time-out but within its lease's TTL keeps
    the lease (a lease is not the session); paused past the TTL, its objects are reaped by the
    watching client and seen as expiries, and on waking it reports the lease lost and its
    next write with it is refused."""
    ttl = 8.0
    url = fill_url(URLS["zookeeper"] + "&session_timeout=1.5", tmp_path, request)
    async with scene(url, holders, ttl) as seen:
        holder = seen.holder
        assert holder is not None
        holder.signal(signal.SIGSTOP)
        await anyio.sleep(3.5)  # past the session's 1.5 s: the server expires the session
        holder.signal(signal.SIGCONT)
        await anyio.sleep(ttl / 2 + 1)  # the holder is back with a new session and keeps the lease
        await seen.check_kept(3)
        await seen.until(lambda: holder.proc.returncode is None, 1, "the holder")
        holder.signal(signal.SIGSTOP)
        stopped = anyio.current_time()
        delay = await seen.check_expired(3, ttl + SLACK + 5)
        assert delay <= ttl + SLACK, f"zookeeper: the expiry took {delay:.2f}s after SIGSTOP (TTL {ttl:g}s)"
        holder.signal(signal.SIGCONT)
        await seen.until(lambda: len(seen.said) >= 3, 20, "the holder's report")
        assert seen.said[1:3] == ["LEASE-LOST", "REFUSED"], seen.said
        assert not [o for o in await seen.nb.get_all(LiveItem) if o.id == "late"]
        print(f"\nzookeeper: expiry {delay:.2f}s after SIGSTOP ({anyio.current_time() - stopped:.2f}s in all)")


async def test_a_driver_without_leases_says_so() -> None:
    """A driver without Capability.LEASES refuses leases, locks and bound writes with one clear error."""
    import dfdb.testing.faults  # registers faulty://

    async with dfdb.connect("faulty://nolease") as nb:
        for opened in (nb.lease(ttl=5), nb.lock("x", ttl=5)):
            with pytest.raises(dfdb.DfdbError, match="faulty:// driver has no leases"):
                async with opened:
                    pytest.fail("a lease without the capability")
        assert await nb.get_all(LiveItem) == []
