"""The fleet simulator's orchestrator: the database and its topology, the worker processes,
the writer, the scenarios and what they measured."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import multiprocessing
import os
import random
import signal
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from dfdb.connecting import connect
from dfdb.errors import ConfigurationError, DfdbError
from dfdb.events import parse_cursor
from dfdb.fleet.conns import Refusals
from dfdb.fleet.topology import MODELS, Topology, chassis_id
from dfdb.fleet.worker import worker_main
from dfdb.models import Chassis, LogicalPort
from dfdb.nb import NbApi
from dfdb.retry import gather_outcomes
from dfdb.servers import SERVERS, EtcdServer, LocalServer

__all__ = ["SCENARIOS", "FleetConfig", "FleetResult", "run_fleet"]

SCENARIOS = ("cold", "idle", "steady", "restart", "history")
"""The scenarios, in the order they run."""

MAX_OBJECTS = 10_000_000
"""The most objects a fleet's database may hold (each worker process holds every
controller's share in memory)."""


@dataclass
class FleetConfig:
    """What the fleet simulator runs (``dfdb fleet --help`` tells each option)."""

    url: str | None = None
    server: str | None = None
    """Start a local server of this backend (``redis``, ``etcd``, ``zookeeper``) instead of using ``url``;
    the restart scenario needs it, and the server CPU is read from its process."""
    members: int = 1
    """Members of the server started with ``server`` (3: an etcd cluster or a ZooKeeper
    ensemble, whose restart scenario restarts the leader)."""
    etcd_progress: float = 10.0
    """Seconds between the progress notifications of the etcd server started (etcd's default:
    10 minutes); the test servers' 0.5 s sends every idle watch two replies a second: at
    1,000 controllers more than the host has."""
    controllers: int = 50
    workers: int = 4
    tenants: int | None = None
    """Tenants (default: as many as controllers)."""
    ports: int = 20
    """Ports per tenant."""
    spread: int = 3
    """Chassis each tenant's ports sit on."""
    rate: float = 50.0
    """Writes per second in the steady state."""
    duration: float = 10.0
    """Seconds of steady-state writing."""
    lost: int = 200
    """Changes written while the controllers are cut off in the history-loss scenario."""
    scenarios: tuple[str, ...] = SCENARIOS
    relist_rate: float = 20.0
    relist_burst: int = 10
    relist_jitter: float = 1.0
    starts: int = 25
    """Controllers of one worker process connecting and loading at once: a host has its
    own CPU for its one controller, a worker process shares one among hundreds, and
    hundreds of loads at once starve each other past their time-outs (then start over)."""
    url_options: str = ""
    """URL options for the controllers' connections only (``block=5``: a Redis controller's
    idle stream makes one round trip per five seconds, not one per second)."""
    within: float = 300.0
    """Seconds a scenario may take to converge before the run fails."""
    seed: int = 1
    timeout: float | None = None
    """Seconds before a database that cannot be reached is an error (``None``: the URL's
    ``timeout``, else the NbApi's default); once reached, the fleet's own connections wait
    longer for a server whose CPU the fleet takes."""
    json: str | None = None
    """Write the figures as JSON to this file after each scenario (a long run that is
    stopped keeps what it measured)."""


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    indexes: list[int]


@dataclass
class FleetResult:
    """What the run measured (also written as JSON)."""

    config: dict[str, Any]
    backend: str
    objects: int
    load_seconds: float
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    load_average: dict[str, list[float]] = field(default_factory=dict)
    """The host's load average (1, 5, 15 minutes) when the run started and ended: the
    controllers share the host's cores with whatever else runs there."""
    started: str = ""
    """When the run started (UTC, ISO 8601)."""
    cpus: int = 0
    """The host's CPUs."""
    memory_mib: dict[str, float | None] = field(default_factory=dict)
    """Peak resident memory (``VmHWM``) of the worker processes added up (``workers``),
    and the server's now (``server``, every member's; it restarts with the scenarios)."""

    @property
    def ok(self) -> bool:
        """No controller diverged and every scenario converged."""
        return not self.failures


class _Cpu:
    """Samples a server process's CPU time from ``/proc`` and keeps the peak rate."""

    def __init__(self, server: LocalServer | None) -> None:
        self.server = server
        self.peak = 0.0
        self._last: tuple[float, float] | None = None
        self._task: asyncio.Task[None] | None = None

    def _read(self) -> float | None:
        """CPU seconds of the server's processes (every member's, added up)."""
        if self.server is None or not any(self.server.processes):
            return None
        used = 0.0
        for proc in self.server.processes:
            if proc is None:
                continue
            try:
                with open(f"/proc/{proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # a member down (killed, restarting)
                continue
            used += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return used

    async def _sample(self) -> None:
        while True:
            now, used = time.monotonic(), self._read()
            if used is not None and self._last is not None and used >= self._last[1] and now > self._last[0]:
                self.peak = max(self.peak, 100 * (used - self._last[1]) / (now - self._last[0]))
            self._last = (now, used) if used is not None else None
            await asyncio.sleep(0.25)

    @contextmanager
    def watching(self) -> Iterator[_Cpu]:
        self.peak, self._last = 0.0, None
        self._task = asyncio.get_running_loop().create_task(self._sample())
        try:
            yield self
        finally:
            self._task.cancel()

    def figure(self) -> float | None:
        return round(self.peak, 1) if self.server is not None else None

    def used(self) -> float | None:
        """CPU seconds the server process has used so far (``None``: no server of ours)."""
        return self._read()


def _save(cfg: FleetConfig, result: FleetResult) -> None:
    """Write what was measured so far to ``cfg.json``."""
    if cfg.json:
        result.load_average["end"] = [round(x, 2) for x in os.getloadavg()]
        with open(cfg.json, "w") as f:
            json.dump({**asdict(result), "ok": result.ok}, f, indent=2)
            f.write("\n")


def _schedstat(workers: list[_Worker]) -> tuple[float, float]:
    """Seconds the worker processes ran on a CPU and waited, runnable, for one (Linux's
    ``/proc/PID/schedstat``), in all: a process waiting for a CPU is starved by the host,
    not idle, though its CPU share looks small."""
    ran = waited = 0.0
    for w in workers:
        try:
            with open(f"/proc/{w.process.pid}/schedstat") as f:
                on_cpu, queued = (int(x) / 1e9 for x in f.read().split()[:2])
        except (OSError, ValueError):
            continue
        ran, waited = ran + on_cpu, waited + queued
    return ran, waited


def _peak_rss(pids: list[int | None], field: str) -> float | None:
    """``field`` of ``/proc/PID/status`` added up over ``pids``, in MiB."""
    kib = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                kib += next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))
        except (OSError, StopIteration, ValueError):
            return None
    return round(kib / 1024, 1)


async def _ask(workers: list[_Worker], command: str, arg: Any = None) -> list[Any]:
    """Send ``command`` to every worker; their answers, flattened."""
    loop = asyncio.get_running_loop()
    try:
        for w in workers:
            w.conn.send((command, arg))
        answers = await asyncio.gather(*(loop.run_in_executor(None, w.conn.recv) for w in workers))
    except (EOFError, OSError) as exc:  # a worker process died (killed, out of memory)
        dead = [w.process.name for w in workers if not w.process.is_alive()]
        raise DfdbError(f"fleet worker process ended unexpectedly ({', '.join(dead) or exc!r})") from None
    if any(not isinstance(a, list) for a in answers):  # "stopped": it failed and ended (its error on stderr)
        raise DfdbError(f"a fleet worker process failed while answering {command!r}")
    return [item for answer in answers for item in answer]


async def _revision(nb: NbApi) -> int:
    return parse_cursor((await nb.list(MODELS[0])).cursor)[1]


class _Writer:
    """Changes ports, stamping each name with its write time (``w`` + nanoseconds)."""

    def __init__(self, nb: NbApi, topology: Topology, seed: int) -> None:
        self.nb = nb
        self.topology = topology
        self.rng = random.Random(seed)
        self.held: dict[tuple[int, int], LogicalPort] = {}
        self.chassis: Chassis | None = None
        self.marks = 0
        self.writes = 0
        self.deliveries = 0  # how many controllers each write should reach, in all

    async def write(self) -> None:
        t, p = self.rng.randrange(self.topology.tenants), self.rng.randrange(max(self.topology.ports, 1))
        port = self.held.get((t, p)) or await self.nb.get(LogicalPort, f"lp-{t}-{p}")
        stored = await self.nb.update(port.model_copy(update={"name": f"w{time.time_ns()}"}))
        self.held[(t, p)] = stored
        self.writes += 1
        self.deliveries += len(self.topology.homes(t))

    async def mark(self) -> None:
        """Change what every controller holds (a chassis: the one global table), to time
        convergence by: each controller applies it as it comes, where a change outside its
        scope is known to be passed only when its stream's next read returns (on Redis,
        every ``block`` seconds)."""
        chassis = self.chassis or await self.nb.get(Chassis, chassis_id(0))
        self.marks += 1
        address = ipaddress.ip_address(0x0B000000 + self.marks % 0xFFFFFF)
        self.chassis = await self.nb.update(chassis.model_copy(update={"external_host_ip": address}))

    async def steady(self, rate: float, duration: float) -> float:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < duration:
            await self.write()
            n += 1
            ahead = start + n / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        return time.monotonic() - start


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def _spawn(cfg: FleetConfig, url: str, topology: Topology) -> list[_Worker]:
    ctx = multiprocessing.get_context("spawn")
    count = max(1, min(cfg.workers, cfg.controllers))
    relists = {"rate": cfg.relist_rate, "burst": float(cfg.relist_burst), "jitter": cfg.relist_jitter}
    relists["starts"] = float(cfg.starts)
    workers = []
    for w in range(count):
        indexes = list(range(w, cfg.controllers, count))
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=worker_main, args=(child, url, indexes, topology, relists), name=f"dfdb-fleet-{w}", daemon=True
        )
        proc.start()
        child.close()
        workers.append(_Worker(proc, parent, indexes))
    return workers


async def _stop(workers: list[_Worker]) -> None:
    loop = asyncio.get_running_loop()
    for w in workers:
        try:
            os.kill(w.process.pid or 0, signal.SIGCONT)
            w.conn.send(("stop", None))
            await asyncio.wait_for(loop.run_in_executor(None, w.conn.recv), 60)
        except (OSError, EOFError, TimeoutError):
            pass
        w.process.join(10)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(5)


async def _converge(workers: list[_Worker], nb: NbApi, start: float, within: float) -> dict[str, Any]:
    """Wait until every controller applied every change up to now; seconds from ``start``."""
    revision = await _revision(nb)
    done = await _ask(workers, "wait", (revision, within))
    late = [t for t in done if t is None]
    took = sorted(t - start for t in done if t is not None)
    finish = took[-1] if took else 0.0
    median = took[len(took) // 2] if took else None
    return {"converged_s": round(finish, 3), "median_s": median, "not_converged": len(late), "revision": revision}


async def _totals(workers: list[_Worker], sizes: bool = False) -> dict[str, Any]:
    stats = await _ask(workers, "stats", sizes)
    errors = [s["error"] for s in stats if s.get("error")]
    keys = ["objects", "listed_bytes", "records_read", "bytes_read", "resyncs", "reconnects", "relist_wait", "relisted"]
    keys.append("start_retries")
    totals: dict[str, Any] = {k: sum(s.get(k, 0) for s in stats) for k in keys}
    totals["errors"] = errors
    totals["per_controller"] = {k: _spread(s.get(k, 0) for s in stats) for k in ("objects", "records_read")}
    return totals


def _spread(values: Any) -> dict[str, float]:
    vals = list(values)
    if not vals:
        return {}
    return {"min": min(vals), "mean": round(statistics.fmean(vals)), "max": max(vals)}


async def _load(nb: NbApi, topology: Topology) -> float:
    start = time.monotonic()
    await nb.create_many(topology.chassis_objects())
    batch: list[Any] = []
    for t in range(topology.tenants):
        batch += topology.tenant_objects(t)
        if len(batch) >= 2000 or t == topology.tenants - 1:
            await nb.create_many(batch)
            batch = []
    return time.monotonic() - start


async def _clear(nb: NbApi) -> None:
    for model in reversed(MODELS):
        ids = [obj.id for obj in await nb.get_all(model)]
        for i in range(0, len(ids), 200):
            await gather_outcomes(lambda id, model=model: nb.delete(model, id), ids[i : i + 200])  # type: ignore[misc]


def _signal(workers: list[_Worker], sig: signal.Signals) -> None:
    for w in workers:
        if w.process.pid is not None:
            os.kill(w.process.pid, sig)


def server_for(cfg: FleetConfig) -> LocalServer:
    """The local server ``cfg`` asks for (not started)."""
    if cfg.server == "etcd":
        return EtcdServer(cfg.members, progress_interval=f"{round(cfg.etcd_progress * 1000)}ms")
    return SERVERS[str(cfg.server)](cfg.members)


async def run_fleet(cfg: FleetConfig) -> FleetResult:
    """Run the simulator with ``cfg``; the result says what it measured and whether the
    controllers converged (``ok``).

    Raises:
        ConfigurationError: no database, an in-process one, or a database that holds objects.
    """
    unknown = set(cfg.scenarios) - set(SCENARIOS)
    if unknown:
        raise ConfigurationError(f"unknown fleet scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    if not cfg.scenarios:
        raise ConfigurationError(f"no fleet scenario to run; known: {', '.join(SCENARIOS)}")
    objects = _topology(cfg).objects
    if objects > MAX_OBJECTS:
        raise ConfigurationError(f"a fleet of {objects:,} objects is too large: at most {MAX_OBJECTS:,}")
    server: LocalServer | None = None
    if cfg.server is not None:
        if cfg.server not in ("redis", "etcd", "zookeeper"):
            raise ConfigurationError(f"dfdb fleet starts redis, etcd or zookeeper servers, not {cfg.server!r}")
        server = server_for(cfg)
        server.ready_within = 120.0  # a restart under a fleet's load, on a shared host
        server.start()
    try:
        url = server.url if server is not None else cfg.url
        if not url:
            raise ConfigurationError("dfdb fleet needs --db URL (or --server redis|etcd|zookeeper)")
        if url.startswith("memory:"):
            raise ConfigurationError("dfdb fleet runs controllers in other processes: memory:// cannot be shared")
        return await _run(cfg, url, server)
    finally:
        if server is not None:
            server.stop()


def _topology(cfg: FleetConfig) -> Topology:
    return Topology(cfg.controllers, cfg.tenants or cfg.controllers, cfg.ports, cfg.spread)


def _controllers_url(cfg: FleetConfig, url: str) -> str:
    """The URL of the controllers' connections: ``url`` with ``cfg.url_options``.

    Raises:
        ConfigurationError: an option the URL's driver refuses (checked here, before the
            worker processes would each meet it).
    """
    options = cfg.url_options.strip("?&")
    if options:
        url = f"{url}{'&' if '?' in url else '?'}{options}"
    connect(url)  # checks the URL and its options; connects only when entered
    return url


async def _run(cfg: FleetConfig, url: str, server: LocalServer | None) -> FleetResult:
    topology = _topology(cfg)
    controllers_url = _controllers_url(cfg, url)
    async with connect(url, timeout=cfg.timeout):
        pass  # a server that cannot be reached is an error within the timeout asked for
    cpu = _Cpu(server)
    # the writer's connection: time to answer on a host whose CPU the fleet takes
    began = time.time()
    async with connect(url, timeout=60) as nb:
        stored = [m.__table__ for m in MODELS if await nb.get_all(m)]
        if stored:
            raise ConfigurationError(f"dfdb fleet needs an empty database, and {nb.url} holds {', '.join(stored)}")
        load = await _load(nb, topology)
        result = FleetResult(asdict(cfg), nb.url.scheme, topology.objects, round(load, 2))
        result.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began))
        result.cpus = os.cpu_count() or 0
        result.load_average["start"] = [round(x, 2) for x in os.getloadavg()]
        workers = _spawn(cfg, controllers_url, topology)
        try:
            await _scenarios(cfg, nb, workers, server, cpu, topology, result)
            checks = await _ask(workers, "check")
            diverged = [c for c in checks if c["diff"]]
            result.scenarios["check"] = {"controllers": len(checks), "diverged": len(diverged)}
            result.failures += [f"controller {c['index']} differs from the database: {c['diff']}" for c in diverged]
            result.load_average["end"] = [round(x, 2) for x in os.getloadavg()]
            result.memory_mib = {"workers": _peak_rss([w.process.pid for w in workers], "VmHWM")}
            result.memory_mib["server"] = _peak_rss([p.pid for p in server.processes if p], "VmRSS") if server else None
        finally:
            await _stop(workers)
            if server is None:  # leave the database as found
                await _clear(nb)
    return result


async def _scenarios(
    cfg: FleetConfig,
    nb: NbApi,
    workers: list[_Worker],
    server: LocalServer | None,
    cpu: _Cpu,
    topology: Topology,
    result: FleetResult,
) -> None:
    writer = _Writer(nb, topology, cfg.seed)
    await _ask(workers, "stats")  # every worker is up (imported, listening) before the clock starts
    start = time.time()
    sched = _schedstat(workers)
    refusals = Refusals(server)
    await asyncio.to_thread(refusals.mark)
    with cpu.watching():
        reports = await _ask(workers, "start", cfg.within)
        ran, waited = (round(b - a, 1) for a, b in zip(sched, _schedstat(workers), strict=True))
        ready = [r["ready"] for r in reports if r.get("ready")]
        cold = await _totals(workers, sizes=True)
        cold["converged_s"] = round(max(ready, default=start) - start, 3)
        cold["not_converged"] = cfg.controllers - len(ready)
        cold["peak_server_cpu_pct"] = cpu.figure()
        cold["workers_cpu_s"], cold["workers_waited_for_cpu_s"] = ran, waited
        cold["cpu_ms_per_controller"] = round(1000 * ran / max(len(ready), 1), 1)
        cold["connections"] = await asyncio.to_thread(refusals.figures)
    result.scenarios["cold"] = cold
    _save(cfg, result)
    result.failures += [f"cold start: {e}" for e in cold["errors"]]
    if cold["not_converged"]:
        result.failures.append(f"cold start: {cold['not_converged']} controllers not ready")
    if "idle" in cfg.scenarios:
        result.scenarios["idle"] = await _idle(cfg, workers, cpu, len(ready))
        _save(cfg, result)
    if "steady" in cfg.scenarios:
        await _ask(workers, "latencies")
        with cpu.watching():
            took = await writer.steady(cfg.rate, cfg.duration)
            last = time.time()
            await writer.mark()  # after the last write: every controller applies it
            steady = await _converge(workers, nb, last, cfg.within)
            steady["peak_server_cpu_pct"] = cpu.figure()
        lat = await _ask(workers, "latencies")
        steady |= {"writes": writer.writes, "seconds": round(took, 2), "rate": round(writer.writes / took, 1)}
        # a consumer that lags gets an object's pending updates merged: fewer events than deliveries
        steady |= {"events": len(lat), "deliveries": writer.deliveries}
        steady |= {"p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99)}
        result.scenarios["steady"] = steady
        _save(cfg, result)
        if steady["not_converged"]:
            result.failures.append(f"steady state: {steady['not_converged']} controllers did not converge")
    if "restart" in cfg.scenarios and server is not None:
        result.scenarios["restart"] = await _disruption(cfg, nb, workers, server, cpu, writer, lose=False)
        _save(cfg, result)
    if "history" in cfg.scenarios:
        result.scenarios["history"] = await _disruption(cfg, nb, workers, server, cpu, writer, lose=True)
    for name in ("restart", "history"):
        scen = result.scenarios.get(name)
        if scen is not None and scen["not_converged"]:
            result.failures.append(f"{name}: {scen['not_converged']} controllers did not converge")


async def _idle(cfg: FleetConfig, workers: list[_Worker], cpu: _Cpu, loaded: int) -> dict[str, Any]:
    """Nothing written for ``cfg.duration`` seconds: what the loaded controllers cost the
    worker processes and the server meanwhile (their timers, reads and checks)."""
    await asyncio.sleep(min(cfg.duration, 5.0))  # the loads' background validation is over
    sched, server = _schedstat(workers), cpu.used()
    start = time.monotonic()
    await asyncio.sleep(cfg.duration)
    took = time.monotonic() - start
    ran = _schedstat(workers)[0] - sched[0]
    after = cpu.used()
    per = 1000 * ran / max(loaded, 1) / took
    out: dict[str, Any] = {"seconds": round(took, 2), "workers_cpu_s": round(ran, 2)}
    out["cpu_ms_per_controller_s"] = round(per, 3)
    out["server_cpu_pct"] = (
        round(100 * (after - server) / took, 1) if after is not None and server is not None else None
    )
    return out


async def _disruption(
    cfg: FleetConfig,
    nb: NbApi,
    workers: list[_Worker],
    server: LocalServer | None,
    cpu: _Cpu,
    writer: _Writer,
    *,
    lose: bool,
) -> dict[str, Any]:
    """A server restart with its data (``lose`` false), or history lost beyond every
    controller's cursor: the controllers are stopped (SIGSTOP), the server restarted,
    ``cfg.lost`` changes written and the history compacted, then the controllers go on."""
    before = await _totals(workers)
    await _ask(workers, "limiter")
    held = {s["index"]: (s.get("resyncs", 0), s.get("objects", 0)) for s in await _ask(workers, "stats")}
    refusals = Refusals(server)
    with cpu.watching():
        if lose:
            _signal(workers, signal.SIGSTOP)
        try:
            if server is not None and server.members > 1:  # the leader, killed and started again
                leader = await asyncio.to_thread(server.leader)  # type: ignore[attr-defined]
                await asyncio.to_thread(server.restart, leader)  # type: ignore[attr-defined]
            elif server is not None:
                await asyncio.to_thread(server.restart)  # type: ignore[attr-defined]
            # from here on the server is up: what the controllers' reconnects and relists meet
            await asyncio.to_thread(refusals.mark)
            if lose:
                for _ in range(cfg.lost):
                    await writer.write()
                await nb.driver.compact()
        finally:
            if lose:
                _signal(workers, signal.SIGCONT)
        start = time.time()
        await writer.mark()  # a change after the disruption, which every controller holds
        out = await _converge(workers, nb, start, cfg.within)
        out["peak_server_cpu_pct"] = cpu.figure()
        out["connections"] = await asyncio.to_thread(refusals.figures)
    after = await _totals(workers)
    stats = await _ask(workers, "stats")
    out["objects_relisted"] = after["relisted"] - before["relisted"]  # what the relists read (their scopes only)
    relisting = [s for s in stats if s.get("resyncs", 0) > held[s["index"]][0]]
    out["objects_held_by_relisting"] = sum(s.get("objects", 0) for s in relisting)
    out["relists"] = after["resyncs"] - before["resyncs"]
    out["reconnects"] = after["reconnects"] - before["reconnects"]
    out["records_read"] = after["records_read"] - before["records_read"]
    # what the controllers read in all: the objects relisted and the change records
    out["records_read_total"] = out["objects_relisted"] + out["records_read"]
    out["bytes_read"] = after["bytes_read"] - before["bytes_read"]
    out["relist_wait_s"] = round(after["relist_wait"] - before["relist_wait"], 2)
    out["errors"] = after["errors"]
    out["start_retries"] = after["start_retries"] - before["start_retries"]
    # relists running at once, at most: the sum of each process's peak
    out["peak_relists_at_once"] = sum(w["peak_active"] for w in await _ask(workers, "limiter"))
    return out
