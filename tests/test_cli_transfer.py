"""``dfdb tables``, ``dump``, ``restore`` and ``copy`` on every backend: every table,
registered model or not, raw values byte for byte, versions kept."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

import dfdb
from dfdb.cli import main
from dfdb.drivers import ANY, register_driver
from dfdb.drivers.memory import MemoryDriver
from dfdb.models import Chassis, LogicalSwitch
from dfdb.testing.plugin import fill_url

BACKENDS = {
    "memory": "memory://{name}",
    "sqlite": "sqlite:///{tmp}/{name}.db",
    "redis": "redis://{redis}/0?prefix={name}",
    "etcd": "etcd://{etcd}/{name}",
    "zk": "zk://{zookeeper}/{name}",
}

T = TypeVar("T")

BINARY = b"\xff\x00 not text"
SPACED = b'{"k": 1}'  # JSON, but not as dfdb prints it: kept as text


class Databases:
    """Databases of one backend for ``main`` to use. A memory:// store lives while a
    connection to it is open: one is kept open in a loop of its own (idle while ``main``
    runs in its loop); the others are opened for each step."""

    def __init__(self, template: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.template, self.tmp_path, self.request = template, tmp_path, request
        self.runner = asyncio.Runner()
        self.kept: list[dfdb.NbApi] = []

    def new(self) -> str:
        url = fill_url(self.template, self.tmp_path, self.request, prefix="cli")
        if url.startswith("memory:"):
            nb = dfdb.connect(url)
            self.runner.run(nb.__aenter__())
            self.kept.append(nb)
        return url

    def run(self, url: str, step: Callable[[dfdb.NbApi], Awaitable[T]]) -> T:
        async def session() -> T:
            async with dfdb.connect(url) as nb:
                return await step(nb)

        return self.runner.run(session())

    def close(self) -> None:
        for nb in self.kept:
            self.runner.run(nb.aclose())
        self.runner.close()


@pytest.fixture(params=sorted(BACKENDS))
def dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    databases = Databases(BACKENDS[request.param], tmp_path, request)
    try:
        yield databases
    finally:
        databases.close()


async def fill(nb: dfdb.NbApi) -> None:
    switch = await nb.create(LogicalSwitch(id="s1", topic="t1", mtu=1400))
    await nb.update(switch.model_copy(update={"mtu": 9000}))  # version 2
    await nb.create(Chassis(id="c1", ip="192.0.2.1"))
    await nb.driver.put("cli_raw", "r1", "t2", BINARY, ANY)  # a table no model names
    await nb.driver.put("cli_raw", "r2", None, SPACED, ANY)


def test_tables_dump_restore_copy(
    dbs: Databases, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DFDB_URL", raising=False)
    source = dbs.new()
    dbs.run(source, fill)

    assert main(["tables", "--db", source, "-o", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        {"table": "chassis", "objects": 1, "model": "dfdb.models.Chassis"},
        {"table": "cli_raw", "objects": 2, "model": None},
        {"table": "lswitch", "objects": 1, "model": "dfdb.models.LogicalSwitch"},
    ]
    assert main(["tables", "--db", source]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[:2] == ["TABLE    OBJECTS  MODEL", "chassis  1        dfdb.models.Chassis"]

    dump = tmp_path / "dump.jsonl"
    assert main(["dump", "--db", source, "-f", str(dump)]) == 0
    assert "dumped 4 objects of 3 tables" in capsys.readouterr().err
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert lines[0]["tables"] == {"chassis": 1, "cli_raw": 2, "lswitch": 1}
    by_key = {(r["table"], r["id"]): r for r in lines[1:]}
    assert by_key["lswitch", "s1"]["object"]["version"] == 2
    assert by_key["cli_raw", "r2"] == {"table": "cli_raw", "id": "r2", "topic": None, "text": SPACED.decode()}
    assert "base64" in by_key["cli_raw", "r1"]

    target = dbs.new()
    assert main(["restore", "--db", target, "-f", str(dump)]) == 0
    assert "restored 4 objects of 3 tables" in capsys.readouterr().err
    again = tmp_path / "again.jsonl"
    assert main(["dump", "--db", target, "-f", str(again)]) == 0
    assert again.read_text() == dump.read_text()  # identical, versions included
    switch = dbs.run(target, lambda nb: nb.get(LogicalSwitch, "s1"))
    assert (switch.version, switch.mtu) == (2, 9000)
    raw = dbs.run(target, lambda nb: nb.driver.get("cli_raw", "r1"))
    assert raw is not None and (raw.value, raw.topic) == (BINARY, "t2")

    assert main(["restore", "--db", target, "-f", str(dump)]) == 1
    err = capsys.readouterr().err
    assert "already holds objects of chassis, cli_raw, lswitch" in err and "--force" in err
    assert main(["restore", "--db", target, "-f", str(dump), "--force"]) == 0

    copy = dbs.new()
    assert main(["copy", "--db", source, "--to", copy]) == 0
    assert "copied 4 objects of 3 tables" in capsys.readouterr().err
    assert main(["dump", "--db", copy, "-f", str(again)]) == 0
    assert again.read_text() == dump.read_text()


class NoTables(MemoryDriver):
    """A driver that cannot list its tables (the base ``Driver.tables``)."""

    async def tables(self) -> None:
        return None


def test_commands_that_need_every_table_refuse_a_driver_that_cannot_list_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    register_driver("clinotables", NoTables)
    for args in (["copy", "--to", "memory://"], ["dump"], ["tables"]):
        assert main(["--db", "clinotables://", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("dfdb: the clinotables:// backend cannot list its tables"), err
        assert len(err.splitlines()) == 1


def test_restore_refuses_what_is_not_a_dump(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path}/r.db"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"hello": 1}\n')
    assert main(["restore", "--db", db, "-f", str(bad)]) == 1
    assert "is not a dfdb dump" in capsys.readouterr().err
    header = json.dumps({"format": "dfdb-dump", "version": 1, "source": "x", "tables": {"t": 2}})
    bad.write_text(header + '\n{"table": "t", "id": "a/b", "text": "x"}\n')
    assert main(["restore", "--db", db, "-f", str(bad)]) == 1
    assert f"{bad}:2: not a dfdb dump line" in capsys.readouterr().err
    bad.write_text(header + '\n{"table": "t", "id": "a", "text": "x"}\n')
    assert main(["restore", "--db", db, "-f", str(bad)]) == 1
    assert "announces 2 objects, the file holds 1" in capsys.readouterr().err
    assert main(["restore", "--db", db, "-f", str(tmp_path / "missing.jsonl")]) == 1
    assert "No such file" in capsys.readouterr().err


def dump_text(n: int, announced: int | None = None) -> str:
    """A dump of ``n`` switches whose header announces ``announced`` (default ``n``)."""
    header = {
        "format": "dfdb-dump",
        "version": 1,
        "source": "x",
        "tables": {"lswitch": n if announced is None else announced},
    }
    lines = [json.dumps(header)]
    for i in range(n):
        obj = {"id": f"s{i:06d}", "topic": "t1", "version": 1, "name": "", "mtu": 1450}
        lines.append(json.dumps({"table": "lswitch", "id": obj["id"], "topic": "t1", "object": obj}))
    return "\n".join(lines) + "\n"


def count_switches(url: str) -> int:
    async def count() -> int:
        async with dfdb.connect(url) as nb:
            return len((await nb.driver.list("lswitch")).entries)

    return asyncio.run(count())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (dump_text(600, announced=601).encode(), "announces 601 objects, the file holds 600 (a truncated dump?)"),
        (dump_text(600).encode()[:-40], "not JSON"),
        (dump_text(600).encode() + b'{"table": "lswitch", "id": "a/b", "text": "x"}\n', "not a dfdb dump line"),
        (dump_text(600).encode() + bytes(range(128, 256)), "is not a dfdb dump: not UTF-8 text"),
        (bytes(range(256)) * 4, "is not a dfdb dump: not UTF-8 text"),
    ],
    ids=["truncated", "cut-mid-line", "bad-last-line", "binary-tail", "binary"],
)
def test_restore_of_a_broken_dump_writes_nothing(
    content: bytes, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    assert main(["restore", "--db", url, "-f", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "nothing restored" in err, err
    assert not (tmp_path / "r.db").exists()  # read before the database is opened: no empty file left


def test_ctrl_c_during_restore_says_what_was_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    big = tmp_path / "big.jsonl"
    big.write_text(dump_text(60_000))
    err = interrupt_once_written(["--db", url, "restore", "-f", str(big)], tmp_path / "r.db", url, "restore")
    written = int(err.split("at least ")[1].split()[0])
    assert "dfdb: interrupted: restore stopped" in err and "holds a partial restore" in err and "--force" in err, err
    assert 0 < written <= count_switches(url) < 60_000


def test_ctrl_c_during_copy_says_what_was_copied(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = f"sqlite:///{tmp_path}/s.db", f"sqlite:///{tmp_path}/t.db"
    dump = tmp_path / "d.jsonl"
    dump.write_text(dump_text(30_000))
    assert main(["restore", "--db", source, "-f", str(dump)]) == 0
    err = interrupt_once_written(["--db", source, "copy", "--to", target], tmp_path / "t.db", target, "copy")
    assert "dfdb: interrupted: copy stopped with at least" in err and "dfdb copy again copies the rest" in err, err
    assert 0 < int(err.split("at least ")[1].split()[0]) <= count_switches(target) < 30_000


def interrupt_once_written(args: list[str], file: Path, url: str, what: str) -> str:
    """Run ``dfdb ARGS``, send Ctrl-C once ``url`` holds its first switches, and return its
    stderr, checked to be one line, no traceback, exit 130 (skipped when it ended first)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dfdb", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (file.exists() and count_switches(url)) == 0 and proc.poll() is None:
            assert time.monotonic() < deadline, f"the {what} wrote nothing in 60s"
            time.sleep(0.05)  # polling the database for the first batch, not synchronising
        proc.send_signal(signal.SIGINT)
    finally:
        _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip(f"the {what} ended before Ctrl-C reached it")
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err
