"""The workload of the benchmark cases: sizes, the ports written, and a fresh
namespace per run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from dfdb.models import LogicalPort
from dfdb.url import DatabaseURL

__all__ = ["POLL_INTERVAL", "Namespaces", "Sizes", "sample_port", "sample_values"]

POLL_INTERVAL = 0.05
"""Seconds between polls in the polling-mode latency rows."""


@dataclass(frozen=True)
class Sizes:
    """How much each case does."""

    seq: int = 1000
    bulk: int = 100_000
    events: int = 2000
    poll_events: int = 300
    controllers: int = 50
    fanout_writes: int = 10_000
    repeat: int = 5
    growth: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    """The ports of the growth rows (:mod:`~dfdb.bench.growth`), loaded one size after another."""

    @classmethod
    def quick(cls) -> Sizes:
        """Seconds per backend: a smoke test, not a measurement."""
        return cls(
            seq=40, bulk=400, events=40, poll_events=10, controllers=5, fanout_writes=200, repeat=2, growth=(100, 1000)
        )


def sample_port(i: int, run: str, topics: int = 20) -> LogicalPort:
    """Port ``i`` of run ``run``, on one of ``topics`` tenants."""
    return LogicalPort(
        id=f"{run}-{i}",
        topic=f"tenant-{i % topics}",
        lswitch=f"ls-{i % 50}",
        ips=(f"10.{i % 200}.{i % 250}.5",),
        macs=(f"fa:16:3e:00:{i % 256:02x}:{i // 256 % 256:02x}",),
    )


def sample_values(n: int, run: str) -> list[bytes]:
    """The JSON documents of the first ``n`` ports of run ``run``, as dfdb stores them."""
    return [sample_port(i, run).model_dump_json().encode() for i in range(n)]


class Namespaces:
    """A fresh namespace of ``base`` per run, and their removal afterwards."""

    def __init__(self, base: DatabaseURL, tmp: Path) -> None:
        self.base = base
        self.tmp = tmp
        self.made: list[str] = []

    def remember(self, name: str) -> str:
        """Note ``name`` for removal at the end; returns it."""
        if name not in self.made:
            self.made.append(name)
        return name

    def url(self, name: str, **options: str) -> DatabaseURL:
        """The URL of namespace ``name`` (noted for removal), with ``options`` added."""
        base = self.base
        self.remember(name)
        opts = {**base.options, **options}
        if base.scheme == "memory":
            return dataclasses.replace(base, path=name, options=opts)
        if base.scheme == "sqlite":
            return dataclasses.replace(base, path=str(self.tmp / f"{name}.db"), options=opts)
        if base.scheme.startswith("redis"):  # the path of redis+sentinel:// names the master
            return dataclasses.replace(base, options={**opts, "prefix": name})
        return dataclasses.replace(base, path=name, options=opts)  # etcd, zk: the path is the prefix
