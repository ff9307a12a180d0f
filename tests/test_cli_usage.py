"""How the dfdb command is called: global options anywhere, --version, -v, help with
defaults and examples, put from a file or stdin with an optional version, rm
--if-exists, -o table, completion, a missing database file, demo on a full database."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import dfdb
from dfdb.cli import main
from dfdb.cli.options import build_parser

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run in a folder of their own: the default database file lands there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DFDB_URL", raising=False)


@pytest.fixture
def store() -> Iterator[str]:
    """A memory:// store kept alive (a connection stays open) across command runs."""
    url = "memory://cli-usage"
    with asyncio.Runner() as runner:
        nb = dfdb.connect(url)
        runner.run(nb.__aenter__())
        try:
            yield url
        finally:
            runner.run(nb.aclose())


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


SWITCH = '{"id": "net1", "topic": "t1", "mtu": 1400}'


def test_global_options_also_after_the_command(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["put", "lswitch", SWITCH, "--db", store]) == 0
    capsys.readouterr()
    assert main(["ls", "lswitch", "--db", store, "--timeout", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "net1"
    # after the command wins over before it
    assert main(["--db", "nosuch://x", "get", "lswitch", "net1", "--db", store]) == 0
    assert json.loads(capsys.readouterr().out)["mtu"] == 1400
    assert main(["demo", "--db", "memory://", "--tenants", "1", "--changes", "20", "--controllers", "1"]) == 0
    assert "converged" in capsys.readouterr().out
    assert main(["ls", "lswitch", "--models", "no_such_module_xyz", "--db", store]) == 2
    assert "no_such_module_xyz" in one_line(capsys.readouterr().err)


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dfdb {dfdb.__version__}"
    assert main(["--help"]) == 0
    assert "example:" in capsys.readouterr().out
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        if name == "server":
            name = "server run"
        assert main([*name.split(), "--help"]) == 0
        text = capsys.readouterr().out
        assert "dfdb " in text.split("\nexample:\n  ", 1)[1], name
        assert "--db URL" in text, name  # the global options are listed after the command too
    assert main(["demo", "--help"]) == 0
    assert "(default: 2000)" in capsys.readouterr().out
    assert main(["ls", "--help"]) == 0
    assert "(default: json)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["ls"], "dfdb ls: error: the following arguments are required: table"),
        (["nosuch"], "invalid choice: 'nosuch'"),
        (["ls", "lswitch", "-o", "xml"], "invalid choice: 'xml'"),
        (["--timeout", "0", "ls", "lswitch"], "--timeout"),
        (["fleet", "--rate", "0"], "--rate: must be a number per second above 0"),
        (["fleet", "--relist-rate", "nan"], "--relist-rate: must be a number per second above 0"),
        (["fleet", "--relist-jitter", "nan"], "--relist-jitter: must be a number of seconds from 0"),
        (["fleet", "--relist-jitter", "-1"], "--relist-jitter: must be a number of seconds from 0"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv: list[str], text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert text in one_line(capsys.readouterr().err)


def test_verbose_logs_to_stderr(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/v.db"
    run = [sys.executable, "-m", "dfdb", "put", "lswitch", SWITCH, "--db", db]
    quiet = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True)
    assert quiet.stderr == ""
    loud = subprocess.run([*run, "-vv"], capture_output=True, text=True, timeout=60, check=True)
    assert "dfdb: DEBUG dfdb.drivers.sqlite: opened" in loud.stderr
    assert json.loads(loud.stdout)["version"] == 2


def test_put_from_stdin_and_file(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(SWITCH))
    assert main(["put", "lswitch", "-", "--db", store]) == 0
    assert json.loads(capsys.readouterr().out)["mtu"] == 1400
    path = tmp_path / "obj.json"
    path.write_text('{"id": "net1", "topic": "t1", "mtu": 9000}\n')
    assert main(["put", "lswitch", "--file", str(path), "--db", store]) == 0
    assert json.loads(capsys.readouterr().out)["mtu"] == 9000
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"id": "net2"}'))
    assert main(["put", "lswitch", "-f", "-", "--db", store]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "net2"
    assert main(["put", "lswitch", "--db", store]) == 2
    assert "put needs the object" in one_line(capsys.readouterr().err)
    assert main(["put", "lswitch", SWITCH, "--file", str(path), "--db", store]) == 2
    assert "not both" in one_line(capsys.readouterr().err)
    assert main(["put", "lswitch", "--file", str(tmp_path / "missing.json"), "--db", store]) == 1
    assert "No such file or directory" in one_line(capsys.readouterr().err)


def test_put_honours_a_version(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    def put(body: str) -> int:
        return main(["put", "lswitch", body, "--db", store])

    assert put('{"id": "a", "version": "x"}') == 2
    assert "version must be a whole number" in one_line(capsys.readouterr().err)
    assert put('{"id": "a", "version": -1}') == 2
    capsys.readouterr()
    assert put('{"id": "a", "version": 1}') == 1  # nothing to replace
    assert "not found" in one_line(capsys.readouterr().err)
    assert put('{"id": "a", "version": 0, "mtu": 1000}') == 0  # 0: create only
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert put('{"id": "a", "version": 0}') == 1
    assert "already exists" in one_line(capsys.readouterr().err)
    assert put('{"id": "a", "version": 2, "mtu": 1100}') == 1  # stale: the stored one is at 1
    assert "version" in one_line(capsys.readouterr().err)
    assert put('{"id": "a", "version": 1, "mtu": 1200}') == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2
    assert put('{"id": "a", "mtu": 1300}') == 0  # no version: create or replace
    assert json.loads(capsys.readouterr().out)["version"] == 3


def test_rm_if_exists_and_table_output(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rm", "lswitch", "ghost", "--db", store]) == 1
    assert "not found" in one_line(capsys.readouterr().err)
    assert main(["rm", "lswitch", "ghost", "--if-exists", "--db", store]) == 0
    assert main(["put", "lswitch", SWITCH, "--db", store]) == 0
    capsys.readouterr()
    assert main(["ls", "lswitch", "-o", "table", "--db", store]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:5] == ["ID", "TOPIC", "VERSION", "NAME", "MTU"]
    assert row.split()[:4] == ["net1", "t1", "1", "1400"]


def test_completion_scripts_come_from_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "complete" in script and "restore" in script and "--if-exists" in script
    assert main(["completion", "zsh"]) == 0
    assert "#compdef dfdb" in capsys.readouterr().out


def test_reads_refuse_a_missing_database_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["ls", "lswitch"], ["get", "lswitch", "x"], ["tables"], ["dump"], ["copy", "--to", "memory://"]):
        assert main(argv) == 2  # a wrong --db, like a wrong argument
        assert f"no database at {tmp_path / 'dfdb.sqlite3'}" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "dfdb.sqlite3").exists()  # not created by a read
    assert main(["ls", "lswitch", "--db", "sqlite:///tmp/x.db"]) == 2  # tmp/x.db, relative: say so
    assert "an absolute path takes four slashes: sqlite:////tmp/x.db" in one_line(capsys.readouterr().err)
    assert main(["rm", "lswitch", "x", "--if-exists"]) == 0
    assert main(["put", "lswitch", SWITCH]) == 0  # a write creates it
    assert (tmp_path / "dfdb.sqlite3").exists()


def test_a_relative_sqlite_path_that_fails_names_the_resolved_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["put", "lswitch", SWITCH, "--db", "sqlite:///nodir/x.db"]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(tmp_path / "nodir" / "x.db") in line and "sqlite:////nodir/x.db" in line


def test_demo_needs_an_empty_database(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["put", "chassis", '{"id": "chassis-0", "ip": "192.0.2.1"}', "--db", store]) == 0
    capsys.readouterr()
    assert main(["demo", "--db", store]) == 2
    assert "dfdb demo needs an empty database" in one_line(capsys.readouterr().err)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "pipe"])
def test_progress_only_on_a_terminal(
    tty: bool, store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    err = Terminal() if tty else io.StringIO()
    source = tmp_path / "s.jsonl"
    header = {"format": "dfdb-dump", "version": 1, "source": "memory", "tables": {"cli_raw": 150}}
    lines = [json.dumps({"table": "cli_raw", "id": f"n{i:03}", "topic": None, "text": "x"}) for i in range(150)]
    source.write_text("\n".join([json.dumps(header), *lines]) + "\n")
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["restore", "-f", str(source), "--db", store]) == 0
    dump = tmp_path / "d.jsonl"
    assert main(["dump", "-f", str(dump), "--db", store]) == 0
    assert dump.read_text() == source.read_text()
    assert main(["copy", "--to", "memory://", "--db", store]) == 0
    text = err.getvalue()
    if tty:
        assert text.count("\rcli_raw: 150/150\n") == 3 and "\rcli_raw: 100/150\r" in text  # the dump's
    else:
        assert "\r" not in text and "cli_raw:" not in text
    assert "dumped 150 objects" in text and "restored 150 objects" in text and "copied 150 objects" in text


def test_watch_creates_a_missing_database_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    status: list[int] = []
    watcher = threading.Thread(target=lambda: status.append(main(["watch", "lswitch", "--count", "1"])))
    watcher.start()
    try:
        for i in range(200):  # the watcher may subscribe after the first writes
            if not watcher.is_alive():
                break
            if (tmp_path / "dfdb.sqlite3").exists():
                main(["put", "lswitch", json.dumps({"id": "net1", "name": f"n{i}"})])
            watcher.join(0.05)
    finally:
        watcher.join(30)
    assert status == [0]
    captured = capsys.readouterr()
    assert f"no database at {tmp_path / 'dfdb.sqlite3'} yet: created empty" in captured.err
    assert any(json.loads(line).get("table") == "lswitch" for line in captured.out.splitlines() if '"action"' in line)


def test_the_cli_page_lists_every_command() -> None:
    import argparse

    page = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    listed = {line.split("`")[1].split()[0] for line in page.splitlines() if line.startswith("| `")}
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) <= listed, sorted(set(sub.choices) - listed)


def test_put_of_a_binary_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "obj.bin"
    path.write_bytes(bytes(range(128, 256)))
    assert main(["put", "lswitch", "--file", str(path), "--db", f"sqlite:///{tmp_path}/p.db"]) == 2
    assert f"{path} is not UTF-8 text" in one_line(capsys.readouterr().err)


def test_put_refuses_an_input_over_the_limit_before_reading_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"sqlite:///{tmp_path}/p.db"
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: nothing is written, and nothing should be read
    assert main(["put", "lswitch", "--file", str(path), "--db", db]) == 2
    assert f"{path} is 67,108,864 bytes; put takes at most 16,777,216" in one_line(capsys.readouterr().err)
    monkeypatch.setattr(sys, "stdin", io.StringIO(" " * (16 * 1024 * 1024 + 1)))
    assert main(["put", "lswitch", "-", "--db", db]) == 2
    assert "stdin is larger than 16,777,216 bytes" in one_line(capsys.readouterr().err)
    path.write_text(SWITCH + " " * (16 * 1024 * 1024 - len(SWITCH)))  # at the limit: taken
    assert main(["put", "lswitch", "--file", str(path), "--db", db]) == 0
    assert json.loads(capsys.readouterr().out)["mtu"] == 1400


def test_server_run_refuses_a_cluster_too_large(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "run", "zookeeper", "--members", "99"]) == 2  # not 99 server processes
    assert "at most 7 members" in one_line(capsys.readouterr().err)


_INTERRUPTED_WHILE_LOADING = """
import sys

class CtrlC:  # Ctrl-C arriving while the command loads {module}
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise KeyboardInterrupt

sys.meta_path.insert(0, CtrlC())
{start}
"""


@pytest.mark.parametrize("how", ["console script", "python -m dfdb"])
def test_ctrl_c_while_the_command_loads_is_no_traceback(how: str) -> None:
    """The console script's entry point (read from pyproject.toml) handles Ctrl-C during the
    heavy imports (pydantic, in dfdb's own ``__init__``), and ``python -m dfdb`` during those
    of the command: exit 130, no traceback."""
    import tomllib

    if how == "console script":
        target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["dfdb"]
        module, function = target.split(":")
        trigger, start = "pydantic", f"from {module} import {function} as m\nsys.exit(m())"
    else:
        trigger, start = "dfdb.cli", "import runpy\nrunpy.run_module('dfdb', run_name='__main__')"
    code = _INTERRUPTED_WHILE_LOADING.format(module=trigger, start=start)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-c", code, "ls", "lswitch"], capture_output=True, text=True, timeout=60, env=env
    )
    assert (result.returncode, result.stderr) == (130, "")


_CTRL_C_AT_IMPORT = """
import os
import signal
import sys


class CtrlC:  # the user presses Ctrl-C as {module} starts loading
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)


sys.meta_path.insert(0, CtrlC())
"""


def test_python_m_dfdb_sent_sigint_while_it_loads_the_package_exits_130_quietly(tmp_path: Path) -> None:
    """A real SIGINT, sent while ``python -m dfdb`` loads the package, which Python imports
    before it runs ``dfdb/__main__.py`` (pydantic and the public API; a Ctrl-C while the
    command loads is the test above's)."""
    (tmp_path / "sitecustomize.py").write_text(_CTRL_C_AT_IMPORT.format(module="pydantic"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    result = subprocess.run(
        [sys.executable, "-m", "dfdb", "--db", "memory://", "ls", "lswitch"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert (result.returncode, result.stderr, result.stdout) == (130, "", "")


_IMPORT_FAILS = """
import signal
import sys


class Missing:  # dfdb.connecting cannot be imported (a broken install)
    def find_spec(self, name, path=None, target=None):
        if name == "dfdb.connecting":
            raise ImportError("no dfdb.connecting")


sys.argv[:1] = ["-m"]  # as while python -m locates the module it runs
sys.meta_path.insert(0, Missing())
try:
    import dfdb
except ImportError:
    pass
else:
    sys.exit("dfdb was imported")
print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


def test_a_failed_package_import_puts_the_usual_sigint_handling_back() -> None:
    """The handler that ends ``python -m dfdb`` quietly while the package loads is removed
    when that import fails too: a program that catches the ImportError gets
    KeyboardInterrupt for a later Ctrl-C, not a silent exit 130."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", _IMPORT_FAILS], capture_output=True, text=True, timeout=60, env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "True\n", "")


def test_ls_of_an_empty_table_prints_the_header_or_no_json_line(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty table (or topic) still shows its header in a table, as ``tables`` and
    ``status`` do; the JSON output is JSON lines, one object a line, so none for no object."""
    for extra in ([], ["--topic", "nobody"]):
        assert main(["ls", "lswitch", "-o", "table", "--db", store, *extra]) == 0
        out, err = capsys.readouterr()
        assert (out.split()[:4], len(out.splitlines()), err) == (["ID", "TOPIC", "VERSION", "NAME"], 1, "")
        assert main(["ls", "lswitch", "-o", "json", "--db", store, *extra]) == 0
        assert capsys.readouterr() == ("", "")


def test_table_output_shows_control_characters_escaped(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A value holding a terminal escape sequence, a NUL or a line break cannot recolour the
    terminal, hide text or break a table row: the table shows them escaped, as JSON does."""
    hostile = {"id": "esc", "name": "\x1b[2J\x1b[31mred\x00\nnext\u2028line\x85"}
    assert main(["put", "lswitch", json.dumps(hostile), "--db", store]) == 0
    capsys.readouterr()
    assert main(["ls", "lswitch", "-o", "table", "--db", store]) == 0
    _, row = capsys.readouterr().out.splitlines()
    assert row.split()[:4] == ["esc", "-", "1", "\\u001b[2J\\u001b[31mred\\u0000\\nnext\\u2028line\\u0085"]


def test_json_output_escapes_c1_controls_and_line_separators(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON leaves DEL, the C1 controls (a terminal acts on them: U+009B starts an escape
    sequence) and U+2028/U+2029 raw inside strings: every JSON the CLI prints escapes them,
    and reads back as the same value."""
    name = "a\x7fb\x85c\x9b2Jd\u2028e\u2029f é"
    assert main(["put", "lswitch", json.dumps({"id": "c1", "name": name}), "--db", store]) == 0
    printed = [capsys.readouterr().out]
    for argv in (["get", "lswitch", "c1"], ["ls", "lswitch"], ["dump"]):
        assert main([*argv, "--db", store]) == 0
        printed.append(capsys.readouterr().out)
    for out in printed:
        assert not re.search("[\x7f-\x9f\u2028\u2029]", out), out
        assert "\\u0085" in out and "é" in out  # escaped, other text as itself
        records = [json.loads(line) for line in out.splitlines()]
        assert name in [r.get("object", r).get("name") for r in records]
