"""The NbApi boundary against real servers: credentials, URL timeouts, value sizes."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

import dfdb
from dfdb.models import LogicalSwitch
from dfdb.testing.servers import LocalServer, free_port, skip_missing_server


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
