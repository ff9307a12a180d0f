"""The set-ups benchmarks/choose.py measures, and its recovery and copy measurements.

Each set-up is started here on loopback with the settings of :data:`SETTINGS`. Besides
the figures of :mod:`dfdb.bench.overhead`, a set-up gets:

- ``restart``: ``kill -9`` of the (single) server and a start on its data, under an
  open change stream: seconds to the stream's first event, and whether the objects
  written before are all still there (:func:`restart_to_first_event`);
- ``failover``: ``kill -9`` of the leader or master of a replicated set-up, not
  restarted: seconds to the first acknowledged write, and whether the objects written
  before are still there (:func:`failover_to_first_write`);
- ``dfdb copy`` of every object from one set-up to another, timed (:func:`copy_seconds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dfdb.bench.workload import Namespaces, sample_port
from dfdb.connecting import connect
from dfdb.errors import DfdbError
from dfdb.events import Action
from dfdb.models import LogicalPort
from dfdb.sentinel_server import SentinelSetup
from dfdb.servers import EtcdServer, LocalServer, RedisServer, ZooKeeperServer
from dfdb.url import DatabaseURL

SETUPS = ("memory", "sqlite", "redis", "redis-sentinel", "etcd", "etcd-3", "zookeeper", "zookeeper-3")
"""Every set-up, in the page's column order."""

REPLICATED = ("redis-sentinel", "etcd-3", "zookeeper-3")
"""The set-ups that survive the loss of a member: their resource figures are the sum of every member."""

SENTINEL_DOWN_AFTER = 5.0
"""Seconds of silence after which a sentinel deems the master down."""

SETTINGS = {
    "memory": "in this process, nothing on disk (lost when the process ends)",
    "sqlite": "dfdb's defaults: WAL journal, `synchronous=NORMAL` (a power loss can lose the last "
    "transactions, a crash of the process cannot)",
    "redis": "one server; append-only file with `appendfsync always` (every acknowledged write is on disk), "
    "RDB snapshots off",
    "redis-sentinel": "a master, 2 replicas and 3 sentinels (quorum 2, `down-after-milliseconds` "
    f"{SENTINEL_DOWN_AFTER * 1000:.0f}, `failover-timeout` 5000); each data server keeps an append-only file with "
    "`appendfsync everysec` (up to a second of acknowledged writes can be lost on a power cut), replication is "
    "asynchronous (dfdb's `min_replicas` not set); memory, CPU and disk are the sum of all 6 processes",
    "etcd": "one member, etcd's defaults: the WAL is fsynced on every commit, a snapshot every 100,000 "
    "changes; WAL segments are preallocated 64 MB at a time, so its disk figure moves in steps",
    "etcd-3": "3 members, etcd's defaults (as etcd; a write commits on a majority, each fsyncing its WAL; "
    "heartbeat 100 ms, election timeout 1 s); memory, CPU and disk are the sum of the 3 members",
    "zookeeper": "standalone, `-Xmx2g`, `forceSync=yes` (ZooKeeper's default and the production setting: "
    "the transaction log is fsynced before a write is acknowledged), `tickTime=500`",
    "zookeeper-3": "an ensemble of 3, each `-Xmx2g`, `forceSync=yes`, `tickTime=500`, `syncLimit=5` "
    "(a write commits on a majority), `initLimit=120` (60 s for a follower to sync from a new leader, which "
    "first writes a snapshot of the whole tree: with 100,000 nodes on a busy machine that takes seconds, and "
    "the 5 s of `initLimit=10` let no quorum form after the leader's loss); memory, CPU and disk are the sum "
    "of the 3 members",
}
"""The persistence settings each set-up runs with here."""


@contextlib.contextmanager
def started(setup: str, tmp: Path) -> Iterator[tuple[str, LocalServer | None]]:
    """The URL of ``setup`` (and its local server), started for the block."""
    if setup == "memory":
        yield "memory://choose", None
        return
    if setup == "sqlite":
        yield f"sqlite:///{tmp}/choose.db", None
        return
    make: dict[str, Callable[[], LocalServer]] = {
        "redis": lambda: RedisServer(appendonly=True),
        "redis-sentinel": lambda: SentinelSetup(down_after=SENTINEL_DOWN_AFTER),
        "etcd": EtcdServer,
        "etcd-3": lambda: EtcdServer(3),
        "zookeeper": lambda: ZooKeeperServer(heap="2g", force_sync=True),
        "zookeeper-3": lambda: ZooKeeperServer(3, heap="2g", force_sync=True),
    }
    with make[setup]() as server:
        yield server.url, server


@dataclass
class Recovery:
    """One recovery measured: seconds, the first event after it, and what was kept."""

    seconds: float | None
    """From the fault to the first acknowledged write."""
    event: str
    """The stream's first event after the fault (``create`` or ``resync``), or what failed."""
    event_seconds: float | None = None
    """From the fault to that event."""
    kept: int = 0
    """Objects written before the fault that are still there."""
    written: int = 0
    """Objects written before the fault."""

    def cell(self, to_event: bool = False) -> str:
        """The table's text: seconds to the first write (``to_event``: to the stream's
        first event) and, in brackets, that event."""
        seconds = self.event_seconds if to_event else self.seconds
        if seconds is None:  # the page lists the whole reason under the table
            return f"not measured ({self.event.split(':', 1)[0]})"
        return f"{seconds:.2g} ({self.event})"

    def survived(self) -> str:
        """``yes`` (every object kept, no RESYNC), ``RESYNC`` or ``no``."""
        if self.seconds is None:
            return "not measured"
        if self.event == Action.RESYNC.value:
            return "RESYNC"
        return "yes" if self.kept == self.written else "no"

    def as_dict(self) -> dict[str, Any]:
        """The fields, for the JSON file."""
        return asdict(self)


async def _write_before(nb: Any, stream: Any, count: int, within: float) -> list[str]:
    ids = [(await nb.create(sample_port(i, "before"))).id for i in range(count)]
    async with asyncio.timeout(within):
        for _ in ids:
            await anext(stream)
    return ids


async def _first_write(nb: Any, t0: float, within: float) -> float:
    """Seconds from ``t0`` to the first create the set-up acknowledges."""
    i = 0
    while True:
        try:
            await nb.create(sample_port(i, "after"))
            return time.perf_counter() - t0
        except DfdbError:  # not served yet: the driver reconnects, or finds the new leader
            if time.perf_counter() - t0 > within:
                raise
            i += 1
            await asyncio.sleep(0.02)


async def _fault(url: str, tmp: Path, name: str, fault: Callable[[], Any], within: float) -> Recovery:
    """Objects written and seen by a stream, then ``fault`` (in a thread); the first
    acknowledged write and the stream's first event after it."""
    ns = Namespaces(DatabaseURL.parse(url), tmp).url(name)
    try:
        async with connect(ns, timeout=10) as nb, nb.watch(LogicalPort) as stream:
            before = await _write_before(nb, stream, 20, within)
            t0 = time.perf_counter()
            await asyncio.to_thread(fault)
            seconds = await _first_write(nb, t0, within)
            event = await asyncio.wait_for(anext(stream), within)
            to_event = time.perf_counter() - t0
            present = {p.id for p in await nb.get_all(LogicalPort)}
        return Recovery(seconds, event.action.value, to_event, len(present & set(before)), len(before))
    except (DfdbError, TimeoutError) as exc:
        return Recovery(None, f"{type(exc).__name__}: {exc}")


async def restart_to_first_event(url: str, server: LocalServer, tmp: Path, within: float = 120.0) -> Recovery:
    """``kill -9`` of the server and a start on its data (its own start-up included)."""
    return await _fault(url, tmp, "choose-restart", server.restart, within)


def leader_of(server: LocalServer) -> int:
    """The index of the member that takes the writes: the Sentinel master, the etcd or ZooKeeper leader."""
    if isinstance(server, SentinelSetup):
        return server.master_index()
    if isinstance(server, EtcdServer | ZooKeeperServer):
        return server.leader()
    return 0


async def failover_to_first_write(url: str, server: LocalServer, tmp: Path, within: float = 120.0) -> Recovery:
    """``kill -9`` of the leader or master, not restarted: the time runs from the kill."""

    def kill_leader() -> None:
        server.kill(leader_of(server))

    return await _fault(url, tmp, "choose-failover", kill_leader, within)


async def volatile_restart(tmp: Path, within: float = 60.0) -> Recovery:
    """Redis without persistence: a restart that loses every object."""
    with RedisServer(appendonly=False) as server:
        return await _fault(server.url, tmp, "choose-volatile", server.restart, within)


async def sqlite_reopen(tmp: Path) -> Recovery:
    """SQLite: the process closes the file and opens it again (a restart of the program)."""
    url = f"sqlite:///{tmp}/reopen.db"
    async with connect(url) as nb:
        ids = [(await nb.create(sample_port(i, "before"))).id for i in range(20)]
    t0 = time.perf_counter()
    async with connect(url) as nb, nb.watch(LogicalPort) as stream:
        seconds = await _first_write(nb, t0, 10)
        event = await asyncio.wait_for(anext(stream), 10)
        to_event = time.perf_counter() - t0
        present = {p.id for p in await nb.get_all(LogicalPort)}
    return Recovery(seconds, event.action.value, to_event, len(present & set(ids)), len(ids))


def _namespace(url: str, tmp: Path, name: str) -> str:
    return Namespaces(DatabaseURL.parse(url), tmp).url(name).render(mask=False)


async def copy_seconds(pairs: list[tuple[str, str]], objects: int, tmp: Path) -> dict[str, float | str]:
    """``dfdb copy`` (the command, in a process of its own) of ``objects`` LogicalPorts
    along ``pairs`` (source, target); the first source is loaded here (not timed), each
    later one holds what the pair before copied. Seconds per ``"source > target"``."""
    times: dict[str, float | str] = {}
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        loaded: set[str] = set()
        for n, (source, target) in enumerate(pairs):
            for setup in (source, target):
                if setup not in urls:
                    urls[setup] = stack.enter_context(started(setup, tmp))[0]
            src = _namespace(urls[source], tmp, f"copy{n}")
            dst = _namespace(urls[target], tmp, f"copy{n + 1}")
            key = f"{source} > {target}"
            if source not in loaded:
                async with connect(src, timeout=600) as nb:
                    results = await nb.create_many([sample_port(i, "copy") for i in range(objects)])
                failed = [r for r in results if isinstance(r, Exception)]
                if failed:
                    times[key] = f"not measured: the load failed ({failed[0]})"
                    continue
            t0 = time.perf_counter()
            command = [sys.executable, "-m", "dfdb", "--db", src, "copy", "--to", dst]
            try:
                done = await asyncio.to_thread(
                    subprocess.run, command, capture_output=True, text=True, check=False, timeout=1800
                )
            except subprocess.TimeoutExpired:
                times[key] = "not measured: not done within 30 minutes"
                continue
            seconds = time.perf_counter() - t0
            if done.returncode != 0:
                times[key] = f"not measured: {done.stderr.strip().splitlines()[-1:]}"
                continue
            times[key] = seconds
            loaded.add(target)
    return times
