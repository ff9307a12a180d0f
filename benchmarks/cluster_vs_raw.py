"""dfdb on etcd or ZooKeeper against the raw client (aetcd, aiozk), in one process, on one server.

Usage: python benchmarks/cluster_vs_raw.py --backend etcd|zookeeper [--quick] [--db URL]

Starts its own server unless --db is given. Cases (dfdb and raw interleaved, median of
``--repeat`` runs):
- sequential create: ``nb.create`` vs one raw create-if-absent of the same JSON bytes
  (etcd: a transaction comparing the key's version with 0; ZooKeeper: ``create``);
- bulk load of LogicalPorts: ``nb.create_many`` vs raw writes at the same concurrency
  (etcd: 64 single-key transactions in flight; ZooKeeper: ``multi`` chunks of 100 creates);
- write->event latency: ``nb.update`` then the ``ChangeStream`` event vs a raw put then
  the raw watch's event (etcd: a prefix watch; ZooKeeper: a data watch re-armed by ``get``);
- Replica full sync: a FULL ``Replica`` of every port loaded (seconds, objects/s).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import dfdb
from dfdb.models import LogicalPort
from dfdb.testing.servers import EtcdServer, LocalServer, ZooKeeperServer


def port(i: int, run: str) -> LogicalPort:
    return LogicalPort(
        id=f"{run}-{i}", topic=f"tenant-{i % 20}", lswitch=f"ls-{i % 50}", ips=(f"10.{i % 200}.{i % 250}.5",),
        macs=(f"fa:16:3e:00:{i % 256:02x}:{i // 256 % 256:02x}",),
    )  # fmt: skip


def with_prefix(url: str, run: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rstrip('/')}/b{run}" + (f"?{query}" if query else "")


async def seq_dfdb(url: str, n: int) -> float:
    run = uuid.uuid4().hex[:6]
    async with dfdb.connect(with_prefix(url, run)) as nb:
        t0 = time.perf_counter()
        for i in range(n):
            await nb.create(port(i, run))
        return n / (time.perf_counter() - t0)


async def bulk_dfdb(url: str, n: int) -> float:
    run = uuid.uuid4().hex[:6]
    objs = [port(i, run) for i in range(n)]
    async with dfdb.connect(with_prefix(url, run), timeout=600) as nb:
        t0 = time.perf_counter()
        results = await nb.create_many(objs)
        rate = n / (time.perf_counter() - t0)
    assert all(isinstance(r, LogicalPort) for r in results)
    return rate


async def latency_dfdb(url: str, n: int) -> list[float]:
    run = uuid.uuid4().hex[:6]
    out: list[float] = []
    async with dfdb.connect(with_prefix(url, run)) as nb:
        obj = await nb.create(port(0, run))
        async with nb.watch(LogicalPort) as stream:
            for i in range(n):
                t0 = time.perf_counter()
                event = asyncio.ensure_future(anext(stream))
                obj = await nb.update(obj.model_copy(update={"name": str(i)}))
                await event
                out.append(time.perf_counter() - t0)
    return out


async def sync_dfdb(url: str, n: int) -> tuple[float, float]:
    """(seconds, objects/s) for a FULL Replica to load ``n`` ports."""
    run = uuid.uuid4().hex[:6]
    async with dfdb.connect(with_prefix(url, run), timeout=600) as nb:
        await nb.create_many([port(i, run) for i in range(n)])
        t0 = time.perf_counter()
        async with dfdb.Replica(nb, [LogicalPort]) as replica:
            took = time.perf_counter() - t0
            assert len(replica) == n
    return took, n / took


class RawEtcd:
    def __init__(self, url: str) -> None:
        import aetcd

        host, port_ = url.split("://")[1].split("/")[0].split(",")[0].split(":")
        self.client = aetcd.Client(host, int(port_), timeout=10)

    async def close(self) -> None:
        await self.client.close()

    async def create(self, key: bytes, value: bytes) -> None:
        t = self.client.transactions
        await self.client.transaction(compare=[t.version(key) == 0], success=[t.put(key, value)], failure=[])

    async def seq(self, n: int, run: str) -> float:
        values = [port(i, run).model_dump_json().encode() for i in range(n)]
        t0 = time.perf_counter()
        for i, v in enumerate(values):
            await self.create(f"raw/{run}/{i}".encode(), v)
        return n / (time.perf_counter() - t0)

    async def bulk(self, n: int, run: str) -> float:
        values = [port(i, run).model_dump_json().encode() for i in range(n)]
        queue = iter(enumerate(values))
        t0 = time.perf_counter()

        async def worker() -> None:
            for i, v in queue:
                await self.create(f"raw/{run}/{i}".encode(), v)

        await asyncio.gather(*(worker() for _ in range(64)))
        return n / (time.perf_counter() - t0)

    async def latency(self, n: int, run: str) -> list[float]:
        key = f"raw/{run}/watched".encode()
        value = port(0, run).model_dump_json().encode()
        watch = await self.client.watch_prefix(key)
        events = aiter(watch)
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            got = asyncio.ensure_future(anext(events))
            await self.client.put(key, value)
            await got
            out.append(time.perf_counter() - t0)
        await watch.cancel()
        return out


class RawZooKeeper:
    def __init__(self, url: str) -> None:
        from aiozk import ZKClient

        self.client = ZKClient(url.split("://")[1].split("/")[0], session_timeout=10)

    async def close(self) -> None:
        await self.client.close()

    async def seq(self, n: int, run: str) -> float:
        await self.client.start()
        await self.client.ensure_path(f"/raw{run}")
        values = [port(i, run).model_dump_json().encode() for i in range(n)]
        t0 = time.perf_counter()
        for i, v in enumerate(values):
            await self.client.create(f"/raw{run}/{i}", v)
        return n / (time.perf_counter() - t0)

    async def bulk(self, n: int, run: str) -> float:
        await self.client.start()
        await self.client.ensure_path(f"/rawb{run}")
        values = [port(i, run).model_dump_json().encode() for i in range(n)]
        t0 = time.perf_counter()
        queue = iter(range(0, n, 100))

        async def worker() -> None:
            for start in queue:
                txn = self.client.begin_transaction()
                for i in range(start, min(n, start + 100)):
                    txn.create(f"/rawb{run}/{i}", values[i])
                await txn.commit()

        await asyncio.gather(*(worker() for _ in range(4)))
        return n / (time.perf_counter() - t0)

    async def latency(self, n: int, run: str) -> list[float]:
        from aiozk import WatchEvent

        await self.client.start()
        path = f"/rawl{run}"
        value = port(0, run).model_dump_json().encode()
        await self.client.create(path, value)
        out = []
        for _ in range(n):
            await self.client.get(path, watch=True)
            fired = self.client.wait_for_events([WatchEvent.DATA_CHANGED], path)
            t0 = time.perf_counter()
            await self.client.set_data(path, value, force=True)
            await fired
            await self.client.get(path)
            out.append(time.perf_counter() - t0)
        return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} (±{statistics.pstdev(values):,.0f})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["etcd", "zookeeper"], required=True)
    parser.add_argument("--db")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    seq_n, bulk_n, lat_n, sync_n = (100, 1000, 100, 1000) if args.quick else (1000, 100_000, 2000, 100_000)
    server: LocalServer | None = None
    url = args.db
    if url is None:
        server = EtcdServer() if args.backend == "etcd" else ZooKeeperServer()
        server.start()
        url = server.url
    raw_cls: Any = RawEtcd if args.backend == "etcd" else RawZooKeeper
    try:
        rows = []
        for name, fd, method, n, times in (
            ("sequential create (ops/s)", seq_dfdb, "seq", seq_n, args.repeat),
            (f"bulk load {bulk_n:,} ports (objects/s)", bulk_dfdb, "bulk", bulk_n, 1 if not args.quick else 2),
        ):
            d, r = [], []
            for _ in range(times):
                d.append(await fd(url, n))
                raw = raw_cls(url)
                try:
                    r.append(await getattr(raw, method)(n, uuid.uuid4().hex[:6]))
                finally:
                    await raw.close()
            rows.append((name, spread(d), spread(r), f"{statistics.median(d) / statistics.median(r):.2f}x"))
        d_lat, r_lat = [], []
        for _ in range(args.repeat):
            d_lat += await latency_dfdb(url, lat_n // args.repeat or 1)
            raw = raw_cls(url)
            try:
                r_lat += await raw.latency(lat_n // args.repeat or 1, uuid.uuid4().hex[:6])
            finally:
                await raw.close()
        rows += [
            (f"write->event p{int(q * 100)} (ms)", f"{pct(d_lat, q):.2f}", f"{pct(r_lat, q):.2f}",
             f"{pct(d_lat, q) / pct(r_lat, q):.2f}x")
            for q in (0.5, 0.99)
        ]  # fmt: skip
        took, rate = await sync_dfdb(url, sync_n)
        rows.append((f"Replica full sync of {sync_n:,} ports", f"{took:.1f} s ({rate:,.0f} objects/s)", "-", "-"))
        print(f"{args.backend} at {url}; median of {args.repeat} runs (bulk: 1), interleaved")
        print("| case | dfdb | raw | dfdb/raw |")
        print("| --- | --- | --- | --- |")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
