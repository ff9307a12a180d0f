"""Liveness with real processes: a lease holder killed with ``kill -9``, a lock holder paused
past its TTL, and contending lock holders (tests/helpers/lease_holder.py in other processes).

The ``kill -9`` test runs on SQLite in the default suite; on every backend, and the longer
tests, with ``DFDB_LIVENESS=1`` (``nox -s liveness``), which also measures and prints the
expiry delays.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import statistics
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

import dfdb
from dfdb.testing.plugin import fill_url

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
            seen = []
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


async def test_a_driver_without_leases_says_so() -> None:
    """A driver without Capability.LEASES refuses leases, locks and bound writes with one clear error."""
    import dfdb.testing.faults  # registers faulty://

    async with dfdb.connect("faulty://nolease") as nb:
        for opened in (nb.lease(ttl=5), nb.lock("x", ttl=5)):
            with pytest.raises(dfdb.DfdbError, match="faulty:// driver has no leases"):
                async with opened:
                    pytest.fail("a lease without the capability")
        assert await nb.get_all(LiveItem) == []
