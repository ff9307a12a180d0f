"""The cost of TLS: dfdb on a plain server and on a TLS-only one of the same backend.

For each server backend, two local servers are started side by side (one plain, one
serving TLS only with certificates of a local CA; the TLS URL presents a client
certificate, which etcd requires), and cases 1 and 3 of :mod:`dfdb.bench` run on both,
interleaved (plain, TLS, plain, TLS …) ``repeat`` times, each run in a namespace of its
own: sequential create (objects/s) and write→event latency (p50 and p99, ms). The
report gives the median of each and the ratio TLS / plain from the same run.
"""

from __future__ import annotations

import dataclasses
import statistics
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from dfdb.bench.cases import _dfdb_latency, _dfdb_seq, _pct
from dfdb.bench.workload import Sizes
from dfdb.servers import EtcdServer, LocalServer, RedisServer, ZooKeeperServer
from dfdb.url import DatabaseURL

__all__ = ["TLS_BACKENDS", "TlsCost", "render_tls_cost", "run_tls_cost"]

TLS_BACKENDS: dict[str, Callable[..., LocalServer]] = {
    "redis": lambda tls=False: RedisServer(appendonly=False, tls=tls),
    "etcd": lambda tls=False: EtcdServer(tls=tls),
    "zookeeper": lambda tls=False: ZooKeeperServer(tls=tls),
}
"""Backend -> a local server factory (``tls=True`` for the TLS-only one)."""


@dataclass(frozen=True)
class TlsCost:
    """One backend's figures: per run, plain and TLS."""

    backend: str
    create_plain: list[float]
    create_tls: list[float]
    p50_plain: list[float]
    p50_tls: list[float]
    p99_plain: list[float]
    p99_tls: list[float]


def _namespace(base: DatabaseURL, name: str) -> DatabaseURL:
    if base.scheme in ("redis", "rediss"):
        return dataclasses.replace(base, options={**base.options, "prefix": name})
    return dataclasses.replace(base, path=name)  # etcd, zk: the path is the prefix


async def run_tls_cost(backend: str, sizes: Sizes, *, log: TextIO | None = None) -> TlsCost:
    """Start a plain and a TLS-only server of ``backend`` and measure both."""
    factory = TLS_BACKENDS[backend]
    servers = [factory(), factory(tls=True)]
    try:
        for server in servers:
            server.start()
        bases = [DatabaseURL.parse(server.url) for server in servers]
        figures: list[list[float]] = [[] for _ in range(6)]
        for i in range(sizes.repeat):
            for k, base in enumerate(bases):
                run = uuid.uuid4().hex[:8]
                figures[k].append(await _dfdb_seq(_namespace(base, f"bench-tls-{run}"), run, sizes.seq))
            for k, base in enumerate(bases):
                run = uuid.uuid4().hex[:8]
                samples = await _dfdb_latency(_namespace(base, f"bench-tls-{run}"), run, sizes.events)
                figures[2 + k].append(_pct(samples, 0.5))
                figures[4 + k].append(_pct(samples, 0.99))
            if log is not None:
                print(f"  {backend} TLS cost: run {i + 1}/{sizes.repeat} done", file=log, flush=True)
        return TlsCost(backend, *figures)
    finally:
        for server in servers:
            server.stop()


def render_tls_cost(costs: list[TlsCost], *, command: str, note: str = "") -> str:
    """A markdown section: per figure, the median over the runs of plain and of TLS, and
    the median (lowest-highest) of the per-run ratios TLS / plain: each ratio compares
    two runs made one after the other, so a load that comes and goes weighs on both."""

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):,.{0 if statistics.median(values) >= 100 else 2}f}"

    def ratio(tls: list[float], plain: list[float]) -> str:
        each = [t / p for t, p in zip(tls, plain, strict=True)]
        return f"{statistics.median(each):.2f} ({min(each):.2f}-{max(each):.2f})"

    lines = [
        "## TLS cost",
        "",
        f"`{command}`",
        "",
        "dfdb on a plain server and on a TLS-only server of the same backend (local CA; the client presents a "
        "certificate), one run on each after the other, in the same process: the median over the runs, and the "
        "median (lowest-highest) of the per-run ratios TLS / plain." + (f" {note}" if note else ""),
        "",
        "| backend | sequential create, plain / TLS (obj/s) | TLS / plain | event p50, plain / TLS (ms) | TLS / plain "
        "| event p99, plain / TLS (ms) | TLS / plain |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in costs:
        row = [
            c.backend,
            f"{med(c.create_plain)} / {med(c.create_tls)}",
            ratio(c.create_tls, c.create_plain),
            f"{med(c.p50_plain)} / {med(c.p50_tls)}",
            ratio(c.p50_tls, c.p50_plain),
            f"{med(c.p99_plain)} / {med(c.p99_tls)}",
            ratio(c.p99_tls, c.p99_plain),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
