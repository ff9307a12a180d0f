"""``dfdb demo``: a whole deployment in one process.

A writer builds a topology (tenants x switches with subnets, routers, security
groups, QoS policies, ports bound to chassis, floating IPs) and keeps changing it,
while several local controllers follow it through change streams. The summary
reports writes, events per controller, write→event latency and a convergence
check of every controller's view against the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from dfdb.drivers.base import Capability
from dfdb.events import Action, parse_cursor
from dfdb.models import (
    Chassis,
    FloatingIp,
    LogicalPort,
    LogicalRouter,
    LogicalSwitch,
    PortBinding,
    QosPolicy,
    RouterPort,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
from dfdb.nb import NbApi
from dfdb.nbmodel import NbModel
from dfdb.presence import Presence, live_services, publish_presence
from dfdb.replica import ChassisTopics, Replica, SyncMode

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

MODELS: tuple[type[NbModel], ...] = (
    Chassis,
    QosPolicy,
    SecurityGroup,
    LogicalSwitch,
    Subnet,
    LogicalPort,
    LogicalRouter,
    FloatingIp,
)

Key = tuple[str, str]


@dataclass
class DemoConfig:
    """Sizes of the demo deployment."""

    tenants: int = 4
    switches: int = 2
    ports: int = 8
    controllers: int = 3
    changes: int = 2000
    seed: int = 1
    mode: str = "stream"
    """``stream`` (each controller a ChangeStream), or a Replica mode: ``full``,
    ``selective`` (tenants with a port on the controller's chassis) or ``reactive``
    (the controller's own ports, fetched)."""
    spread: int = 1
    """The chassis each tenant's ports sit on (tenants are laid round the chassis), so a
    selective controller holds only the tenants with a port on its chassis."""


@dataclass
class ControllerResult:
    """What one controller saw."""

    name: str
    events: int = 0
    objects: int = 0
    latencies: list[float] = field(default_factory=list)
    converged: bool = False
    diff: str = ""
    records_read: int | None = None


@dataclass
class DemoResult:
    """The demo's outcome; ``ok`` is false when a controller diverged."""

    objects_written: int
    writes: int
    write_seconds: float
    controllers: list[ControllerResult]
    services: list[str] = field(default_factory=list)
    """The controllers that registered their presence (``dfdb status``), as chassis/name."""

    @property
    def ok(self) -> bool:
        return all(c.converged for c in self.controllers)


class _Controller:
    """A local controller: a full copy of the topology kept by one change stream."""

    def __init__(self, nb: NbApi, name: str, sent: dict[tuple[str, str, int], float]) -> None:
        self.nb = nb
        self.result = ControllerResult(name)
        self.store: dict[Key, NbModel] = {}
        self.position = 0
        self.ready = asyncio.Event()
        self.progress = asyncio.Event()
        self._sent = sent

    async def run(self) -> None:
        first = await self.nb.list(MODELS[0])
        async with self.nb.watch(MODELS, since=first.cursor) as stream:
            listed: dict[str, int] = {}
            for model in MODELS:
                listing = first if model is MODELS[0] else await self.nb.list(model)
                listed[model.__table__] = parse_cursor(listing.cursor)[1]
                for obj in listing.items:
                    self.store[(model.__table__, obj.id)] = obj
            self.position = parse_cursor(stream.cursor)[1]
            self.ready.set()
            async for ev in stream:
                self.position = parse_cursor(ev.cursor)[1]
                self.progress.set()
                if ev.action == Action.RESYNC or ev.model is None:
                    continue
                table = ev.model.__table__
                if ev.revision <= listed.get(table, 0):
                    continue  # already in the listing
                self.result.events += 1
                now = time.perf_counter()
                key = (table, ev.id)
                if ev.action == Action.DELETE:
                    self.store.pop(key, None)
                    started = self._sent.get((table, ev.id, -1))
                elif ev.obj is not None:
                    self.store[key] = ev.obj
                    started = self._sent.get((table, ev.id, ev.obj.version))
                else:
                    started = None
                if started is not None:
                    self.result.latencies.append(now - started)


class _Writer:
    def __init__(self, nb: NbApi, cfg: DemoConfig, sent: dict[tuple[str, str, int], float]) -> None:
        self.nb = nb
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.sent = sent
        self.writes = 0
        self.created = 0
        self.ports: dict[str, LogicalPort] = {}
        self.chassis: list[str] = []
        self.homes: dict[str, list[str]] = {}  # tenant -> the chassis its ports sit on
        self.switches: dict[str, list[str]] = {}
        self.groups: dict[str, list[str]] = {}

    async def create(self, obj: NbModel) -> NbModel:
        self.sent[(type(obj).__table__, obj.id, 1)] = time.perf_counter()
        stored = await self.nb.create(obj)
        self.writes += 1
        self.created += 1
        return stored

    async def update(self, obj: NbModel) -> NbModel:
        self.sent[(type(obj).__table__, obj.id, obj.version + 1)] = time.perf_counter()
        stored = await self.nb.update(obj)
        self.writes += 1
        return stored

    async def delete(self, model: type[NbModel], id: str) -> None:
        self.sent[(model.__table__, id, -1)] = time.perf_counter()
        await self.nb.delete(model, id)
        self.writes += 1

    async def build(self) -> None:
        cfg = self.cfg
        for c in range(cfg.controllers):
            ch = Chassis(id=f"chassis-{c}", ip=ipaddress.ip_address(f"192.0.2.{c + 1}"))
            self.chassis.append((await self.create(ch)).id)
        for t in range(cfg.tenants):
            topic = f"tenant-{t}"
            spread = min(cfg.spread, len(self.chassis))
            self.homes[topic] = [self.chassis[(t * spread + k) % len(self.chassis)] for k in range(spread)]
            qos = await self.create(QosPolicy(id=f"qos-{t}", topic=topic, max_kbps=10_000 * (t + 1)))
            sg = await self.create(
                SecurityGroup(
                    id=f"sg-{t}",
                    topic=topic,
                    name="default",
                    rules=(SecurityGroupRule(id=f"sg-{t}-r0", remote_group=f"sg-{t}"),),
                )
            )
            self.groups[topic] = [sg.id]
            switch_ids: list[str] = []
            router_ports: list[RouterPort] = []
            for s in range(cfg.switches):
                sw_id = f"ls-{t}-{s}"
                await self.create(
                    LogicalSwitch(
                        id=sw_id, topic=topic, name=f"net{s}", segmentation_id=1000 + t * 64 + s, qos_policy=qos.id
                    )
                )
                net = ipaddress.ip_network(f"10.{t}.{s}.0/24")
                await self.create(Subnet(id=f"subnet-{t}-{s}", topic=topic, cidr=net, gateway_ip=net[1], lswitch=sw_id))
                router_ports.append(
                    RouterPort(id=f"rp-{t}-{s}", lswitch=sw_id, mac=_mac(t, s, 0), network=f"{net[1]}/24")
                )
                switch_ids.append(sw_id)
                for p in range(cfg.ports):
                    await self.new_port(topic, t, s, p)
            self.switches[topic] = switch_ids
            await self.create(LogicalRouter(id=f"lr-{t}", topic=topic, name=f"router{t}", ports=tuple(router_ports)))
            first_port = next(iter(p for p in self.ports.values() if p.topic == topic), None)
            await self.create(
                FloatingIp(
                    id=f"fip-{t}",
                    topic=topic,
                    floating_ip_address=ipaddress.ip_address(f"203.0.113.{t + 1}"),
                    lport=first_port.id if first_port else None,
                    lrouter=f"lr-{t}",
                )
            )

    async def new_port(self, topic: str, t: int, s: int, p: int) -> None:
        port = LogicalPort(
            id=f"lp-{t}-{s}-{p}",
            topic=topic,
            lswitch=f"ls-{t}-{s}",
            ips=(ipaddress.ip_address(f"10.{t}.{s}.{p + 10}"),),
            macs=(_mac(t, s, p + 1),),
            binding=PortBinding(chassis=self.rng.choice(self.homes[topic])),
            security_groups=tuple(self.groups.get(topic, ())),
            device_owner="compute:nova",
        )
        stored = await self.create(port)
        assert isinstance(stored, LogicalPort)
        self.ports[stored.id] = stored

    async def churn(self) -> None:
        for n in range(self.cfg.changes):
            port_id = self.rng.choice(sorted(self.ports))
            port = self.ports[port_id]
            roll = self.rng.random()
            if roll < 0.6:
                new = port.model_copy(update={"name": f"vm-{n}", "enabled": not port.enabled})
            elif roll < 0.9:
                home = self.homes[port.topic or ""]
                new = port.model_copy(update={"binding": PortBinding(chassis=self.rng.choice(home))})
            else:
                await self.delete(LogicalPort, port_id)
                del self.ports[port_id]
                _, t, s, p = port_id.split("-")
                await self.new_port(port.topic or "", int(t), int(s), int(p))
                continue
            stored = await self.update(new)
            assert isinstance(stored, LogicalPort)
            self.ports[port_id] = stored
            await asyncio.sleep(0)  # let the controllers run on in-process backends


def _mac(t: int, s: int, p: int) -> str:
    return f"fa:16:3e:{t % 256:02x}:{s % 256:02x}:{p % 256:02x}"


async def _snapshot(nb: NbApi) -> dict[Key, NbModel]:
    state: dict[Key, NbModel] = {}
    for model in MODELS:
        for obj in await nb.get_all(model):
            state[(model.__table__, obj.id)] = obj
    return state


class _ReplicaController:
    """A local controller as a :class:`~dfdb.Replica` on chassis ``chassis``."""

    def __init__(self, nb: NbApi, name: str, chassis: str, mode: SyncMode) -> None:
        self.nb = nb
        self.result = ControllerResult(name)
        self.chassis = chassis
        self.replica = Replica(nb, MODELS, mode=mode, max_objects=100_000)
        self.helper: ChassisTopics | None = None
        self.presence: Presence | None = None

    async def start(self) -> None:
        await self.replica.__aenter__()
        if self.nb.driver.capabilities & Capability.LEASES:  # registered while it runs: dfdb status lists it
            self.presence = publish_presence(self.nb, self.result.name, chassis=self.chassis, replica=self.replica)
            await self.presence.__aenter__()
        if self.replica.mode is SyncMode.SELECTIVE:
            self.helper = ChassisTopics(self.replica, self.chassis)

    async def local_ports(self) -> None:
        """What the local switch reports: the ports bound to this chassis now."""
        ports = [p for p in await self.nb.get_all(LogicalPort) if p.binding and p.binding.chassis == self.chassis]
        if self.helper is not None:
            mine = {(p.topic, p.id) for p in ports}
            for topic in list(self.replica.topics):
                for port_id in self.helper.local_ports(topic):
                    if (topic, port_id) not in mine:
                        await self.helper.port_unbound(topic, port_id)
            for port in ports:
                await self.helper.port_bound(port)
        elif self.replica.mode is SyncMode.REACTIVE:
            for port in ports:
                await self.replica.fetch(LogicalPort, port.id)

    async def settle(self, revision: int, truth: dict[Key, NbModel], within: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.replica.wait_for(revision)
        held = {(m.__table__, o.id): o for m in MODELS for o in self.replica.get_all(m)}
        if self.replica.mode is SyncMode.FULL:
            scope = truth
        elif self.replica.mode is SyncMode.SELECTIVE:
            topics = {None, *self.replica.topics}
            scope = {k: o for k, o in truth.items() if o.topic in topics}
            scope |= {k: truth[k] for k in held.keys() - scope.keys() if k in truth}  # kept by reference
        else:
            scope = {k: truth[k] for k in held if k in truth}
        missing = scope.keys() - held.keys()
        extra = held.keys() - scope.keys()
        stale = [k for k in scope.keys() & held.keys() if scope[k].model_dump() != held[k].model_dump()]
        stats = self.replica.stats()
        self.result.objects = stats.objects
        self.result.events = stats.events
        self.result.records_read = stats.records_read
        self.result.converged = not (missing or extra or stale)
        if not self.result.converged:
            self.result.diff = f"{len(missing)} missing, {len(extra)} extra, {len(stale)} stale"

    async def stop(self) -> None:
        try:
            if self.presence is not None:
                await self.presence.__aexit__(None, None, None)
        finally:
            await self.replica.aclose()


async def _run_replicas(nb: NbApi, cfg: DemoConfig, out: TextIO, settle: float) -> DemoResult:
    controllers = [
        _ReplicaController(nb, f"controller-{i}", f"chassis-{i}", SyncMode(cfg.mode)) for i in range(cfg.controllers)
    ]
    try:
        for c in controllers:
            await c.start()
        writer = _Writer(nb, cfg, {})
        started = time.perf_counter()
        await writer.build()
        for c in controllers:
            await c.local_ports()
        await writer.churn()
        elapsed = time.perf_counter() - started
        for c in controllers:
            await c.local_ports()
        final = parse_cursor((await nb.list(MODELS[-1])).cursor)[1]
        truth = await _snapshot(nb)
        for c in controllers:
            await c.settle(final, truth, settle)
        services = [f"{s.chassis}/{s.service}" for s in await live_services(nb)]
    finally:
        for c in reversed(controllers):  # each Replica's task group closes in the reverse order of opening
            await c.stop()
    result = DemoResult(writer.created, writer.writes, elapsed, [c.result for c in controllers], services)
    _print_summary(nb, cfg, result, len(truth), out)
    return result


async def run_demo(nb: NbApi, cfg: DemoConfig, out: TextIO, *, settle: float = 15.0) -> DemoResult:
    """Run the demo on ``nb`` and print its summary to ``out``."""
    if cfg.mode != "stream":
        return await _run_replicas(nb, cfg, out, settle)
    sent: dict[tuple[str, str, int], float] = {}
    controllers = [_Controller(nb, f"controller-{i}", sent) for i in range(cfg.controllers)]
    tasks = [asyncio.create_task(c.run(), name=f"dfdb-demo-{c.result.name}") for c in controllers]
    try:
        async with asyncio.timeout(settle):
            await asyncio.gather(*(c.ready.wait() for c in controllers))
        writer = _Writer(nb, cfg, sent)
        started = time.perf_counter()
        await writer.build()
        await writer.churn()
        elapsed = time.perf_counter() - started
        final = parse_cursor((await nb.list(MODELS[-1])).cursor)[1]
        truth = await _snapshot(nb)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle
        for c in controllers:
            while c.position < final or c.store != truth:
                if loop.time() >= deadline or tasks[controllers.index(c)].done():
                    break
                c.progress.clear()
                try:
                    async with asyncio.timeout(min(0.2, max(deadline - loop.time(), 0.01))):
                        await c.progress.wait()
                except TimeoutError:
                    pass
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for c, outcome in zip(controllers, results, strict=True):
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            c.result.diff = f"stream failed: {outcome!r}"
        c.result.objects = len(c.store)
        missing = truth.keys() - c.store.keys()
        extra = c.store.keys() - truth.keys()
        stale = [k for k in truth.keys() & c.store.keys() if truth[k].model_dump() != c.store[k].model_dump()]
        c.result.converged = not (missing or extra or stale or c.result.diff)
        if not c.result.converged and not c.result.diff:
            c.result.diff = f"{len(missing)} missing, {len(extra)} extra, {len(stale)} stale"
    result = DemoResult(writer.created, writer.writes, elapsed, [c.result for c in controllers])
    _print_summary(nb, cfg, result, len(truth), out)
    return result


def _ms(values: Sequence[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.2f}"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def _print_summary(nb: NbApi, cfg: DemoConfig, result: DemoResult, objects: int, out: TextIO) -> None:
    mode = "native stream" if nb.exact else f"snapshot polling every {nb.poll_interval:g}s"
    rate = result.writes / result.write_seconds if result.write_seconds else 0.0
    print(f"dfdb demo on {nb.url} ({mode})", file=out)
    print(
        f"topology: {cfg.tenants} tenants x {cfg.switches} switches x {cfg.ports} ports, "
        f"{cfg.controllers} chassis; {objects} objects in the database",
        file=out,
    )
    print(
        f"writer: {result.objects_written} objects created, {result.writes} writes in "
        f"{result.write_seconds:.2f}s ({rate:,.0f} writes/s)",
        file=out,
    )
    print(file=out)
    if cfg.mode != "stream":
        header = (
            f"{'controller':<14} {'events':>8} {'objects':>8} {'held':>6} {'records read':>14} {'read':>6}  converged"
        )
        print(f"controllers: {cfg.mode} replicas; the database holds {objects} objects, "
              f"{result.writes} change records were written", file=out)  # fmt: skip
        print(header, file=out)
        print("-" * len(header), file=out)
        for c in result.controllers:
            verdict = "yes" if c.converged else f"NO ({c.diff})"
            read = "-" if c.records_read is None else f"{c.records_read:,}"
            share = "-" if c.records_read is None else _pct(c.records_read, result.writes)
            part = _pct(c.objects, objects)
            print(f"{c.name:<14} {c.events:>8} {c.objects:>8} {part:>6} {read:>14} {share:>6}  {verdict}", file=out)
        print(
            f"{'database':<14} {result.writes:>8} {objects:>8} {'100%':>6} {result.writes:>14,} {'100%':>6}", file=out
        )
        n = len(result.controllers) or 1
        held = sum(c.objects for c in result.controllers) / n
        read_avg = sum(c.records_read or 0 for c in result.controllers) / n
        print(
            f"each controller holds {_pct(held, objects)} of the objects and reads {_pct(read_avg, result.writes)} "
            f"of the change records on average",
            file=out,
        )
        if result.services:
            print(f"presence: {len(result.services)} live controllers ({', '.join(result.services)})", file=out)
    else:
        header = f"{'controller':<14} {'events':>8} {'objects':>8} {'p50 ms':>8} {'p99 ms':>8}  converged"
        print(header, file=out)
        print("-" * len(header), file=out)
        for c in result.controllers:
            lat = c.latencies
            verdict = "yes" if c.converged else f"NO ({c.diff})"
            print(
                f"{c.name:<14} {c.events:>8} {c.objects:>8} {_ms(lat, 0.5):>8} {_ms(lat, 0.99):>8}  {verdict}",
                file=out,
            )
        all_lat = [x for c in result.controllers for x in c.latencies]
        if all_lat:
            print(
                f"{'all':<14} {sum(c.events for c in result.controllers):>8} {'':>8} "
                f"{_ms(all_lat, 0.5):>8} {_ms(all_lat, 0.99):>8}",
                file=out,
            )
    print(file=out)
    print("result: every controller converged" if result.ok else "result: DIVERGED", file=out)
