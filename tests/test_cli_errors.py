"""The dfdb command line at its edges: bad ids and options are one line and exit 2,
``put`` refuses unknown fields and repairs corrupt objects, ``copy`` copies every table
from one consistent snapshot. Every command runs the real CLI in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dfdb
from dfdb.cli import main
from dfdb.drivers import ANY
from dfdb.testing.servers import free_port

HELPERS = Path(__file__).parent / "helpers"


class Unregistered(dfdb.NbModel, table="test_cli_unregistered"):
    """A model the dfdb command does not know (its module is not imported there)."""

    n: int = 0


class PairA(dfdb.NbModel, table="test_cli_pair_a"):
    pass


class PairB(dfdb.NbModel, table="test_cli_pair_b"):
    pass


def dfdb_cmd(*args: str | bytes, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DFDB_URL"}
    return subprocess.run(
        [sys.executable, "-m", "dfdb", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        errors="backslashreplace",
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len([line for line in lines if line.startswith("dfdb")]) == 1, result.stderr
    assert text in lines[-1], result.stderr


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/cli.db"


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("get", "lswitch", ""), "must not be empty"),
        (("get", "lswitch", "a/b"), "must not contain '/'"),
        (("rm", "lswitch", "a/b"), "must not contain '/'"),
        (("ls", "lswitch", "--topic", "a/b"), "topic must not contain '/'"),
        (("get", "lswitch", "x" * 300), "longer than 255"),
        (("put", "lswitch", '{"id":"\\udcff"}'), "not valid Unicode"),
        (("get", "lswitch", b"\xff"), "not valid Unicode"),
        (("rm", "lswitch", "a\x01"), "control characters"),
    ],
)
def test_bad_ids_are_one_line_usage_errors(db: str, args: tuple[str | bytes, ...], text: str) -> None:
    assert_one_line_error(dfdb_cmd("--db", db, *args), 2, text)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "abc", "1e12"])
def test_bad_timeouts_are_usage_errors(db: str, value: str) -> None:
    assert_one_line_error(dfdb_cmd("--db", db, "--timeout", value, "ls", "lswitch"), 2, "--timeout")


@pytest.mark.parametrize("query", ["timeout=abc", "timeout=nan", "poll_interval=inf", "poll_interval=1e12"])
def test_bad_durations_in_the_url_are_usage_errors(query: str) -> None:
    option = query.split("=")[0]
    assert_one_line_error(dfdb_cmd("--db", f"memory://?{query}", "ls", "lswitch"), 2, option)
    assert_one_line_error(dfdb_cmd("--db", f"memory://?{query}", "--timeout", "3", "ls", "lswitch"), 2, option)


def timed_dfdb_cmd(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """``dfdb_cmd``, and the seconds the command ran once loaded (tests/helpers/timed_cli.py):
    the interpreter's start, seconds on a loaded machine, is not the command's."""
    seconds = tmp_path / "seconds"
    env = {k: v for k, v in os.environ.items() if k != "DFDB_URL"}
    result = subprocess.run(
        [sys.executable, str(HELPERS / "timed_cli.py"), str(seconds), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        errors="backslashreplace",
    )
    return result, float(seconds.read_text())


def test_the_url_timeout_holds_unless_timeout_is_given(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result, took = timed_dfdb_cmd(tmp_path, "--db", f"{url}?timeout=0.5", "ls", "lswitch")
    assert_one_line_error(result, 1, "127.0.0.1")
    # the URL's 0.5 s; with the default 5 s the retries give up no sooner than 3 s (the last
    # backoff is at most 2 s)
    assert took < 3
    result, took = timed_dfdb_cmd(tmp_path, "--db", f"{url}?timeout=30", "--timeout", "0.5", "ls", "lswitch")
    assert_one_line_error(result, 1, "127.0.0.1")
    assert took < 3  # --timeout's 0.5 s, not the URL's 30 s


def test_put_refuses_unknown_fields(db: str) -> None:
    assert_one_line_error(dfdb_cmd("--db", db, "put", "lswitch", '{"id":"a","mtuu":9000}'), 2, "'mtuu'")
    assert_one_line_error(dfdb_cmd("--db", db, "get", "lswitch", "a"), 1, "not found")
    assert dfdb_cmd("--db", db, "put", "lswitch", '{"id":"a","topic":"t","mtu":1400}').returncode == 0
    assert_one_line_error(dfdb_cmd("--db", db, "put", "lswitch", '{"id":"a","topic":"t","mtuu":9000}'), 2, "'mtuu'")
    assert_one_line_error(
        dfdb_cmd("--db", db, "put", "lport", '{"id":"p","lswitch":"a","binding":{"chassis":"c","bogus":1}}'),
        2,
        "binding.bogus",
    )
    got = dfdb_cmd("--db", db, "get", "lswitch", "a")
    assert json.loads(got.stdout)["version"] == 1  # the refused put bumped nothing


def test_put_replaces_a_corrupt_object(db: str) -> None:
    async def corrupt() -> None:
        async with dfdb.connect(db) as nb:
            await nb.driver.put("lswitch", "bad", "t", b'{"id":"bad","topic":"t","version":2,"mtu":"jumbo"}', ANY)

    asyncio.run(corrupt())
    assert_one_line_error(dfdb_cmd("--db", db, "get", "lswitch", "bad"), 1, "corrupt object lswitch/bad")
    fixed = dfdb_cmd("--db", db, "put", "lswitch", '{"id":"bad","topic":"t","mtu":1400}')
    assert fixed.returncode == 0, fixed.stderr
    assert (json.loads(fixed.stdout)["mtu"], json.loads(fixed.stdout)["version"]) == (1400, 3)
    assert json.loads(dfdb_cmd("--db", db, "get", "lswitch", "bad").stdout)["mtu"] == 1400


def test_rm_removes_a_corrupt_object(db: str) -> None:
    async def corrupt() -> None:
        async with dfdb.connect(db) as nb:
            await nb.driver.put("lswitch", "bad", None, b"not json", ANY)

    asyncio.run(corrupt())
    assert dfdb_cmd("--db", db, "rm", "lswitch", "bad").returncode == 0
    assert_one_line_error(dfdb_cmd("--db", db, "get", "lswitch", "bad"), 1, "not found")


def test_copy_copies_tables_without_a_registered_model(tmp_path: Path) -> None:
    source, target = f"sqlite:///{tmp_path}/src.db", f"sqlite:///{tmp_path}/dst.db"

    async def fill() -> None:
        async with dfdb.connect(source) as nb:
            await nb.create_many([Unregistered(id=f"u{i}", topic="t", n=i) for i in range(5)])
            await nb.create(dfdb.models.LogicalSwitch(id="s1", topic="t"))

    async def read() -> tuple[list[Unregistered], list[str]]:
        async with dfdb.connect(target) as nb:
            return await nb.get_all(Unregistered), [s.id for s in await nb.get_all(dfdb.models.LogicalSwitch)]

    asyncio.run(fill())
    result = dfdb_cmd("--db", source, "copy", "--to", target)
    assert result.returncode == 0, result.stderr
    assert "copied 6 objects of 2 tables" in result.stderr
    copied, switches = asyncio.run(read())
    assert [(u.id, u.n, u.version) for u in copied] == [(f"u{i}", i, 1) for i in range(5)]
    assert switches == ["s1"]


def test_copy_reads_one_consistent_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A writer adds a then b of each pair while the copy runs: the copy never holds a b without its a."""
    source, target = f"sqlite:///{tmp_path}/src.db", f"sqlite:///{tmp_path}/dst.db"

    async def run() -> tuple[int, set[str], set[str]]:
        async with dfdb.connect(source) as nb:
            await nb.create_many([PairA(id=f"p{i}") for i in range(1000)])
            await nb.create_many([PairB(id=f"p{i}") for i in range(1000)])
            stop = asyncio.Event()

            async def writer() -> None:
                i = 1000
                while not stop.is_set() and i < 1300:
                    await nb.create(PairA(id=f"p{i}"))
                    await nb.create(PairB(id=f"p{i}"))
                    i += 1

            task = asyncio.create_task(writer())
            await asyncio.sleep(0.05)
            status = await asyncio.to_thread(main, ["--db", source, "--timeout", "60", "copy", "--to", target])
            stop.set()
            await task
        async with dfdb.connect(target) as copy:
            a = {o.id for o in await copy.get_all(PairA)}
            b = {o.id for o in await copy.get_all(PairB)}
        return status, a, b

    status, a, b = asyncio.run(run())
    assert status == 0, capsys.readouterr().err
    assert len(a) >= 1000
    assert b <= a and len(a - b) <= 1, (len(a), len(b), sorted(b - a)[:5])


@pytest.mark.parametrize(
    ("given", "text"),
    [
        ('{"id": "d", "name": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('{"id": "d", "mtu": ' + "9" * 5000 + "}", "digits"),
    ],
)
def test_json_python_cannot_read_is_one_line_for_put_and_restore(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str, text: str
) -> None:
    """Valid JSON beyond what Python's reader takes (nesting deeper than its recursion limit,
    an integer of more than 4,300 digits): put is a usage error, restore refuses the dump;
    one line each, no "unexpected error"."""
    path = tmp_path / "object.json"
    path.write_text(given)
    assert main(["--db", db, "put", "lswitch", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON: " in err and text in err and len(err.splitlines()) == 1
    dump = tmp_path / "dump.jsonl"
    header = {"format": "dfdb-dump", "version": 1, "source": "sqlite", "tables": {"lswitch": 1}}
    dump.write_text(json.dumps(header) + '\n{"table": "lswitch", "id": "d", "topic": null, "object": ' + given + "}\n")
    assert main(["--db", db, "restore", "-f", str(dump)]) == 1
    err = capsys.readouterr().err
    assert f"{dump}:2: not JSON (" in err and text in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("source", "reason"), [("raise RuntimeError('boom')", "RuntimeError: boom"), ("def f(:", "SyntaxError")]
)
def test_a_models_module_that_fails_to_import_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], source: str, reason: str
) -> None:
    name = f"broken_models_{len(source)}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["--db", "memory://", "--models", name, "ls", "lswitch"]) == 2
    err = capsys.readouterr().err
    assert f"cannot import models module {name!r}: " in err and reason in err and len(err.splitlines()) == 1


def test_copy_onto_the_database_it_reads_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same file under another spelling too: nothing to copy, said at once (exit 2)."""
    assert main(["--db", f"sqlite:///{tmp_path}/one.db", "put", "lswitch", '{"id": "s1"}']) == 0
    capsys.readouterr()
    other_spelling = f"sqlite:///{tmp_path}/./one.db"
    assert main(["--db", f"sqlite:///{tmp_path}/one.db", "copy", "--to", other_spelling]) == 2
    err = capsys.readouterr().err
    assert "is the database being copied" in err and len(err.splitlines()) == 1


def test_fleet_on_a_server_that_cannot_be_reached_fails_within_the_timeout(tmp_path: Path) -> None:
    """``dfdb fleet --db URL`` with nothing listening there is one line within ``--timeout``
    (it waited for its writer connection's own minute)."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    result, took = timed_dfdb_cmd(tmp_path, "--db", url, "--timeout", "0.5", "fleet", "--controllers", "2")
    assert_one_line_error(result, 1, "127.0.0.1")
    assert took < 3
