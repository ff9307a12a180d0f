"""The resource overhead of a backend: /proc sampling, the measured phases, ``dfdb bench --resources``."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfdb.bench.overhead import FIGURES, measure_overhead
from dfdb.bench.resources import Meter, data_dir_of, listener_pid, locate
from dfdb.sentinel_server import SentinelSetup
from dfdb.servers import RedisServer, ZooKeeperServer
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


def choose(tmp_path: Path, *args: str, block_matplotlib: bool = False) -> subprocess.CompletedProcess[str]:
    """benchmarks/choose.py at tiny sizes; with ``block_matplotlib``, as where it is not installed."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "choose.py"
    sizes = ["--objects", "300", "--writes", "60", "--controllers", "3", "--events", "10", "--warmup", "0"]
    argv = [str(script), *sizes, *args]
    code = (
        "import runpy, sys\n"
        + ("sys.modules['matplotlib'] = None\n" if block_matplotlib else "")
        + f"sys.argv = {argv!r}\nsys.path.insert(0, {str(script.parent)!r})\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


def test_the_choosing_page_is_written(tmp_path: Path) -> None:
    """benchmarks/choose.py at tiny sizes on the serverless backends: the table, what
    survives what, the copy's time, the settings, uptime at start and end, the chart."""
    out = tmp_path / "choosing.md"
    result = choose(tmp_path, "--backends", "memory,sqlite", "--copy", "sqlite>sqlite", "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert "| figure | unit | memory | sqlite |" in page
    assert "| server CPU per 10k writes | s | not taken | not taken |" in page
    assert "- sqlite: server memory and CPU: SQLite has no server" in page
    assert "started again on its data) | n/a: no server | **yes** (measured" in page
    assert "`uptime` at its start: `" in page and "; at its end: `" in page
    assert "used sizes below the defaults" in page and "must be regenerated on a quiet machine" in page
    assert "| sqlite > sqlite | " in page
    assert "**sqlite**: dfdb's defaults: WAL journal" in page
    report = json.loads(out.with_suffix(".json").read_text())
    rows = report["rows"]
    assert [r["backend"] for r in rows] == ["memory", "sqlite"]
    assert rows[1]["figures"]["disk per 100k objects"] > 0 and rows[1]["performance"]["write->event p99"] > 0
    assert report["sqlite reopened"]["kept"] == report["sqlite reopened"]["written"] == 20
    assert report["copy seconds"]["sqlite > sqlite"] > 0
    assert len(report["uptime"]) == 2 and "load average" in report["uptime"][1]
    if importlib.util.find_spec("matplotlib") is not None:
        assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
        assert "![latency against resource use](choosing.png)" in page
    again = tmp_path / "again.md"
    result = choose(tmp_path, "--render", str(out.with_suffix(".json")), "--out", str(again))
    assert result.returncode == 0, result.stderr
    assert again.read_text() == page.replace("(choosing.png)", "(again.png)")


def test_the_choosing_page_says_when_there_is_no_chart(tmp_path: Path) -> None:
    out = tmp_path / "choosing.md"
    result = choose(tmp_path, "--backends", "memory", "--copy", "", "--out", str(out), block_matplotlib=True)
    assert result.returncode == 0, result.stderr
    assert "No chart: matplotlib is not installed" in out.read_text()
    assert "No chart: matplotlib is not installed" in result.stderr
    assert not out.with_suffix(".png").exists()


def test_choose_refuses_unknown_set_ups_in_one_line(tmp_path: Path) -> None:
    result = choose(tmp_path, "--backends", "memory,mysql", "--out", str(tmp_path / "x.md"))
    assert result.returncode == 2 and "unknown set-up(s) mysql" in result.stderr
    result = choose(tmp_path, "--copy", "memory>sqlite", "--out", str(tmp_path / "x.md"))
    assert result.returncode == 2 and "other than memory" in result.stderr


@pytest.mark.parametrize(("force_sync", "line"), [(False, "forceSync=no"), (True, "forceSync=yes")])
def test_zookeeper_force_sync_is_configurable(force_sync: bool, line: str) -> None:
    server = ZooKeeperServer(force_sync=force_sync)
    try:
        assert line in server._config(0).read_text().splitlines()
    finally:
        server.stop()


def test_a_sentinel_set_up_is_measured_whole() -> None:
    """Every data server and every sentinel is sampled, and the data folder holds all of them."""
    if not SentinelSetup.available():
        skip_missing_server("redis")
    with SentinelSetup(down_after=10) as setup:
        target = locate(setup.url, setup)
        processes = [*setup.processes, *setup.sentinel_processes]
        assert sorted(target.pids) == sorted(p.pid for p in processes if p is not None)
        assert len(target.pids) == 6 and target.data == [setup.workdir]
        usage = Meter(target).sample()
        assert usage.rss is not None and usage.rss > 6 * 1_000_000
