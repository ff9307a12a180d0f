"""The dfdb command line: exit codes, one-line errors, the admin commands, the demo."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import dfdb
from dfdb.cli import main


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run in a folder of their own: the default database file lands there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DFDB_URL", raising=False)


def dfdb_cmd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfdb", *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("dfdb")]
    assert len(lines) == 1, result.stderr
    assert text in lines[0]


def test_demo_prints_its_table_and_converges() -> None:
    result = dfdb_cmd("demo", "--tenants", "2", "--changes", "300")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "controller-0" in out and "controller-2" in out
    assert "p50 ms" in out and "p99 ms" in out
    assert "result: every controller converged" in out
    assert out.count(" yes") == 3


@pytest.mark.parametrize("mode", ["full", "selective", "reactive"])
def test_demo_with_replicas(mode: str) -> None:
    result = dfdb_cmd("demo", "--mode", mode, "--tenants", "3", "--changes", "200")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"controllers: {mode} replicas" in out and "records read" in out
    assert "result: every controller converged" in out and out.count(" yes") == 3


def test_selective_demo_holds_and_reads_a_fraction() -> None:
    result = dfdb_cmd("demo", "--mode", "selective", "--tenants", "6", "--changes", "300")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    total = int(next(line for line in lines if line.startswith("topology:")).split("; ")[1].split()[0])
    rows = [line.split() for line in lines if line.startswith("controller-")]
    assert len(rows) == 3
    for row in rows:  # name, events, objects, held, records read, read, converged
        assert 0 < int(row[2]) < total and row[3] == f"{100 * int(row[2]) / total:.0f}%"
        assert int(row[5].rstrip("%")) < 100 and row[6] == "yes"
    assert sum(int(row[2]) for row in rows) < 2 * total  # every tenant on one chassis: the chassis are shared
    assert "each controller holds" in result.stdout


def test_demo_in_polling_mode() -> None:
    result = dfdb_cmd("--db", "memory://?notifications=poll&poll_interval=0.02", "demo", "--changes", "200")
    assert result.returncode == 0, result.stderr
    assert "snapshot polling" in result.stdout and "converged" in result.stdout


def test_missing_object_is_exit_1() -> None:
    assert_one_line_error(dfdb_cmd("get", "lswitch", "nope"), 2, "no database at")  # not created by a read
    assert dfdb_cmd("put", "lswitch", '{"id": "a"}').returncode == 0
    assert_one_line_error(dfdb_cmd("get", "lswitch", "nope"), 1, "lswitch/nope not found")


def test_usage_mistakes_are_exit_2() -> None:
    assert_one_line_error(dfdb_cmd("ls", "no_such_table"), 2, "unknown table")
    assert_one_line_error(dfdb_cmd("--db", "nosuch://x", "ls", "lswitch"), 2, "known schemes")
    assert_one_line_error(dfdb_cmd("--db", "not a url", "ls", "lswitch"), 2, "not a database URL")
    assert_one_line_error(dfdb_cmd("put", "lswitch", "{bad json"), 2, "not valid JSON")
    assert_one_line_error(dfdb_cmd("put", "lswitch", '{"id": "a/b"}'), 2, "invalid lswitch")
    assert_one_line_error(dfdb_cmd("server", "run", "nosuch"), 2, "no server backend")
    assert_one_line_error(dfdb_cmd("server", "run", "redis", "--members", "3"), 2, "single servers")
    assert_one_line_error(dfdb_cmd("--timeout", "0", "ls", "lswitch"), 2, "--timeout")
    assert_one_line_error(dfdb_cmd("watch", "lswitch", "--since", "garbage"), 2, "cursor")
    assert dfdb_cmd().returncode == 2
    assert dfdb_cmd("demo", "--tenants", "0").returncode == 2


def test_dfdb_url_environment_variable_is_used() -> None:
    import os

    env = {**os.environ, "DFDB_URL": "nosuch://from-env"}
    assert_one_line_error(dfdb_cmd("ls", "lswitch", env=env), 2, "nosuch")


@pytest.fixture
def shared_store() -> Iterator[str]:
    """Keeps memory://cli-test alive across several in-process command runs: a named
    memory store lives while a connection to it is open."""
    url = "memory://cli-test"
    with asyncio.Runner() as runner:
        nb = dfdb.connect(url)
        runner.run(nb.__aenter__())
        try:
            yield url
        finally:
            runner.run(nb.aclose())


def test_admin_commands_round_trip(shared_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db", shared_store, "put", "lswitch", '{"id": "net1", "topic": "t1", "mtu": 1400}']) == 0
    created = json.loads(capsys.readouterr().out)
    assert (created["id"], created["version"], created["mtu"]) == ("net1", 1, 1400)
    assert main(["--db", shared_store, "put", "lswitch", '{"id": "net1", "topic": "t1", "mtu": 9000}']) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2
    assert main(["--db", shared_store, "put", "lswitch", '{"id": "net1", "topic": "t2"}']) == 2
    assert "topic" in capsys.readouterr().err
    assert main(["--db", shared_store, "get", "lswitch", "net1"]) == 0
    assert json.loads(capsys.readouterr().out)["mtu"] == 9000
    assert main(["--db", shared_store, "ls", "lswitch", "--topic", "t1"]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ["net1"]
    assert main(["--db", shared_store, "copy", "--to", "memory://cli-copy-target"]) == 0
    assert "copied 1 objects" in capsys.readouterr().err
    assert main(["--db", shared_store, "rm", "lswitch", "net1"]) == 0
    assert main(["--db", shared_store, "rm", "lswitch", "net1"]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["--db", shared_store, "ls", "lswitch"]) == 0
    assert capsys.readouterr().out == ""


def test_watch_prints_json_lines(shared_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db", shared_store, "put", "chassis", '{"id": "c1", "ip": "192.0.2.1"}']) == 0
    capsys.readouterr()
    foreign = "elsewhere@1"
    assert main(["--db", shared_store, "watch", "chassis", "--since", foreign, "--count", "1"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["action"] == "resync" and record["cursor"].startswith("memory-")


def test_bench_runs_the_cases_on_the_given_database(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = dfdb_cmd("--db", "memory://", "bench", "--quick", "--repeat", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "| sequential create | memory | objects/s |" in result.stdout
    fanout = "| fan-out 200 writes / 5 topics: records read (raw: own topic's) | memory | records | 40 | 40 | 1.00x |"
    assert fanout in result.stdout
    report = json.loads(out.read_text())
    rows = {r["case"]: r for r in report["results"]}
    assert len(rows) == 10 and all(r["backend"] == "memory" and r["value"] > 0 for r in rows.values())
    assert rows["sequential create"]["raw"] == [] and len(rows["sequential create"]["dfdb"]) == 1


def test_bench_refuses_an_unknown_backend() -> None:
    result = dfdb_cmd("--db", "nosuch://x", "bench", "--quick")
    assert result.returncode != 0 and "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_server_run_stops_on_a_signal_and_deletes_its_data(signum: signal.Signals) -> None:
    """``kill -TERM`` and a hang-up end the server as Ctrl-C does: its process and its data folder go."""
    import socket

    from dfdb.servers import RedisServer
    from dfdb.testing.servers import require_servers

    if not RedisServer.available():
        if require_servers():
            pytest.fail("redis-server is not installed and DFDB_REQUIRE_SERVERS is set")
        pytest.skip("redis-server is not installed")
    proc = subprocess.Popen([sys.executable, "-m", "dfdb", "server", "run", "redis"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving on redis://127.0.0.1:"), line
        workdir = Path(line.split("(data in ", 1)[1].split(")", 1)[0])
        assert workdir.is_dir()
        port = int(line.split("redis://127.0.0.1:", 1)[1].split("/", 1)[0])
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # serving
        proc.send_signal(signum)
        assert proc.wait(30) == 0
        assert not workdir.exists()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
