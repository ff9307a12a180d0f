"""A fleet worker process: some of the fleet's controllers, each a SELECTIVE Replica with
its own connection, driven by :class:`~dfdb.replica.ChassisTopics`; it answers the
orchestrator's commands over a pipe."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import dfdb.models  # noqa: F401  (registers the network model set)
from dfdb.connecting import connect
from dfdb.errors import BackendTimeoutError, BackendUnavailableError, DfdbError
from dfdb.events import Action
from dfdb.fleet.topology import MODELS, Topology, chassis_id, topic
from dfdb.models import Chassis, LogicalPort
from dfdb.nbmodel import NbModel
from dfdb.replica import ChassisTopics, Replica, SyncMode
from dfdb.replica.pacing import RELISTS
from dfdb.retry import Backoff

__all__ = ["worker_main"]

log = logging.getLogger(__name__)


@dataclass
class _Controller:
    index: int
    replica: Replica | None = None
    topics: ChassisTopics | None = None
    started: float = 0.0
    ready: float | None = None
    error: str = ""
    start_retries: int = 0
    latencies: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    up: asyncio.Event = field(default_factory=asyncio.Event)


def worker_main(conn: Connection, url: str, indexes: list[int], topology: Topology, relists: dict[str, float]) -> None:
    """The worker process's entry point: run controllers ``indexes`` of ``topology`` on
    ``url`` until told to stop."""
    logging.basicConfig(level=logging.ERROR)
    RELISTS.configure(rate=relists["rate"], burst=int(relists["burst"]), jitter=relists["jitter"])
    asyncio.run(_serve(conn, url, indexes, topology, int(relists.get("starts", 25))))


async def _serve(conn: Connection, url: str, indexes: list[int], topology: Topology, starts: int) -> None:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(starts)
    controllers = [_Controller(i) for i in indexes]
    tasks: list[asyncio.Task[None]] = []
    try:
        while True:
            command, arg = await loop.run_in_executor(None, conn.recv)
            if command == "start":
                tasks = [asyncio.create_task(_run(url, c, topology, gate)) for c in controllers]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(float(arg)):
                        await asyncio.gather(*(c.up.wait() for c in controllers))
                conn.send([_start_report(c) for c in controllers])
            elif command == "stats":
                conn.send([_stats(c, bool(arg)) for c in controllers])
            elif command == "wait":
                revision, within = arg
                conn.send(await asyncio.gather(*(_wait(c, revision, within) for c in controllers)))
            elif command == "latencies":
                conn.send([x for c in controllers for x in c.latencies])
                for c in controllers:
                    c.latencies.clear()
            elif command == "limiter":  # this process's relist limiter; reset its peak
                conn.send([{"peak_active": RELISTS.peak_active, "granted": RELISTS.granted}])
                RELISTS.peak_active = RELISTS.active
            elif command == "check":
                conn.send(await _check(url, controllers, topology))
            elif command == "stop":
                break
    finally:
        for c in controllers:
            c.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.send("stopped")


async def _run(url: str, c: _Controller, topology: Topology, gate: asyncio.Semaphore) -> None:
    """One controller's life; a start the server did not answer in time is tried again
    after a backoff, as an agent's supervisor would. Its connect and first load wait for
    one of the process's ``gate`` slots."""
    c.started = time.time()
    backoff = Backoff(initial=0.5, maximum=10.0)
    while not c.stop.is_set():
        try:
            await _life(url, c, topology, gate)
            return
        except (BackendUnavailableError, BackendTimeoutError) as exc:
            if c.ready is not None:
                c.error = f"{type(exc).__name__}: {exc}"
                return
            c.start_retries += 1
            await asyncio.sleep(backoff.delay(c.start_retries))
        except Exception as exc:  # reported to the orchestrator, which fails the run
            c.error = f"{type(exc).__name__}: {exc}"
            return
        finally:
            if c.error:
                c.up.set()


async def _life(url: str, c: _Controller, topology: Topology, gate: asyncio.Semaphore) -> None:
    """One controller: its connection, its Replica, its events."""
    tenants = topology.tenants_of(c.index)
    await gate.acquire()
    try:
        await _live(url, c, topology, tenants, gate)
    finally:
        if c.ready is None:
            gate.release()


async def _live(url: str, c: _Controller, topology: Topology, tenants: list[int], gate: asyncio.Semaphore) -> None:
    async with connect(url, timeout=30) as nb:
        # the local switch reports this chassis's ports at boot: their tenants are the
        # first topics (one subscription, not one per tenant)
        replica = Replica(nb, MODELS, mode=SyncMode.SELECTIVE, topics={topic(t) for t in tenants}, topicless=[Chassis])
        async with replica:
            c.replica = replica
            c.topics = ChassisTopics(replica, chassis_id(c.index))
            for t in tenants:
                for p in range(topology.ports):
                    if topology.port_chassis(t, p) == c.index:
                        await c.topics.port_bound(topology.port(t, p))
            c.ready = time.time()
            gate.release()  # loaded: the next one may start
            c.up.set()
            events = replica.events()
            try:
                follower = asyncio.create_task(_follow(c, events))
                await c.stop.wait()
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            finally:
                await events.aclose()


async def _follow(c: _Controller, events: Any) -> None:
    """Note write→applied latencies (the writer stamps a port's name with its write time)
    and let ChassisTopics follow the ports."""
    async for ev in events:
        now = time.time_ns()
        if ev.action == Action.UPDATE and isinstance(ev.new, LogicalPort) and ev.new.name.startswith("w"):
            with contextlib.suppress(ValueError):
                c.latencies.append((now - int(ev.new.name[1:])) / 1e9)
        if c.topics is not None:
            await c.topics.observe(ev)


def _start_report(c: _Controller) -> dict[str, Any]:
    return {"index": c.index, "error": c.error, "ready": c.ready, "started": c.started}


def _stats(c: _Controller, sizes: bool = False) -> dict[str, Any]:
    """The controller's counters; with ``sizes``, the bytes of what it holds too (which
    builds every object it holds: the simulator's cost, not the controller's)."""
    if c.replica is None:
        return {"index": c.index, "error": c.error or "not started"}
    s = c.replica.stats()
    held = [o for m in MODELS for o in c.replica.get_all(m)] if sizes else []
    return {
        "index": c.index,
        "error": c.error,
        "objects": s.objects,
        "listed_bytes": sum(len(o.model_dump_json()) for o in held),
        "records_read": s.records_read,
        "bytes_read": s.bytes_read,
        "resyncs": s.resyncs,
        "reconnects": c.replica.nb.stats().reconnects,  # the stream's own, below the Replica
        "position": s.position,
        "stale": s.stale,
        "synced": c.replica.synced,
        "relist_wait": s.relist_wait,
        "relisted": s.relisted,
        "start_retries": c.start_retries,
    }


async def _wait(c: _Controller, revision: int, within: float) -> float | None:
    """When (``time.time()``) the controller had applied every change up to ``revision``."""
    if c.replica is None:
        return None
    try:
        async with asyncio.timeout(within):
            await c.replica.wait_for(revision)
    except (TimeoutError, DfdbError):
        return None
    return time.time()


async def _check(url: str, controllers: list[_Controller], topology: Topology) -> list[dict[str, Any]]:
    """Compare each controller's Replica with the database for its scope (its tenants and
    the global objects)."""
    # each table read whole once (not a listing per topic), with time to answer: the
    # process's own controllers share its CPU meanwhile
    async with connect(url, timeout=120) as nb:
        truth: dict[str | None, dict[tuple[str, str], NbModel]] = {}
        for model in MODELS:
            for o in await nb.get_all(model):
                if (o.topic is None) == (model is Chassis):
                    truth.setdefault(o.topic, {})[(model.__table__, o.id)] = o
    reports = []
    for c in controllers:
        if c.replica is None:
            reports.append({"index": c.index, "diff": f"no replica ({c.error})"})
            continue
        scope = {None, *c.replica.topics}
        expected: dict[tuple[str, str], NbModel] = {}
        for t in scope:
            expected |= truth.get(t, {})
        held = {(m.__table__, o.id): o for m in MODELS for o in c.replica.get_all(m)}
        missing = expected.keys() - held.keys()
        extra = held.keys() - expected.keys()
        stale = [k for k in expected.keys() & held.keys() if expected[k].model_dump() != held[k].model_dump()]
        diff = f"{len(missing)} missing, {len(extra)} extra, {len(stale)} stale" if missing or extra or stale else ""
        reports.append({"index": c.index, "diff": diff, "objects": len(held)})
    return reports
