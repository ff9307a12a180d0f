"""Helpers of the driver fault tests: a local server per test (and stopping it with SIGSTOP),
and a watcher that follows one model and reconciles on RESYNC."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import dfdb
from dfdb.events import parse_cursor
from dfdb.servers import LocalServer
from dfdb.testing.servers import BACKENDS, skip_missing_server


class Watcher:
    """Follows ``model`` through one stream; on RESYNC it lists the table again and
    replaces its view, as a Replica reconciles."""

    def __init__(self, nb: dfdb.NbApi, model: type[dfdb.NbModel]) -> None:
        self.nb = nb
        self.model = model
        self.pairs: list[tuple[str, int]] = []
        self.view: dict[str, int] = {}
        self.resyncs = 0
        self.position = 0
        self.moved = asyncio.Event()
        self.ready = asyncio.Event()
        self.stream: dfdb.ChangeStream | None = None

    async def run(self) -> None:
        listing = await self.nb.list(self.model)
        self.view = {p.id: p.version for p in listing.items}
        async with self.nb.watch(self.model, since=listing.cursor) as stream:
            self.stream = stream
            self.ready.set()
            async for ev in stream:
                if ev.action == dfdb.Action.RESYNC:
                    self.resyncs += 1
                    self.view = {p.id: p.version for p in await self.nb.get_all(self.model)}
                else:
                    self.pairs.append((ev.id, ev.revision))
                    if ev.action == dfdb.Action.DELETE:
                        self.view.pop(ev.id, None)
                    elif ev.obj is not None:
                        self.view[ev.id] = ev.obj.version
                self.position = max(self.position, parse_cursor(ev.cursor)[1])  # every change up to here
                self.moved.set()

    async def wait_past(self, revision: int, within: float = 30) -> None:
        async with asyncio.timeout(within):
            while self.position < revision:
                self.moved.clear()
                await self.moved.wait()


@contextlib.asynccontextmanager
async def watchers(nb: dfdb.NbApi, model: type[dfdb.NbModel], count: int) -> AsyncIterator[list[Watcher]]:
    ws = [Watcher(nb, model) for _ in range(count)]
    tasks = [asyncio.create_task(w.run()) for w in ws]
    try:
        async with asyncio.timeout(10):
            await asyncio.gather(*(w.ready.wait() for w in ws))
        yield ws
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
            if not t.cancelled() and t.exception() is not None:
                raise AssertionError("a watcher failed") from t.exception()


S = TypeVar("S", bound=LocalServer)


def serve(factory: Callable[[], S]) -> Iterator[S]:
    """Start a server for one test (skipped when its binary is missing, failed when
    ``DFDB_REQUIRE_SERVERS=1``) and stop it afterwards."""
    server = factory()
    if not server.available():
        server.stop()
        skip_missing_server(BACKENDS[type(server)])
    try:
        server.start()  # a start that fails part-way (one member of three) stops the rest below
        yield server
    finally:
        server.stop()


async def check_server_run(
    server: type[LocalServer],
    backend: str,
    scheme: str,
    model: type[dfdb.NbModel],
    members: int = 1,
    hosts: int | None = None,
    *,
    tls: bool = False,
) -> None:
    """``dfdb server run BACKEND [--members N] [--tls]`` prints a URL (of ``hosts``
    addresses, default one per member) that serves, and exits 0 on Ctrl-C."""
    import signal
    import sys

    if not server.available():
        skip_missing_server(backend)
    args = ["server", "run", backend] + (["--members", str(members)] if members > 1 else [])
    args += ["--tls"] if tls else []
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dfdb", *args, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith(f"serving on {scheme}://127.0.0.1:"), line
        url = line.split()[2]
        assert url.count(",") == (hosts or members) - 1
        assert ("tls=true" in url) == tls, url
        async with dfdb.connect(url, timeout=30) as nb:
            await nb.create(model(id="dev", topic="t"))
            assert (await nb.get(model, "dev")).id == "dev"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def stop(server: LocalServer) -> None:
    """SIGSTOP the server and wait until every thread of it stopped (a thread busy at that
    moment may still answer a request written meanwhile)."""
    server.pause()
    [proc] = server.processes
    assert proc is not None
    deadline = time.monotonic() + 10
    tasks = Path(f"/proc/{proc.pid}/task")
    while any(_state(t / "stat") not in ("T", "t", None) for t in tasks.iterdir()):
        assert time.monotonic() < deadline, "the server did not stop"
        time.sleep(0.001)


def _state(stat: Path) -> str | None:
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # a thread that ended meanwhile
        return None


async def close_during_writes(url: str, model: type[dfdb.NbModel], turns: int) -> None:
    """Connect to ``url``, start 30 puts of ``model`` (each may open a connection), let them
    run ``turns`` loop rounds, close the NbApi under them, and check that each write ended
    stored or refused as closed or unavailable."""
    nb = await dfdb.connect(url)
    writes = [asyncio.create_task(nb.put(model(id=f"p{i}"))) for i in range(30)]
    for _ in range(turns):
        await asyncio.sleep(0)
    await nb.aclose()
    for outcome in await asyncio.gather(*writes, return_exceptions=True):
        assert isinstance(outcome, model | dfdb.StreamClosedError | dfdb.BackendUnavailableError), outcome
