"""The five cases on one backend, dfdb's side of each, and the runs on every backend."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from dfdb.bench.raw import describe_redis, raw_client_for, redis_options
from dfdb.bench.report import BenchResult, versions
from dfdb.bench.workload import POLL_INTERVAL, Namespaces, Sizes, sample_port, sample_values
from dfdb.connecting import connect
from dfdb.errors import InvalidURL
from dfdb.models import LogicalPort
from dfdb.nb import revision_of
from dfdb.replica import Replica, SyncMode
from dfdb.servers import EtcdServer, LocalServer, RedisServer, ZooKeeperServer
from dfdb.url import DatabaseURL

__all__ = ["BACKENDS", "SCHEMES", "dict_of_models_bytes", "local_servers", "run_all", "run_backend"]

BACKENDS = ("memory", "sqlite", "redis", "etcd", "zookeeper")
"""The backends ``run_all`` knows (it starts the servers)."""
SCHEMES = {"memory": "memory", "sqlite": "sqlite", "redis": "redis", "etcd": "etcd", "zk": "zookeeper"}
"""URL scheme -> backend name."""


async def _dfdb_seq(url: DatabaseURL, run: str, n: int) -> float:
    """Objects/s; the objects are made and the connection opened before the clock starts."""
    ports = [sample_port(i, run) for i in range(n)]
    async with connect(url) as nb:
        t0 = time.perf_counter()
        for obj in ports:
            await nb.create(obj)
        return n / (time.perf_counter() - t0)


async def _dfdb_bulk(url: DatabaseURL, run: str, n: int) -> float:
    """Objects/s, as for ``_dfdb_seq``."""
    ports = [sample_port(i, run) for i in range(n)]
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
        obj = await nb.create(sample_port(0, run))
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


def dict_of_models_bytes(values: list[bytes]) -> int:
    """Bytes ``tracemalloc`` (running) counts for ``values`` validated as LogicalPorts into a
    plain dict by id: the baseline a Replica's memory per object is compared with."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    plain: dict[str, LogicalPort] = {}
    for value in values:
        port = LogicalPort.model_validate_json(value)
        plain[port.id] = port
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - before


async def _dfdb_memory(url: DatabaseURL, n: int) -> tuple[float, float]:
    """Bytes per object: (a FULL Replica holding the ``n`` ports, the same ports as models in a dict)."""
    async with connect(url, timeout=600) as nb:
        listing = await nb.driver.list(LogicalPort.__table__)
        values = [e.value for e in listing.entries]
        gc.collect()
        tracemalloc.start()
        try:
            dict_bytes = dict_of_models_bytes(values)
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
        ports = [sample_port(i, run, controllers) for i in range(writes)]
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


async def _dfdb_redis_options(url: DatabaseURL) -> tuple[dict[str, Any], str]:
    """How dfdb's own Redis connections to ``url`` read replies: the options and their description."""
    async with connect(url) as nb:
        client = getattr(nb.driver, "_client")  # noqa: B009 (the driver's private client)
        return redis_options(client), describe_redis(client)


async def run_backend(
    backend: str,
    url: str | DatabaseURL,
    sizes: Sizes,
    *,
    cleanup: bool = False,
    log: TextIO | None = None,
    info: dict[str, str] | None = None,
) -> list[BenchResult]:
    """Run the five cases on ``url`` (``backend`` names the rows); returns the rows.

    Every run works in a namespace of its own (``bench-…`` key prefixes, chroots or
    files); with ``cleanup`` (a server of your own) they are removed at the end. A raw
    client is configured as dfdb's connections are (Redis: the same reply parser and
    protocol, read from dfdb's connection in this run); ``info`` (the versions) gets what
    was used (``"redis parser"``).

    Raises:
        InvalidURL: not a memory, sqlite, redis, etcd or zk URL.
    """
    base = DatabaseURL.parse(url)
    if base.scheme not in SCHEMES:
        raise InvalidURL(f"dfdb bench knows memory, sqlite, redis, etcd and zk URLs, not {base.scheme}://")
    tmp = Path(tempfile.mkdtemp(prefix="dfdb-bench-"))
    spaces = Namespaces(base, tmp)
    options, described = await _dfdb_redis_options(base) if base.scheme == "redis" else (None, "")
    raw = raw_client_for(base, tmp, redis=options)
    if options is not None and info is not None:
        info["redis parser"] = described
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
            name, values = raw_ns(run), sample_values(sizes.seq, run)
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
            values = sample_values(sizes.bulk, run)
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


@contextlib.contextmanager
def local_servers(backends: list[str], *, zookeeper_heap: str = "2g") -> Iterator[dict[str, str]]:
    """Start a server for each server backend (memory:// and SQLite need none: a name and
    a file in a temporary folder); yields backend -> URL. Stopped on leaving."""
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
                    "zookeeper": lambda: ZooKeeperServer(heap=zookeeper_heap),  # 100k objects, log included: 2g
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


async def run_all(
    backends: list[str],
    sizes: Sizes,
    *,
    log: TextIO | None = None,
    done: Callable[[list[BenchResult], dict[str, str]], None] | None = None,
    info: dict[str, str] | None = None,
) -> tuple[list[BenchResult], dict[str, str]]:
    """Every case on each backend in ``backends`` (servers started here); returns the
    rows and the versions (``info``, completed, when given). ``done`` is called with the
    rows so far after each backend."""
    info = versions() if info is None else info
    results: list[BenchResult] = []
    for backend in backends:  # one server at a time
        with local_servers([backend]) as urls:
            if log is not None:
                print(f"{backend} at {urls[backend]}", file=log, flush=True)
            results += await run_backend(backend, urls[backend], sizes, log=log, info=info)
        if done is not None:
            done(results, info)
    return results, info
