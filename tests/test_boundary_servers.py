"""The NbApi boundary against real servers: credentials, URL timeouts, value sizes."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

import dfdb
from dfdb.models import LogicalSwitch
from dfdb.servers import EtcdServer, RedisServer
from dfdb.testing.servers import LocalServer, free_port, skip_missing_server
from watching import serve, stop


@dataclass
class SecuredRedis:
    port: int
    socket: Path
    password: str


@pytest.fixture(scope="module")
def secured_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRedis]:
    """A ``redis-server`` with ``requirepass`` that also listens on a Unix socket."""
    binary = shutil.which("redis-server")
    if binary is None:
        skip_missing_server("redis")
    workdir = tmp_path_factory.mktemp("redis")
    server = SecuredRedis(free_port(), workdir / "redis.sock", "s3cret")
    args = [
        binary, "--port", str(server.port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
        "--appendonly", "no", "--unixsocket", str(server.socket), "--unixsocketperm", "700",
        "--requirepass", server.password, "--daemonize", "no", "--logfile", str(workdir / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not server.socket.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        yield server
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_wrong_redis_password_fails_at_once(secured_redis: SecuredRedis) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    url = f"redis://:wrong@127.0.0.1:{secured_redis.port}/0"
    with pytest.raises(dfdb.AuthenticationError, match="authentication failed") as info:
        async with dfdb.connect(url, timeout=10):
            pass
    assert loop.time() - started < 2  # not retried for the whole timeout
    assert isinstance(info.value, PermissionError) and "wrong" not in str(info.value)


async def test_a_missing_redis_password_says_so(secured_redis: SecuredRedis) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(dfdb.AuthenticationError, match="requires a password and the URL gives none"):
        async with dfdb.connect(f"redis://127.0.0.1:{secured_redis.port}/0", timeout=10):
            pass
    assert loop.time() - started < 2


def test_the_cli_reports_a_wrong_password_in_one_line(secured_redis: SecuredRedis) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "dfdb", "--db", f"redis://:nope@127.0.0.1:{secured_redis.port}/0", "ls", "lswitch"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 4
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "authentication failed" in result.stderr
    assert "nope" not in result.stderr


async def test_unix_socket_urls_take_the_db_option(secured_redis: SecuredRedis) -> None:
    url = f"unix://:{secured_redis.password}@{secured_redis.socket}?db=2&prefix=unixdb"
    async with dfdb.connect(url) as nb:
        await nb.create(LogicalSwitch(id="s", topic="t"))
        assert (await nb.get(LogicalSwitch, "s")).version == 1
    raw = aioredis.Redis(unix_socket_path=str(secured_redis.socket), password=secured_redis.password, db=2)
    other = aioredis.Redis(unix_socket_path=str(secured_redis.socket), password=secured_redis.password, db=0)
    try:
        assert await raw.exists("unixdb/e/lswitch/s") == 1
        assert await other.exists("unixdb/e/lswitch/s") == 0
    finally:
        await raw.aclose()
        await other.aclose()


async def test_redis_refuses_values_over_its_limit(dfdb_redis_server: LocalServer) -> None:
    address = dfdb_redis_server.url.split("://", 1)[1].split("/", 1)[0]
    async with dfdb.connect(f"redis://{address}/0?prefix=bigvalues") as nb:
        assert nb.driver.max_value_size == 16 * 1024 * 1024
        with pytest.raises(dfdb.ValueTooLargeError, match="16,777,216"):
            await nb.create(LogicalSwitch(id="huge", name="x" * (16 * 1024 * 1024)))
        await nb.delete(LogicalSwitch, (await nb.create(LogicalSwitch(id="big", name="x" * 1_000_000))).id)


async def test_the_url_timeout_reaches_the_etcd_driver(dfdb_etcd_server: LocalServer) -> None:
    address = dfdb_etcd_server.url.split("://", 1)[1].split("/", 1)[0]
    async with dfdb.connect(f"etcd://{address}/timeouts?timeout=7") as nb:
        assert (nb.timeout, nb.driver.timeout) == (7.0, 7.0)  # type: ignore[attr-defined]
        await nb.create(LogicalSwitch(id="s"))
    async with dfdb.connect(f"etcd://{address}/timeouts?timeout=7&poll_interval=0.2", notifications="poll") as nb:
        assert (nb.timeout, nb.poll_interval, nb.driver.timeout) == (7.0, 0.2, 7.0)  # type: ignore[attr-defined]
        await nb.delete(LogicalSwitch, "s")


async def test_the_url_timeout_reaches_the_zookeeper_driver(dfdb_zookeeper_server: LocalServer) -> None:
    address = dfdb_zookeeper_server.url.split("://", 1)[1].split("/", 1)[0]
    async with dfdb.connect(f"zk://{address}/timeouts?timeout=7") as nb:
        assert (nb.timeout, nb.driver.timeout) == (7.0, 7.0)  # type: ignore[attr-defined]
        await nb.create(LogicalSwitch(id="s"))


async def test_etcd_takes_values_up_to_its_limit_and_refuses_larger(dfdb_etcd_server: LocalServer) -> None:
    address = dfdb_etcd_server.url.split("://", 1)[1].split("/", 1)[0]
    async with dfdb.connect(f"etcd://{address}/bigvalues") as nb:
        limit = nb.driver.max_value_size
        assert limit is not None
        with pytest.raises(dfdb.ValueTooLargeError, match="etcd://") as info:
            await nb.create(LogicalSwitch(id="a" * 255, topic="t" * 255, name="x" * limit))
        overhead = info.value.size - limit  # the rest of the encoded object
        at_limit = LogicalSwitch(id="a" * 255, topic="t" * 255, name="x" * (limit - overhead))
        stored = await nb.create(at_limit)
        assert (await nb.get(LogicalSwitch, at_limit.id)).name == stored.name
        with pytest.raises(dfdb.ValueTooLargeError):
            await nb.create(LogicalSwitch(id="c", name="x" * 1_000_000))  # failed inside etcd before


class BatchItem(dfdb.NbModel, table="boundary_batch_item"):
    n: int = 0


@pytest.mark.parametrize("factory", [RedisServer, EtcdServer], ids=["redis", "etcd"])
async def test_a_batch_to_a_server_that_stopped_answering_ends_within_two_deadlines(
    factory: Callable[[], LocalServer], dfdb_leak_check: None
) -> None:
    """create_many of 1,000 objects (four chunks) and update_many of 300, with a 1 s timeout,
    the server stopped with SIGSTOP: the first chunk's writes, whose reply was lost, are
    resolved together within one more deadline (each an OutcomeUnknownError); the later ones
    are not sent (each a BackendUnavailableError saying so, and none of them stored). About
    two deadlines in all, not one or more per write."""
    for server in serve(factory):
        try:
            url = server.url if factory is RedisServer else f"{server.url}/batch"
            async with dfdb.connect(url, timeout=1) as nb:
                kept = await nb.create_many([BatchItem(id=f"u{i}") for i in range(300)])
                stop(server)
                creates = [BatchItem(id=f"o{i}") for i in range(1000)]
                updates = [u.model_copy(update={"n": 1}) for u in kept if isinstance(u, BatchItem)]
                for call, objs in ((nb.create_many, creates), (nb.update_many, updates)):
                    started = time.monotonic()
                    with anyio.fail_after(15):
                        results = await call(objs)
                    assert time.monotonic() - started < 5
                    assert all(isinstance(r, dfdb.OutcomeUnknownError) for r in results[:256]), results[0]
                    assert all(type(r) is dfdb.BackendUnavailableError for r in results[256:]), results[-1]
                    assert "was not sent: the server did not answer" in str(results[-1])
                server.resume()
                stored = {i.id: i.n for i in await nb.get_all(BatchItem)}
                assert not set(stored) & {f"o{i}" for i in range(256, 1000)}
                assert [stored[f"u{i}"] for i in range(256, 300)] == [0] * 44
        finally:
            server.resume()
