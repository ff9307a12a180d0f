"""The fleet simulator, small: a couple of dozen selective controllers in two worker processes
on a SQLite file, through a cold start, the steady state and a history loss."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path
from typing import Any

import pytest

import dfdb
from dfdb import Replica, SyncMode
from dfdb.cli import main
from dfdb.fleet.conns import Refusals
from dfdb.fleet.run import FleetConfig, server_for
from dfdb.fleet.topology import Topology
from dfdb.servers import EtcdServer, RedisServer


def test_a_small_fleet_converges_through_every_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures_file = tmp_path / "fleet.json"
    args = ["fleet", "--db", f"sqlite:///{tmp_path}/fleet.db", "--controllers", "24", "--workers", "2"]
    args += ["--ports", "4", "--spread", "2", "--rate", "40", "--duration", "1", "--lost", "30"]
    args += ["--relist-rate", "10", "--relist-burst", "2", "--relist-jitter", "0.1", "--within", "60"]
    assert main([*args, "--json", str(figures_file)]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    for line in ("cold start:", "idle:", "steady state:", "history lost:", "result: every controller converged"):
        assert line in out
    result = json.loads(figures_file.read_text())
    assert result["ok"] and result["failures"] == []
    held = 24 + 2 * 12  # the chassis and two tenants of 4 ports and 8 other objects
    assert result["objects"] == Topology(24, 24, 4, 2).objects == 24 + 24 * 12
    cold = result["scenarios"]["cold"]
    assert cold["per_controller"]["objects"] == {"min": held, "mean": held, "max": held}
    assert cold["not_converged"] == 0 and cold["errors"] == []
    assert cold["cpu_ms_per_controller"] > 0
    idle = result["scenarios"]["idle"]  # nothing written: what following costs the workers
    assert idle["seconds"] >= 1 and idle["cpu_ms_per_controller_s"] >= 0 and idle["server_cpu_pct"] is None
    steady = result["scenarios"]["steady"]
    assert steady["writes"] > 0 and steady["not_converged"] == 0
    assert 0 < steady["events"] <= steady["deliveries"] == 2 * steady["writes"]
    assert steady["p50_ms"] is not None and steady["p50_ms"] <= steady["p99_ms"]
    history = result["scenarios"]["history"]
    assert history["not_converged"] == 0
    assert history["relists"] == 24  # everyone lost history, and relisted once
    # a relist reads only the values changed meanwhile (its scope's ids and revisions first): each
    # lost port change is held by 2 controllers, the change that times convergence by all 24
    assert 0 < history["objects_relisted"] <= 2 * 30 + 24 < 24 * held
    assert history["records_read_total"] == history["objects_relisted"] + history["records_read"]
    # no server of its own: nothing of the server's to ask, the host's TCP counters only
    assert history["connections"]["server_rejected"] is None and history["connections"]["host_listen_drops"] >= 0
    assert result["started"].endswith("Z") and result["cpus"] >= 1
    assert result["memory_mib"]["workers"] > 0 and result["memory_mib"]["server"] is None
    assert history["relist_wait_s"] > 0  # the relists waited for their turn
    assert 1 <= history["peak_relists_at_once"] <= 2 * 2  # each process's burst, at most
    assert "restart" not in result["scenarios"]  # no server of its own to restart
    assert result["scenarios"]["check"] == {"controllers": 24, "diverged": 0}


def test_the_topology_lays_tenants_round_the_chassis() -> None:
    topology = Topology(chassis=10, tenants=10, ports=6, spread=3)
    assert topology.homes(0) == [0, 1, 2] and topology.homes(4) == [2, 3, 4]
    assert all(len(topology.tenants_of(c)) == 3 for c in range(10))
    assert {topology.port_chassis(4, p) for p in range(6)} == {2, 3, 4}


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--db", "memory://"], "memory://"),
        (["--db", "sqlite:///x.db", "--scenarios", "cold,nope"], "nope"),
        (["--server", "redis", "--members", "3"], "redis: only single servers"),
        (["--server", "etcd", "--etcd-progress", "0"], "--etcd-progress: must be a number of seconds above 0"),
        (["--db", "memory://", "--controllers", "99999999999999999999"], "--controllers: must be at most 100000"),
        (["--db", "memory://", "--workers", "5000"], "--workers: must be at most 1000"),
        (["--db", "memory://", "--tenants", "10000000"], "--tenants: must be at most 1000000"),
        (["--db", "memory://", "--ports", "1025"], "--ports: must be at most 1000"),
        (["--db", "memory://", "--lost", "1000000000000"], "--lost: must be at most 1000000"),
        (["--db", "memory://", "--scenarios", " , "], "no fleet scenario"),
        (["--db", "memory://", "--tenants", "1000000", "--ports", "1000"], "1,008,000,050 objects"),
        (["--db", "memory://", "--json", "/nonexistent/fleet.json"], "--json: cannot write /nonexistent/fleet.json"),
        (["--db", "memory://", "--json", "/"], "--json: cannot write /"),
    ],
)
def test_fleet_usage_mistakes_are_one_line(args: list[str], text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err


def test_the_etcd_server_of_a_fleet_notifies_progress_as_told() -> None:
    """A deployment's interval, not the test servers' half second (two replies a second to
    every idle watch: more than the host has at 1,000 controllers)."""
    assert FleetConfig().etcd_progress == 10.0
    server = server_for(FleetConfig(server="etcd", members=3, etcd_progress=2.5))
    assert isinstance(server, EtcdServer) and server.members == 3 and server.progress_interval == "2500ms"
    assert isinstance(server_for(FleetConfig(server="redis")), RedisServer)


@pytest.mark.parametrize("options", ["count=5", "maxlen", "timeout=abc"])
def test_bad_url_options_of_the_controllers_are_one_line_before_anything_runs(
    options: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad ``--url-options`` are refused at once, as one line: they reached only the worker
    processes, each of which died with a traceback after the database was loaded."""
    db = f"sqlite:///{tmp_path}/fleet.db"
    assert main(["fleet", "--db", db, "--controllers", "2", "--workers", "1", "--url-options", options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "option" in err and "Traceback" not in err


class Host(dfdb.NbModel, table="fleet_host"):
    pass


class Vm(dfdb.NbModel, table="fleet_vm"):
    pass


async def test_a_selective_replica_lists_whole_only_its_topicless_models() -> None:
    async with dfdb.connect("memory://") as nb:
        await nb.create_many([Host(id="h1"), Vm(id="v1", topic="t1"), Vm(id="v2", topic="t2"), Vm(id="loose")])
        async with Replica(nb, [Host, Vm], mode=SyncMode.SELECTIVE, topics={"t1"}, topicless=[Host]) as replica:
            assert {o.id for o in replica.get_all(Host)} == {"h1"}
            assert {o.id for o in replica.get_all(Vm)} == {"v1"}  # no whole listing of Vm
        async with Replica(nb, [Host, Vm], mode=SyncMode.SELECTIVE, topics={"t1"}) as replica:
            assert {o.id for o in replica.get_all(Vm)} == {"v1", "loose"}  # by default every model's


def _bench() -> Any:
    """benchmarks/fleet.py, imported (it is a script, not a module of the package)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "fleet.py"
    spec = importlib.util.spec_from_file_location("fleet_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kept(folder: Path, name: str, backend: str, controllers: int, ports: int, **scenarios: dict[str, Any]) -> None:
    config = {"controllers": controllers, "tenants": None, "ports": ports, "workers": 4}
    run = {"config": config, "backend": backend, "objects": controllers * (ports + 8 + 1), "ok": True}
    run |= {"started": scenarios.pop("started", {}).get("at", ""), "load_average": {"start": [0.5, 0.4, 0.3]}}
    run |= {"scenarios": {**scenarios, "check": {"controllers": controllers, "diverged": 0}}}
    (folder / name).write_text(json.dumps(run))


def test_the_chart_and_table_take_runs_of_some_scenarios_and_other_sizes(tmp_path: Path) -> None:
    bench = _bench()
    cold = {"converged_s": 2.0, "not_converged": 0, "peak_server_cpu_pct": 10.0, "per_controller": {"objects": {}}}
    hist = {"converged_s": 9.0, "not_converged": 0, "peak_server_cpu_pct": 30.0, "relists": 1000}
    hist |= {"peak_relists_at_once": 40, "objects_relisted": 1000, "records_read": 5}
    hist["connections"] = {"refused": False}
    _kept(tmp_path, "redis-50.json", "redis", 50, 20, cold=cold, history={**hist, "converged_s": 3.0})
    _kept(tmp_path, "redis-1000-quiet.json", "redis", 1000, 20, cold=cold, restart={**cold, "relists": 0})
    _kept(tmp_path, "redis-1000-100k.json", "redis", 1000, 100, cold=cold, history=hist)
    _kept(tmp_path, "etcd-1000-quiet.json", "etcd", 1000, 20, cold={**cold, "converged_s": 68.0})
    later = {"at": "2026-11-28T12:00:00Z"}
    _kept(tmp_path, "etcd-1000.json", "etcd", 1000, 20, cold=cold, history=hist, started=later)
    runs = bench.load(sorted(tmp_path.glob("*.json")))
    history = bench.points(runs, "history", "converged_s")
    # a run without the scenario is no point; another database shape is another line
    assert history == {
        ("redis", "redis"): [(50, 3.0, True)],
        ("redis", "redis (100 ports per tenant)"): [(1000, 9.0, True)],
        ("etcd", "etcd"): [(1000, 9.0, True)],
    }
    assert bench.points(runs, "cold", "converged_s")[("etcd", "etcd")] == [(1000, 2.0, True)]  # the newer run
    assert bench.points(runs, "restart", "peak_server_cpu_pct") == {("redis", "redis"): [(1000, 10.0, True)]}
    table = bench.table(runs).splitlines()
    assert len(table) == 2 + 5
    row = next(r for r in table if "| 1,000 x 100 |" in r)
    assert "| redis | 1,000 | 1,000 x 100 | 109,000 |" in row and "| 9.0 s, 1,000, 40, 1,005 |" in row
    assert "| - | ok (0 differ) | 0.5 |" not in row and "| no | ok (0 differ) | 0.5 |" in row
    quiet = next(r for r in table if r.startswith("| etcd | 1,000 |") and "68.0 s" in r)
    assert "| - | - | 10.0% / - / - | - |" in quiet  # no steady, restart or history: dashes
    pytest.importorskip("matplotlib")
    chart = tmp_path / "chart.png"
    bench.chart(runs, chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not RedisServer.available(), reason="redis-server is not installed")
def test_a_connection_the_server_turns_away_is_counted() -> None:
    with RedisServer(appendonly=False) as server:
        refusals = Refusals(server)
        refusals.mark()
        assert refusals.figures()["server_rejected"] == 0
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as admin:
            admin.sendall(b"CONFIG SET maxclients 1\r\n")
            assert admin.recv(64) == b"+OK\r\n"
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as extra:
                assert extra.recv(64).startswith(b"-ERR max number of clients reached")
            admin.sendall(b"CONFIG SET maxclients 100\r\n")
            assert admin.recv(64) == b"+OK\r\n"
        figures = refusals.figures()  # its own INFO connection counts none: the limit is lifted again
        assert figures["server_rejected"] == 1 and figures["refused"] is True
