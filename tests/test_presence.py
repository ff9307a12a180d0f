"""Presence: a service publishes itself bound to a lease; ``dfdb status`` lists the live ones."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import dfdb
from dfdb.cli import main
from dfdb.drivers import ANY
from dfdb.models import LogicalSwitch


def status(url: str, *extra: str) -> tuple[int, str]:
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        code = main(["--db", url, "status", *extra])
    return code, out.getvalue()


async def test_a_published_service_is_listed_while_it_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    async with dfdb.connect(url) as nb:
        await nb.create(LogicalSwitch(id="s1", topic="t1"))
        async with dfdb.Replica(nb, [LogicalSwitch]) as replica:
            await replica.wait_synced()
            async with dfdb.publish_presence(nb, "controller", chassis="c1", replica=replica, interval=0.2) as p:
                first = p.record
                assert first is not None and first.position is not None and first.position >= 1
                with anyio.fail_after(10):
                    while (await nb.get(dfdb.ServicePresence, first.id)).reported_at == first.reported_at:
                        await anyio.sleep(0.05)  # refreshed every interval
                code, text = await anyio.to_thread.run_sync(status, url, "--json")
                assert code == 0
                (row,) = json.loads(text)
                assert (row["service"], row["chassis"], row["pid"]) == ("controller", "c1", os.getpid())
                assert row["dfdb_version"] == dfdb.__version__ and row["lag"] == 0 and row["age"] < 5
                code, text = await anyio.to_thread.run_sync(status, url)
                assert code == 0 and "controller" in text and "1 live service" in text
        assert await nb.get_all(dfdb.ServicePresence) == []  # gone with its lease
    code, text = await anyio.to_thread.run_sync(status, url)
    assert code == 0 and "0 live services" in text


async def test_presence_refuses_bad_input() -> None:
    async with dfdb.connect("memory://") as nb:
        with pytest.raises(ValueError, match="service name"):
            dfdb.publish_presence(nb, "a/b")
        with pytest.raises(ValueError, match="interval"):
            dfdb.publish_presence(nb, "svc", interval=0)


def test_demo_controllers_register_their_presence() -> None:
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        code = main(["demo", "--mode", "full", "--changes", "50", "--controllers", "2", "--tenants", "1"])
    assert code == 0, out.getvalue()
    assert "presence: 2 live controllers (chassis-0/controller-0, chassis-1/controller-1)" in out.getvalue()


async def test_status_names_the_presence_records_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    async with dfdb.connect(url) as nb:
        table = dfdb.ServicePresence.__table__
        await nb.driver.put(table, "c1.bad.1", None, b"{not json", ANY)
        await nb.driver.put(table, "c1.old.2", None, b'{"service": "old"}', ANY)
        async with dfdb.publish_presence(nb, "controller", chassis="c1", interval=60):
            code, text = await anyio.to_thread.run_sync(status, url)
            assert code == 0 and "controller" in text and "1 live service" in text
            assert "2 presence records could not be read (left out): 'c1.bad.1', 'c1.old.2'" in text.splitlines()
            code, text = await anyio.to_thread.run_sync(status, url, "--json")
            assert code == 0 and [row["service"] for row in json.loads(text)] == ["controller"]
            err = capsys.readouterr().err
            assert "dfdb: 2 presence records could not be read (left out): 'c1.bad.1', 'c1.old.2'" in err
            assert "Traceback" not in err


async def test_status_escapes_control_characters_in_a_record(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    async with dfdb.connect(url) as nb:
        hostile = "\x1b]0;owned\x07svc\u009b31m\u2028x"
        await nb.create(
            dfdb.ServicePresence(id="c1.svc.1", service=hostile, chassis="c\x1b[2J", pid=1, dfdb_version="\x7f")
        )
    code, text = await anyio.to_thread.run_sync(status, url)
    assert code == 0 and "1 live service" in text
    assert not any(c in text for c in "\x1b\x07\x7f\u009b\u2028")
    assert "\\u001b]0;owned\\u0007svc\\u009b31m\\u2028x" in text and "c\\u001b[2J" in text


async def test_ls_names_the_objects_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    async with dfdb.connect(url) as nb:
        await nb.create(LogicalSwitch(id="good", topic="t"))
        await nb.driver.put("lswitch", "bad", "t", b"{not json", ANY)

    def ls(*extra: str) -> tuple[int, str]:
        out = io.StringIO()
        import contextlib

        with contextlib.redirect_stdout(out):
            code = main(["--db", url, "ls", "lswitch", *extra])
        return code, out.getvalue()

    for extra in ((), ("-o", "json")):
        code, text = await anyio.to_thread.run_sync(ls, *extra)
        assert code == 0 and "good" in text and "bad" not in text
        assert "dfdb: 1 lswitch object could not be read (left out): 'bad'" in capsys.readouterr().err
