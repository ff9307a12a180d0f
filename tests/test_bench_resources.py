"""The resource overhead of a backend: /proc sampling, the measured phases, ``dfdb bench --resources``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfdb.bench.overhead import FIGURES, measure_overhead
from dfdb.bench.resources import Meter, data_dir_of, listener_pid, locate
from dfdb.servers import RedisServer
from dfdb.testing.servers import skip_missing_server


@pytest.fixture(scope="module")
def persistent_redis() -> Iterator[RedisServer]:
    """A redis-server with its append-only file, so that the data takes room on disk."""
    if not RedisServer.available():
        skip_missing_server("redis")
    with RedisServer(appendonly=True) as server:
        yield server


def bench_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfdb", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_local_server_is_found_from_its_port(persistent_redis: RedisServer) -> None:
    proc = persistent_redis.processes[0]
    assert proc is not None
    assert listener_pid(persistent_redis.port) == proc.pid
    assert data_dir_of(proc.pid) == [persistent_redis.workdir]
    target = locate(persistent_redis.url)
    assert target.pids == [proc.pid] and target.missing == []
    usage = Meter(target).sample()
    assert usage.rss is not None and usage.rss > 1_000_000
    assert usage.cpu is not None and usage.cpu >= 0


@pytest.mark.parametrize(
    ("family", "host"),
    [("AF_INET", "127.0.0.1"), ("AF_INET6", "::ffff:127.0.0.1")],
    ids=["ipv4", "ipv4-mapped"],  # the JVM (ZooKeeper) listens on IPv4-mapped IPv6 addresses
)
def test_a_listener_is_found_by_its_port(family: str, host: str) -> None:
    import os
    import socket

    with socket.socket(getattr(socket, family), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert listener_pid(port) == os.getpid()
    assert listener_pid(port) is None


def test_a_remote_or_absent_server_is_said_not_taken() -> None:
    assert "a remote server" in locate("redis://192.0.2.1:6379/0").missing[0]
    assert "no readable local process listens there" in locate("etcd://127.0.0.1:1").missing[0]


async def test_sqlite_gives_disk_and_client_cpu_but_no_server(tmp_path: Path) -> None:
    row = await measure_overhead(
        "sqlite", f"sqlite:///{tmp_path}/x.db", objects=1000, controllers=3, writes=150, within=60
    )
    figures = row.figures()
    assert row.events == 150
    disk = figures["disk per 100k objects"]
    assert disk is not None and disk > 1  # MB per 100k: each JSON document is ~200 bytes
    for name in ("client CPU per 10k writes", "client CPU per 10k events"):
        value = figures[name]
        assert value is not None and value > 0, name
    assert all(figures[n] is None for n in FIGURES if n.startswith("server"))
    assert any("SQLite has no server" in m for m in row.missing)


async def test_a_local_redis_gives_every_figure(persistent_redis: RedisServer) -> None:
    """Found from the URL alone (its listener), as for a server of your own."""
    row = await measure_overhead(
        "redis", persistent_redis.url, objects=3000, controllers=5, writes=500, cleanup=True, within=60
    )
    figures = row.figures()
    assert row.missing == [] and row.events == 500
    assert all(v is not None and v > 0 for v in figures.values()), figures


def test_bench_resources_on_memory_says_what_it_could_not_take(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = bench_cmd("--db", "memory://", "bench", "--quick", "--repeat", "1", "--resources", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "| sequential create | memory | objects/s |" in result.stdout
    assert "## Resources" in result.stdout
    assert "| server CPU per 10k writes | s | not taken |" in result.stdout
    assert "not taken: server memory, CPU and disk: memory:// has no server" in result.stdout
    resources = json.loads(out.read_text())["resources"]
    assert resources["figures"]["client CPU per 10k writes"] > 0
    assert resources["figures"]["server RSS after the load"] is None


def test_the_choosing_page_is_written(tmp_path: Path) -> None:
    """benchmarks/choose.py at tiny sizes on the serverless backends: the table, what was
    not taken, the settings, the load average and the call to regenerate."""
    out = tmp_path / "choosing.md"
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "choose.py"
    result = subprocess.run(
        [sys.executable, str(script), "--backends", "memory,sqlite", "--objects", "300", "--writes", "60",
         "--controllers", "3", "--events", "10", "--warmup", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert "| figure | unit | memory | sqlite |" in page
    assert "| server CPU per 10k writes | s | not taken | not taken |" in page
    assert "- sqlite: server memory and CPU: SQLite has no server" in page
    assert "load average" in page and "must be regenerated on a quiet machine" in page
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["backend"] for r in rows] == ["memory", "sqlite"]
    assert rows[1]["figures"]["disk per 100k objects"] > 0 and rows[1]["performance"]["write->event p99"] > 0
