"""dfdb against the raw clients: five cases per backend, measured side by side.

Each case runs for dfdb and for the raw client doing the equivalent work, in the same
process, interleaved (dfdb, raw, dfdb, raw …), ``repeat`` times; the report gives the
median and the spread (lowest-highest) of each, and their ratio. Every run works in
its own namespace (a fresh key prefix, chroot or file), so runs never see each other.

1. Sequential create (objects/s): ``nb.create`` one after another vs the raw client's
   create-if-absent of the same JSON bytes, one after another.
2. Bulk load of LogicalPorts (objects/s): ``nb.create_many`` vs raw batched writes at
   the concurrency dfdb's driver uses.
3. Write→event latency (ms, p50 and p99): ``nb.update`` then the ``ChangeStream``
   event vs a raw write then the raw client's own watch event; native streams, and
   dfdb's polling mode against the same raw figure.
4. Replica full sync (seconds): a FULL :class:`~dfdb.Replica` of every port loaded in
   case 2 vs the raw client reading the same number of values and parsing each JSON
   document into a dict; and the memory per cached object (``tracemalloc``) vs the
   same ports as validated models in a plain ``dict``.
5. Selective fan-out (records and bytes): controllers, each a SELECTIVE Replica of one
   topic, while writes are spread over the topics: the most any controller read from
   the server vs what its own topic holds (the raw column is that ideal).

``RAW`` below describes each backend's raw baseline; ``python benchmarks/run.py`` (or
``nox -s bench``) writes docs/benchmarks.md and docs/benchmarks.json; ``dfdb bench
--db URL`` runs the same cases against a server of your own and prints the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from dfdb.errors import InvalidURL
from dfdb.models import LogicalPort
from dfdb.nb import connect, revision_of
from dfdb.replica import Replica, SyncMode
from dfdb.url import DatabaseURL

__all__ = ["RAW", "BenchResult", "Sizes", "render_markdown", "run_backend"]

POLL_INTERVAL = 0.05
"""Seconds between polls in the polling-mode latency rows."""

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


@dataclass(frozen=True)
class Sizes:
    """How much each case does."""

    seq: int = 1000
    bulk: int = 100_000
    events: int = 2000
    poll_events: int = 300
    controllers: int = 50
    fanout_writes: int = 10_000
    repeat: int = 5

    @classmethod
    def quick(cls) -> Sizes:
        """Seconds per backend: a smoke test, not a measurement."""
        return cls(seq=40, bulk=400, events=40, poll_events=10, controllers=5, fanout_writes=200, repeat=2)


@dataclass
class BenchResult:
    """One row of the report."""

    case: str
    backend: str
    unit: str
    dfdb: list[float]
    raw: list[float] = field(default_factory=list)
    higher_is_better: bool = True
    target: float | None = None
    """The ratio dfdb/raw aimed at (a floor when higher is better, else a ceiling)."""
    pooled: tuple[float, float | None] | None = None
    """Latency rows: the percentile over every event of every run (dfdb, raw); the
    samples are then the per-run percentiles, which give the spread."""

    @property
    def value(self) -> float:
        """dfdb's figure: the pooled percentile, else the median of the runs."""
        return self.pooled[0] if self.pooled is not None else statistics.median(self.dfdb)

    @property
    def raw_value(self) -> float | None:
        """The raw client's figure, or ``None`` without one."""
        if self.pooled is not None:
            return self.pooled[1]
        return statistics.median(self.raw) if self.raw else None

    @property
    def ratio(self) -> float | None:
        """dfdb's figure over raw's, or ``None`` without a raw figure."""
        raw = self.raw_value
        return None if not raw else self.value / raw

    @property
    def met(self) -> bool | None:
        """Whether the target is met (``None``: no target or no ratio)."""
        ratio = self.ratio
        if self.target is None or ratio is None:
            return None
        return ratio >= self.target if self.higher_is_better else ratio <= self.target

    def as_dict(self) -> dict[str, Any]:
        """The row with its samples, for the JSON report."""
        out = dataclasses.asdict(self)
        out.update(value=self.value, raw_value=self.raw_value, ratio=self.ratio, met=self.met)
        return out


def _port(i: int, run: str, topics: int = 20) -> LogicalPort:
    return LogicalPort(
        id=f"{run}-{i}",
        topic=f"tenant-{i % topics}",
        lswitch=f"ls-{i % 50}",
        ips=(f"10.{i % 200}.{i % 250}.5",),
        macs=(f"fa:16:3e:00:{i % 256:02x}:{i // 256 % 256:02x}",),
    )


def _values(n: int, run: str) -> list[bytes]:
    return [_port(i, run).model_dump_json().encode() for i in range(n)]


# ---------------------------------------------------------------- namespaces
class _Namespaces:
    """A fresh namespace of ``base`` per run, and their removal afterwards."""

    def __init__(self, base: DatabaseURL, tmp: Path) -> None:
        self.base = base
        self.tmp = tmp
        self.made: list[str] = []

    def remember(self, name: str) -> str:
        """Note ``name`` for removal at the end; returns it."""
        if name not in self.made:
            self.made.append(name)
        return name

    def url(self, name: str, **options: str) -> DatabaseURL:
        base = self.base
        self.remember(name)
        opts = {**base.options, **options}
        if base.scheme == "memory":
            return dataclasses.replace(base, path=name, options=opts)
        if base.scheme == "sqlite":
            return dataclasses.replace(base, path=str(self.tmp / f"{name}.db"), options=opts)
        if base.scheme == "redis":
            return dataclasses.replace(base, options={**opts, "prefix": name})
        return dataclasses.replace(base, path=name, options=opts)  # etcd, zk: the path is the prefix


# ---------------------------------------------------------------- raw clients
class _Raw:
    """A raw client doing the equivalent of each case."""

    async def open(self) -> None:
        """Connect."""

    async def close(self) -> None:
        """Disconnect."""

    async def prepare(self, run: str) -> None:
        """Make the place ``seq`` or ``bulk`` writes to (not timed)."""

    async def seq(self, run: str, values: list[bytes]) -> None:
        raise NotImplementedError

    async def bulk(self, run: str, values: list[bytes]) -> None:
        raise NotImplementedError

    async def latency(self, run: str, n: int) -> list[float]:
        return []

    async def read_all(self, run: str) -> dict[str, Any]:
        raise NotImplementedError

    async def drop(self, names: list[str]) -> None:
        """Remove the namespaces ``names`` (dfdb's and the raw ones)."""


class _RawSqlite(_Raw):
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


class _RawRedis(_Raw):
    def __init__(self, url: DatabaseURL) -> None:
        self.url = url
        self.client: Any = None
        self.reader: Any = None

    async def open(self) -> None:
        import redis.asyncio as aioredis

        host, port = self.url.hosts[0] if self.url.hosts else ("127.0.0.1", 6379)
        db = int(self.url.path or 0) if (self.url.path or "0").isdigit() else 0
        kw: dict[str, Any] = {"host": host, "port": port or 6379, "db": db, "password": self.url.password}
        self.client = aioredis.Redis(**kw)
        self.reader = aioredis.Redis(**kw)

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
        key, value, last, out = f"{run}/stream", _values(1, run)[0], "0-0", []
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


class _RawEtcd(_Raw):
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
        key, value, out = f"{run}/watched".encode(), _values(1, run)[0], []
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


class _RawZooKeeper(_Raw):
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

        path, value, out = f"/{run}-watched", _values(1, run)[0], []
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


def _raw_for(url: DatabaseURL, tmp: Path) -> _Raw | None:
    if url.scheme == "sqlite":
        return _RawSqlite(tmp)
    if url.scheme == "redis":
        return _RawRedis(url)
    if url.scheme == "etcd":
        return _RawEtcd(url)
    if url.scheme == "zk":
        return _RawZooKeeper(url)
    return None


# ---------------------------------------------------------------- dfdb side
async def _dfdb_seq(url: DatabaseURL, run: str, n: int) -> float:
    """Objects/s; the objects are made and the connection opened before the clock starts."""
    ports = [_port(i, run) for i in range(n)]
    async with connect(url) as nb:
        t0 = time.perf_counter()
        for obj in ports:
            await nb.create(obj)
        return n / (time.perf_counter() - t0)


async def _dfdb_bulk(url: DatabaseURL, run: str, n: int) -> float:
    """Objects/s, as for ``_dfdb_seq``."""
    ports = [_port(i, run) for i in range(n)]
    async with connect(url, timeout=600) as nb:
        t0 = time.perf_counter()
        results = await nb.create_many(ports)
        rate = n / (time.perf_counter() - t0)
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"bulk load: {len(failed)} writes failed, e.g. {failed[0]}")
    return rate


async def _dfdb_latency(url: DatabaseURL, run: str, n: int) -> list[float]:
    out: list[float] = []
    async with connect(url) as nb:
        obj = await nb.create(_port(0, run))
        async with nb.watch(LogicalPort) as stream:
            for i in range(n):
                t0 = time.perf_counter()
                event = asyncio.ensure_future(anext(stream))  # the consumer waits, as the raw reader does
                obj = await nb.update(obj.model_copy(update={"name": str(i)}))
                await asyncio.wait_for(event, 30)
                out.append(time.perf_counter() - t0)
    return out


async def _dfdb_sync(url: DatabaseURL, n: int) -> float:
    async with connect(url, timeout=600) as nb:
        t0 = time.perf_counter()
        async with Replica(nb, [LogicalPort]) as replica:
            took = time.perf_counter() - t0
            if len(replica) != n:
                raise RuntimeError(f"the Replica holds {len(replica)} ports, not {n}")
    return took


async def _dfdb_memory(url: DatabaseURL, n: int) -> tuple[float, float]:
    """Bytes per object: (a FULL Replica holding the ``n`` ports, the same ports as models in a dict)."""
    async with connect(url, timeout=600) as nb:
        listing = await nb.driver.list(LogicalPort.__table__)
        values = [e.value for e in listing.entries]
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            plain = {}
            for v in values:
                obj = LogicalPort.model_validate_json(v)
                plain[obj.id] = obj
            gc.collect()
            dict_bytes = tracemalloc.get_traced_memory()[0] - before
            del plain, obj
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            async with Replica(nb, [LogicalPort]) as replica:
                gc.collect()
                replica_bytes = tracemalloc.get_traced_memory()[0] - before
                if len(replica) != n:
                    raise RuntimeError(f"the Replica holds {len(replica)} ports, not {n}")
        finally:
            tracemalloc.stop()
    return replica_bytes / n, dict_bytes / n


async def _dfdb_fanout(
    url: DatabaseURL, run: str, controllers: int, writes: int
) -> tuple[list[int], list[int], int, int]:
    """Per controller (records read, bytes read), and one topic's (records, value bytes)."""
    async with connect(url, timeout=600) as nb, contextlib.AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(Replica(nb, [LogicalPort], mode=SyncMode.SELECTIVE, topics=[f"tenant-{k}"]))
            for k in range(controllers)
        ]
        ports = [_port(i, run, controllers) for i in range(writes)]
        written = await nb.create_many(ports)
        revisions = [revision_of(r) if isinstance(r, LogicalPort) else None for r in written]
        for k, replica in enumerate(replicas):
            own = [r for r in revisions[k::controllers] if r is not None]
            if len(own) != len(ports[k::controllers]):
                raise RuntimeError(f"fan-out: writes to tenant-{k} failed")
            if own:
                await asyncio.wait_for(replica.wait_for(max(own)), 120)
        stats = [r.stats() for r in replicas]
    own_ports = ports[0::controllers]
    return (
        [s.records_read for s in stats],
        [s.bytes_read for s in stats],
        len(own_ports),
        sum(len(p.model_dump_json()) for p in own_ports),
    )


# ---------------------------------------------------------------- the run
async def _interleave(
    repeat: int, dfdb_run: Callable[[str], Awaitable[float]], raw_run: Callable[[str], Awaitable[float]] | None
) -> tuple[list[float], list[float]]:
    d: list[float] = []
    r: list[float] = []
    for _ in range(repeat):
        d.append(await dfdb_run(uuid.uuid4().hex[:8]))
        if raw_run is not None:
            r.append(await raw_run(uuid.uuid4().hex[:8]))
    return d, r


async def _rate(n: int, work: Awaitable[Any]) -> float:
    t0 = time.perf_counter()
    await work
    return n / (time.perf_counter() - t0)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


async def run_backend(
    backend: str, url: str | DatabaseURL, sizes: Sizes, *, cleanup: bool = False, log: TextIO | None = None
) -> list[BenchResult]:
    """Run the five cases on ``url`` (``backend`` names the rows); returns the rows.

    Every run works in a namespace of its own (``bench-…`` key prefixes, chroots or
    files); with ``cleanup`` (a server of your own) they are removed at the end.

    Raises:
        InvalidURL: not a memory, sqlite, redis, etcd or zk URL.
    """
    base = DatabaseURL.parse(url)
    if base.scheme not in SCHEMES:
        raise InvalidURL(f"dfdb bench knows memory, sqlite, redis, etcd and zk URLs, not {base.scheme}://")
    tmp = Path(tempfile.mkdtemp(prefix="dfdb-bench-"))
    spaces = _Namespaces(base, tmp)
    raw = _raw_for(base, tmp)
    results: list[BenchResult] = []

    def say(text: str) -> None:
        if log is not None:
            print(f"  {backend}: {text}", file=log, flush=True)

    def ns(run: str, **options: str) -> DatabaseURL:
        return spaces.url(f"bench-{run}", **options)

    def raw_ns(run: str) -> str:
        return spaces.remember(f"bench-raw-{run}")

    async with contextlib.AsyncExitStack() as stack:
        if raw is not None:
            await raw.open()
            stack.push_async_callback(raw.close)
            if cleanup:
                stack.push_async_callback(raw.drop, spaces.made)
        stack.callback(shutil.rmtree, tmp, True)
        keeper = await stack.enter_async_context(contextlib.AsyncExitStack())  # memory:// lives while open

        # 1. sequential create
        say(f"sequential create x{sizes.seq}")

        async def seq_raw(run: str) -> float:
            assert raw is not None
            name, values = raw_ns(run), _values(sizes.seq, run)
            await raw.prepare(name)
            return await _rate(sizes.seq, raw.seq(name, values))

        d, r = await _interleave(sizes.repeat, lambda run: _dfdb_seq(ns(run), run, sizes.seq), seq_raw if raw else None)
        results.append(BenchResult("sequential create", backend, "objects/s", d, r, target=0.8))

        # 2. bulk load; the last dfdb and raw datasets stay for case 4
        say(f"bulk load x{sizes.bulk}")
        kept: dict[str, str] = {}

        async def bulk_dfdb(run: str) -> float:
            if "dfdb" in kept and raw is not None:  # only the last run's data stays
                await raw.drop([f"bench-{kept['dfdb']}"])
            kept["dfdb"] = run
            await keeper.aclose()
            await keeper.enter_async_context(connect(ns(run)))
            return await _dfdb_bulk(ns(run), run, sizes.bulk)

        async def bulk_raw(run: str) -> float:
            assert raw is not None
            if "raw" in kept:
                await raw.drop([kept["raw"]])
            kept["raw"] = raw_ns(run)
            values = _values(sizes.bulk, run)
            await raw.prepare(kept["raw"])
            return await _rate(sizes.bulk, raw.bulk(kept["raw"], values))

        d, r = await _interleave(sizes.repeat, bulk_dfdb, bulk_raw if raw else None)
        results.append(BenchResult(f"bulk load {sizes.bulk:,} ports", backend, "objects/s", d, r, target=0.5))

        # 3. write->event latency, native then polling
        say(f"write->event latency x{sizes.events}")
        native_d: list[list[float]] = []
        native_r: list[list[float]] = []
        for _ in range(sizes.repeat):
            run = uuid.uuid4().hex[:8]
            native_d.append(await _dfdb_latency(ns(run), run, max(1, sizes.events // sizes.repeat)))
            if raw is not None:
                native_r.append(await raw.latency(raw_ns(run), max(1, sizes.events // sizes.repeat)))
        native_r = [x for x in native_r if x]
        poll_d: list[list[float]] = []
        if base.scheme != "sqlite":  # its change-log poller is its only stream
            say(f"write->event latency, polling every {POLL_INTERVAL} s x{sizes.poll_events}")
            for _ in range(sizes.repeat):
                run = uuid.uuid4().hex[:8]
                polled = ns(run, notifications="poll", poll_interval=str(POLL_INTERVAL))
                poll_d.append(await _dfdb_latency(polled, run, max(1, sizes.poll_events // sizes.repeat)))
        for q, target in ((0.5, None), (0.99, 1.5)):
            results.append(_latency_row(f"write->event p{q * 100:.0f}", backend, native_d, native_r, q, target))
        if poll_d:
            results += [
                _latency_row(f"write->event p{q * 100:.0f}, polling", backend, poll_d, native_r, q, None)
                for q in (0.5, 0.99)
            ]

        # 4. Replica full sync and memory
        say(f"Replica full sync of {sizes.bulk}")
        full = ns(kept["dfdb"])

        async def sync_raw(_run: str) -> float:
            assert raw is not None
            t0 = time.perf_counter()
            got = await raw.read_all(kept["raw"])
            if len(got) != sizes.bulk:
                raise RuntimeError(f"raw read {len(got)} values, not {sizes.bulk}")
            return time.perf_counter() - t0

        d, r = await _interleave(sizes.repeat, lambda _run: _dfdb_sync(full, sizes.bulk), sync_raw if raw else None)
        results.append(BenchResult(f"Replica full sync of {sizes.bulk:,} ports", backend, "s", d, r, False))
        say("memory per cached object")
        replica_bytes, dict_bytes = await _dfdb_memory(full, sizes.bulk)
        results.append(
            BenchResult(
                "memory per cached port (raw: dict of models)",
                backend,
                "bytes",
                [replica_bytes],
                [dict_bytes],
                higher_is_better=False,
                target=1.5,
            )
        )
        await keeper.aclose()

        # 5. selective fan-out
        say(f"selective fan-out: {sizes.controllers} controllers, {sizes.fanout_writes} writes")
        run = uuid.uuid4().hex[:8]
        records, nbytes, own, own_bytes = await _dfdb_fanout(ns(run), run, sizes.controllers, sizes.fanout_writes)
        case = f"fan-out {sizes.fanout_writes:,} writes / {sizes.controllers} topics"
        results.append(
            BenchResult(
                f"{case}: records read (raw: own topic's)",
                backend,
                "records",
                [float(max(records))],
                [float(own)],
                higher_is_better=False,
                target=1.1,
            )
        )
        results.append(
            BenchResult(
                f"{case}: bytes read (raw: own topic's values)",
                backend,
                "bytes",
                [float(max(nbytes))],
                [float(own_bytes)],
                higher_is_better=False,
            )
        )
    return results


def _latency_row(
    case: str, backend: str, dfdb_runs: list[list[float]], raw_runs: list[list[float]], q: float, target: float | None
) -> BenchResult:
    """The percentile ``q`` over every event, with the per-run percentiles as the spread."""
    pooled_raw = [x for run in raw_runs for x in run]
    return BenchResult(
        case,
        backend,
        "ms",
        [_pct(run, q) for run in dfdb_runs],
        [_pct(run, q) for run in raw_runs],
        higher_is_better=False,
        target=target,
        pooled=(_pct([x for run in dfdb_runs for x in run], q), _pct(pooled_raw, q) if pooled_raw else None),
    )


# ---------------------------------------------------------------- report
def _figure(x: float, unit: str) -> str:
    if unit in ("ms", "s"):
        return f"{x:.3g}" if x < 100 else f"{x:,.0f}"
    return f"{x:,.0f}"


def _cell(row: BenchResult, raw: bool) -> str:
    samples = row.raw if raw else row.dfdb
    value = row.raw_value if raw else row.value
    if value is None or not samples:
        return "-"
    text = _figure(value, row.unit)
    if len(samples) > 1:
        text += f" ({_figure(min(samples), row.unit)} to {_figure(max(samples), row.unit)})"
    return text


def _target(row: BenchResult) -> str:
    if row.target is None or row.ratio is None:
        return ""
    bound = f"{'≥' if row.higher_is_better else '≤'} {row.target:g}x"
    met = row.met
    return bound if met is None else f"{bound} {'met' if met else '**missed**'}"


def render_markdown(results: list[BenchResult], *, sizes: Sizes, versions: dict[str, str], quick: bool) -> str:
    """The report: one table (case, backend, dfdb, raw, ratio, target), then the raw
    baselines and the machine."""
    backends = list(dict.fromkeys(r.backend for r in results))
    lines = [
        "# Benchmarks",
        "",
        "dfdb against the raw client of each backend, in one process, interleaved (dfdb, raw, dfdb, raw …), "
        f"{sizes.repeat} runs each: the median, with the lowest-highest run in brackets "
        "(latency: the percentile over every event, the per-run percentiles in brackets). "
        "Regenerate with `nox -s bench`; `dfdb bench --db URL` runs the same cases on a server of your own.",
        "",
    ]
    if quick:
        lines += ["**Quick mode: a smoke test with small sizes, not a measurement.**", ""]
    lines += [
        "| case | backend | unit | dfdb | raw | dfdb/raw | target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results:
        ratio = row.ratio
        lines.append(
            f"| {row.case} | {row.backend} | {row.unit} | {_cell(row, False)} | {_cell(row, True)} | "
            f"{'' if ratio is None else f'{ratio:.2f}x'} | {_target(row)} |"
        )
    lines += ["", "## Raw baselines", ""]
    lines += [
        f"- **{b}**: {RAW.get(DatabaseURL.parse(versions.get(f'url {b}', b + '://')).scheme, '')}" for b in backends
    ]
    lines += [
        "",
        "Case 4's memory row measures, with `tracemalloc`, what a FULL Replica holding every port retains per "
        "object (store, indexes, revisions) against the same ports validated into a plain `dict` of models. "
        f"Case 3's polling rows poll every {POLL_INTERVAL} s and compare with the raw native stream. Case 5: "
        f"{sizes.controllers} controllers, each a SELECTIVE Replica of one topic, one connection, while "
        f"{sizes.fanout_writes:,} creates are spread over the topics; the row shows the most any controller "
        "read from the server (records, and bytes as the driver received them: keys, values, metadata) "
        "against what one topic holds.",
        "",
        "## Machine and versions",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in versions.items() if not k.startswith("url ")]
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    """The machine, Python, the client libraries and the servers found here."""
    from importlib import metadata

    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "Python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    for dist in ("dfdb", "pydantic", "redis", "aetcd", "grpcio", "aiozk", "aiosqlite"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    for name, cmd in (("redis-server", ["redis-server", "--version"]), ("etcd", ["etcd", "--version"])):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
            out[name] = text.splitlines()[0] if text else "?"
    jars = sorted(Path("/usr/share/java").glob("zookeeper-[0-9]*.jar"))
    if jars:
        out["ZooKeeper"] = jars[0].stem.removeprefix("zookeeper-")
    import sqlite3

    out["SQLite"] = sqlite3.sqlite_version
    return out


@contextlib.contextmanager
def _servers(backends: list[str]) -> Iterator[dict[str, str]]:
    """Start a server for each server backend; yields backend -> URL."""
    from dfdb.testing.servers import EtcdServer, LocalServer, RedisServer, ZooKeeperServer

    started: list[LocalServer] = []
    tmp = Path(tempfile.mkdtemp(prefix="dfdb-bench-sqlite-"))
    urls: dict[str, str] = {}
    try:
        for backend in backends:
            if backend == "memory":
                urls[backend] = "memory://bench"
            elif backend == "sqlite":
                urls[backend] = f"sqlite:///{tmp}/bench.db"
            else:
                factory: dict[str, Callable[[], LocalServer]] = {
                    "redis": lambda: RedisServer(appendonly=False),
                    "etcd": EtcdServer,
                    "zookeeper": lambda: ZooKeeperServer(heap="2g"),  # 100k objects, log included
                }
                if backend not in factory:
                    raise InvalidURL(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
                server = factory[backend]()
                server.start()
                started.append(server)
                urls[backend] = server.url
        yield urls
    finally:
        for server in started:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


BACKENDS = ("memory", "sqlite", "redis", "etcd", "zookeeper")
"""The backends ``run_all`` knows (it starts the servers)."""
SCHEMES = {"memory": "memory", "sqlite": "sqlite", "redis": "redis", "etcd": "etcd", "zk": "zookeeper"}
"""URL scheme -> backend name."""


async def run_all(
    backends: list[str],
    sizes: Sizes,
    *,
    log: TextIO | None = None,
    done: Callable[[list[BenchResult], dict[str, str]], None] | None = None,
) -> tuple[list[BenchResult], dict[str, str]]:
    """Every case on each backend in ``backends`` (servers started here); returns the
    rows and the versions. ``done`` is called with the rows so far after each backend."""
    info = versions()
    results: list[BenchResult] = []
    for backend in backends:  # one server at a time
        with _servers([backend]) as urls:
            if log is not None:
                print(f"{backend} at {urls[backend]}", file=log, flush=True)
            results += await run_backend(backend, urls[backend], sizes, log=log)
        if done is not None:
            done(results, info)
    return results, info


def load_results(path: Path) -> list[BenchResult]:
    """The rows of a JSON report written by :func:`write_reports`."""
    rows = json.loads(path.read_text())["results"]
    names = {f.name for f in dataclasses.fields(BenchResult)}
    out = []
    for row in rows:
        fields = {k: v for k, v in row.items() if k in names}
        if fields.get("pooled") is not None:
            fields["pooled"] = tuple(fields["pooled"])
        out.append(BenchResult(**fields))
    return out


def write_reports(
    results: list[BenchResult],
    info: dict[str, str],
    sizes: Sizes,
    *,
    quick: bool,
    markdown: Path | None,
    json_path: Path | None,
) -> None:
    """The markdown report (docs/benchmarks.md) and the JSON file with every sample."""
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(render_markdown(results, sizes=sizes, versions=info, quick=quick))
    if json_path is None:
        return
    payload = {
        "quick": quick,
        "sizes": dataclasses.asdict(sizes),
        "versions": info,
        "results": [r.as_dict() for r in results],
    }
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
