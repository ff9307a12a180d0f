"""The raw baselines: each backend's own client doing the equivalent of each case."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dfdb.bench.workload import sample_values
from dfdb.url import DatabaseURL

__all__ = ["RAW", "RawClient", "default_redis_reading", "describe_redis", "raw_client_for", "redis_options"]

RAW: dict[str, str] = {
    "memory": "no raw client (an in-process store): dfdb figures only.",
    "sqlite": "`aiosqlite` on its own file: sequential = `INSERT` + `COMMIT` per object; bulk = "
    "`executemany` of 500 rows per transaction; sync = `SELECT` of every row + `json.loads`; "
    "no change stream to compare.",
    "redis": "`redis.asyncio` on one connection: sequential = `SET key <JSON>`; bulk = pipelined `SET` "
    "in chunks of 256; events = `XADD` then a blocking `XREAD` on a second connection; sync = "
    "`SCAN` + `MGET` in chunks of 1,000 + `json.loads`.",
    "etcd": "`aetcd`: sequential = a transaction comparing the key's version with 0 then `put`; bulk = "
    "the same with 64 in flight (dfdb's window); events = `put` then the event of a prefix watch; "
    "sync = ranges of 1,000 keys at one revision + `json.loads`.",
    "zookeeper": "`aiozk`: sequential = `create`; bulk = `multi` of 100 creates, 4 in flight; events = "
    "`set_data` then the data watch event (re-armed by `get`); sync = `get_children` + 64 `get` "
    "in flight + `json.loads`.",
}

"""What each backend's raw baseline does (printed under the report's table)."""


class RawClient:
    """A raw client doing the equivalent of each case."""

    async def open(self) -> None:
        """Connect."""

    async def close(self) -> None:
        """Disconnect."""

    async def prepare(self, run: str) -> None:
        """Make the place ``seq`` or ``bulk`` writes to (not timed)."""

    async def seq(self, run: str, values: list[bytes]) -> None:
        """Case 1: create each value under ``run``, one after another."""
        raise NotImplementedError

    async def bulk(self, run: str, values: list[bytes]) -> None:
        """Case 2: create every value under ``run`` in batches."""
        raise NotImplementedError

    async def latency(self, run: str, n: int) -> list[float]:
        """Case 3: seconds from each of ``n`` writes to its watch event (none: no stream)."""
        return []

    async def read_all(self, run: str) -> dict[str, Any]:
        """Case 4: every value under ``run``, parsed."""
        raise NotImplementedError

    async def drop(self, names: list[str]) -> None:
        """Remove the namespaces ``names`` (dfdb's and the raw ones)."""


class _RawSqlite(RawClient):
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db: Any = None

    async def _open_run(self, run: str) -> Any:
        import aiosqlite

        if self.db is not None:
            await self.db.close()
        self.db = await aiosqlite.connect(self.tmp / f"raw-{run}.db")
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("CREATE TABLE IF NOT EXISTS raw (k TEXT PRIMARY KEY, v BLOB NOT NULL)")
        await self.db.commit()
        return self.db

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()

    async def prepare(self, run: str) -> None:
        await self._open_run(run)

    async def seq(self, run: str, values: list[bytes]) -> None:
        db = self.db
        for i, v in enumerate(values):
            await db.execute("INSERT INTO raw (k, v) VALUES (?, ?)", (str(i), v))
            await db.commit()

    async def bulk(self, run: str, values: list[bytes]) -> None:
        db = self.db
        for start in range(0, len(values), 500):
            await db.executemany(
                "INSERT INTO raw (k, v) VALUES (?, ?)",
                [(str(start + i), v) for i, v in enumerate(values[start : start + 500])],
            )
            await db.commit()

    async def drop(self, names: list[str]) -> None:
        for name in names:
            for stem in (name, f"raw-{name}"):
                for suffix in ("", "-wal", "-shm"):
                    (self.tmp / f"{stem}.db{suffix}").unlink(missing_ok=True)

    async def read_all(self, run: str) -> dict[str, Any]:
        db = await self._open_run(run)
        async with db.execute("SELECT k, v FROM raw") as cursor:
            return {k: json.loads(v) async for k, v in cursor}


def _connection(client: Any) -> Any:
    """A connection made with the pool settings of redis-py's ``client`` (never connected)."""
    pool = client.connection_pool
    return pool.connection_class(**pool.connection_kwargs)


def redis_options(client: Any) -> dict[str, Any]:
    """The options that decide how the connections of redis-py's ``client`` read replies:
    the reply parser class (``parser_class``, as a connection of it has it) and the
    protocol its pool was given (``protocol``; ``None``: redis-py's default)."""
    return {
        "parser_class": type(_connection(client)._parser),
        "protocol": client.connection_pool.connection_kwargs.get("protocol"),
    }


def describe_redis(client: Any) -> str:
    """How the connections of redis-py's ``client`` read replies, for the report: the parser
    (``hiredis`` with its version, or redis-py's own in Python) and the protocol."""
    from importlib import metadata

    connection = _connection(client)
    parser: type[Any] = type(connection._parser)
    protocol = f"RESP{connection.protocol}"
    if "hiredis" in parser.__name__.lower():
        try:
            return f"`hiredis` {metadata.version('hiredis')} over {protocol}"
        except metadata.PackageNotFoundError:
            return f"`hiredis` over {protocol}"
    try:
        metadata.version("hiredis")
    except metadata.PackageNotFoundError:
        return f"redis-py's own in Python (`{parser.__name__}`; `hiredis` is not installed) over {protocol}"
    return f"redis-py's own in Python (`{parser.__name__}`; `hiredis` is installed but not used) over {protocol}"


def default_redis_reading() -> str | None:
    """What :func:`describe_redis` says of a redis-py client with the default parser and
    protocol (dfdb's driver sets neither), or ``None`` without redis-py: how a Redis run
    here would read replies."""
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return None
    return describe_redis(SimpleNamespace(connection_pool=aioredis.ConnectionPool()))


class _RawRedis(RawClient):
    def __init__(self, url: DatabaseURL, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.options = options or {}
        """The client options to use, as :func:`redis_options` reads them (none: redis-py's defaults)."""
        self.client: Any = None
        self.reader: Any = None

    async def open(self) -> None:
        import redis.asyncio as aioredis

        host, port = self.url.hosts[0] if self.url.hosts else ("127.0.0.1", 6379)
        db = int(self.url.path or 0) if (self.url.path or "0").isdigit() else 0
        kw: dict[str, Any] = {"host": host, "port": port or 6379, "db": db, "password": self.url.password}
        self.client = aioredis.Redis.from_pool(aioredis.ConnectionPool(**kw, **self.options))
        self.reader = aioredis.Redis.from_pool(aioredis.ConnectionPool(**kw, **self.options))
        used = redis_options(self.client)
        if self.options and any(used[k] != v for k, v in self.options.items()):
            raise RuntimeError(f"the raw Redis client uses {used}, not {self.options}")

    async def close(self) -> None:
        for c in (self.client, self.reader):
            if c is not None:
                await c.aclose()

    async def seq(self, run: str, values: list[bytes]) -> None:
        for i, v in enumerate(values):
            await self.client.set(f"{run}/{i}", v)

    async def bulk(self, run: str, values: list[bytes]) -> None:
        for start in range(0, len(values), 256):
            pipe = self.client.pipeline(transaction=False)
            for i, v in enumerate(values[start : start + 256]):
                pipe.set(f"{run}/{start + i}", v)
            await pipe.execute()

    async def latency(self, run: str, n: int) -> list[float]:
        key, value, last, out = f"{run}/stream", sample_values(1, run)[0], "0-0", []
        for _ in range(n):
            t0 = time.perf_counter()
            read = asyncio.ensure_future(self.reader.xread({key: last}, block=5000, count=1))
            await self.client.xadd(key, {"v": value})
            last = (await read)[0][1][-1][0]
            out.append(time.perf_counter() - t0)
        return out

    async def read_all(self, run: str) -> dict[str, Any]:
        keys = [k async for k in self.client.scan_iter(match=f"{run}/*", count=1000)]
        out: dict[str, Any] = {}
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            for k, v in zip(chunk, await self.client.mget(chunk), strict=True):
                out[k.decode()] = json.loads(v)
        return out

    async def drop(self, names: list[str]) -> None:
        for name in names:
            keys = [k async for k in self.client.scan_iter(match=f"{name}/*", count=1000)]
            for start in range(0, len(keys), 1000):
                await self.client.unlink(*keys[start : start + 1000])


class _RawEtcd(RawClient):
    def __init__(self, url: DatabaseURL) -> None:
        self.url = url
        self.client: Any = None

    async def open(self) -> None:
        import aetcd

        host, port = self.url.hosts[0] if self.url.hosts else ("127.0.0.1", 2379)
        self.client = aetcd.Client(
            host, port or 2379, username=self.url.username, password=self.url.password, timeout=30
        )
        await self.client.connect()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def _create(self, key: bytes, value: bytes) -> None:
        t = self.client.transactions
        await self.client.transaction(compare=[t.version(key) == 0], success=[t.put(key, value)], failure=[])

    async def seq(self, run: str, values: list[bytes]) -> None:
        for i, v in enumerate(values):
            await self._create(f"{run}/{i}".encode(), v)

    async def bulk(self, run: str, values: list[bytes]) -> None:
        todo = iter(enumerate(values))

        async def worker() -> None:
            for i, v in todo:
                await self._create(f"{run}/{i}".encode(), v)

        await asyncio.gather(*(worker() for _ in range(64)))

    async def latency(self, run: str, n: int) -> list[float]:
        key, value, out = f"{run}/watched".encode(), sample_values(1, run)[0], []
        watch = await self.client.watch_prefix(key)
        events = aiter(watch)
        for _ in range(n):
            t0 = time.perf_counter()
            got = asyncio.ensure_future(anext(events))
            await self.client.put(key, value)
            await got
            out.append(time.perf_counter() - t0)
        await watch.cancel()
        return out

    async def read_all(self, run: str) -> dict[str, Any]:
        from aetcd import rpc

        start, end = f"{run}/".encode(), f"{run}0".encode()  # "0" follows "/"
        out: dict[str, Any] = {}
        revision = 0
        while True:
            reply = await self.client.kvstub.Range(
                rpc.RangeRequest(key=start, range_end=end, limit=1000, revision=revision), timeout=30
            )
            revision = revision or reply.header.revision
            for kv in reply.kvs:
                out[kv.key.decode()] = json.loads(kv.value)
            if not reply.more:
                return out
            start = reply.kvs[-1].key + b"\0"

    async def drop(self, names: list[str]) -> None:
        from aetcd import rpc

        for name in names:
            await self.client.delete_prefix(f"{name}/".encode())
        status = await self.client.kvstub.Range(rpc.RangeRequest(key=b"\0", limit=1), timeout=30)
        await self.client.kvstub.Compact(rpc.CompactionRequest(revision=status.header.revision), timeout=60)


class _RawZooKeeper(RawClient):
    def __init__(self, url: DatabaseURL) -> None:
        self.url = url
        self.client: Any = None

    async def open(self) -> None:
        from aiozk import ZKClient

        servers = ",".join(f"{h}:{p or 2181}" for h, p in self.url.hosts) or "127.0.0.1:2181"
        self.client = ZKClient(servers, session_timeout=30)
        await self.client.start()
        if self.url.username is not None:
            from aiozk import protocol

            auth = f"{self.url.username}:{self.url.password}".encode()
            await self.client.send(protocol.AuthRequest(type=0, scheme="digest", auth=auth))

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def prepare(self, run: str) -> None:
        await self.client.ensure_path(f"/{run}")

    async def seq(self, run: str, values: list[bytes]) -> None:
        for i, v in enumerate(values):
            await self.client.create(f"/{run}/{i}", v)

    async def bulk(self, run: str, values: list[bytes]) -> None:
        todo = iter(range(0, len(values), 100))

        async def worker() -> None:
            for start in todo:
                txn = self.client.begin_transaction()
                for i, v in enumerate(values[start : start + 100]):
                    txn.create(f"/{run}/{start + i}", v)
                await txn.commit()

        await asyncio.gather(*(worker() for _ in range(4)))

    async def latency(self, run: str, n: int) -> list[float]:
        from aiozk import WatchEvent

        path, value, out = f"/{run}-watched", sample_values(1, run)[0], []
        await self.client.create(path, value)
        for _ in range(n):
            await self.client.get(path, watch=True)
            fired = self.client.wait_for_events([WatchEvent.DATA_CHANGED], path)
            t0 = time.perf_counter()
            await self.client.set_data(path, value, force=True)
            await fired
            out.append(time.perf_counter() - t0)
        return out

    async def read_all(self, run: str) -> dict[str, Any]:
        names = await self.client.get_children(f"/{run}")
        todo = iter(names)
        out: dict[str, Any] = {}

        async def worker() -> None:
            for name in todo:
                out[name] = json.loads(await self.client.get_data(f"/{run}/{name}"))

        await asyncio.gather(*(worker() for _ in range(64)))
        return out

    async def drop(self, names: list[str]) -> None:
        """Delete each tree, deepest nodes first, in ``multi`` chunks of 500."""
        for name in names:
            levels: list[list[str]] = []
            level = [p for p in (f"/{name}", f"/{name}-watched") if await self.client.exists(p)]
            while level:
                levels.append(level)
                children = await asyncio.gather(*(self.client.get_children(p) for p in level))
                level = [f"{p}/{c}" for p, names_ in zip(level, children, strict=True) for c in names_]
            for paths in reversed(levels):
                chunks = [paths[i : i + 500] for i in range(0, len(paths), 500)]
                for batch in range(0, len(chunks), 4):
                    await asyncio.gather(*(self._delete(chunk) for chunk in chunks[batch : batch + 4]))

    async def _delete(self, paths: list[str]) -> None:
        txn = self.client.begin_transaction()
        for path in paths:
            txn.delete(path)
        await txn.commit()


def raw_client_for(url: DatabaseURL, tmp: Path, *, redis: dict[str, Any] | None = None) -> RawClient | None:
    """The raw client of ``url``'s backend (SQLite files in ``tmp``), ``None`` for memory://.
    ``redis``: a Redis client's options, as :func:`redis_options` reads them (default: redis-py's)."""
    if url.scheme == "sqlite":
        return _RawSqlite(tmp)
    if url.scheme == "redis":
        return _RawRedis(url, redis)
    if url.scheme == "etcd":
        return _RawEtcd(url)
    if url.scheme == "zk":
        return _RawZooKeeper(url)
    return None
