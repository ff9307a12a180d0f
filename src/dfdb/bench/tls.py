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
    """A markdown section: medians over the runs and the ratio TLS / plain."""

    def med(values: list[float]) -> float:
        return statistics.median(values)

    lines = [
        "## TLS cost",
        "",
        f"`{command}`",
        "",
        "dfdb on a plain server and on a TLS-only server of the same backend (local CA; the client presents a "
        "certificate), interleaved in the same process; medians over the runs, and their ratio TLS / plain (both from the "
        "same runs)." + (f" {note}" if note else ""),
        "",
        "| backend | sequential create, plain (obj/s) | TLS (obj/s) | TLS / plain | event p50, plain (ms) | TLS (ms) "
        "| TLS / plain | event p99, plain (ms) | TLS (ms) | TLS / plain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in costs:
        row = [
            c.backend,
            f"{med(c.create_plain):,.0f}",
            f"{med(c.create_tls):,.0f}",
            f"{med(c.create_tls) / med(c.create_plain):.2f}",
            f"{med(c.p50_plain):.2f}",
            f"{med(c.p50_tls):.2f}",
            f"{med(c.p50_tls) / med(c.p50_plain):.2f}",
            f"{med(c.p99_plain):.2f}",
            f"{med(c.p99_tls):.2f}",
            f"{med(c.p99_tls) / med(c.p99_plain):.2f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
