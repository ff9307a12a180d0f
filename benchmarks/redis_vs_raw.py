"""dfdb on Redis against the raw redis.asyncio client, in one process, on one server.

Usage: python benchmarks/redis_vs_raw.py [--quick] [--db redis://host:port/0]

Starts its own redis-server (no persistence) unless --db is given. Cases (each run
for dfdb and raw, interleaved, median of 5):
- sequential create: ``nb.create`` vs raw ``SET key <the same JSON bytes>`` on one connection;
- bulk load of LogicalPorts: ``nb.create_many`` vs raw pipelined ``SET`` (chunks of 256);
- write->event latency: ``nb.update`` (compare-and-swap) then the ``ChangeStream`` event vs raw ``XADD`` then
  a blocking ``XREAD`` on another connection.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import redis.asyncio as aioredis

import dfdb
from dfdb.models import LogicalPort
from dfdb.testing.servers import RedisServer


def port(i: int, run: str) -> LogicalPort:
    return LogicalPort(
        id=f"{run}-{i}", topic=f"tenant-{i % 20}", lswitch=f"ls-{i % 50}", ips=(f"10.{i % 200}.{i % 250}.5",),
        macs=(f"fa:16:3e:00:{i % 256:02x}:{i // 256 % 256:02x}",),
    )  # fmt: skip


async def seq_dfdb(url: str, n: int) -> float:
    run = uuid.uuid4().hex[:6]
    async with dfdb.connect(url + f"?prefix=b{run}") as nb:
        t0 = time.perf_counter()
        for i in range(n):
            await nb.create(port(i, run))
        return n / (time.perf_counter() - t0)


async def seq_raw(url: str, n: int) -> float:
    run = uuid.uuid4().hex[:6]
    client = aioredis.Redis.from_url(url)
    values = [port(i, run).model_dump_json().encode() for i in range(n)]
    t0 = time.perf_counter()
    for i, v in enumerate(values):
        await client.set(f"raw/{run}/{i}", v)
    rate = n / (time.perf_counter() - t0)
    await client.aclose()
    return rate


async def bulk_dfdb(url: str, n: int) -> float:
    run = uuid.uuid4().hex[:6]
    objs = [port(i, run) for i in range(n)]
    async with dfdb.connect(url + f"?prefix=b{run}") as nb:
        t0 = time.perf_counter()
        results = await nb.create_many(objs)
        rate = n / (time.perf_counter() - t0)
    assert all(isinstance(r, LogicalPort) for r in results)
    return rate


async def bulk_raw(url: str, n: int) -> float:
    run = uuid.uuid4().hex[:6]
    client = aioredis.Redis.from_url(url)
    objs = [port(i, run) for i in range(n)]
    t0 = time.perf_counter()
    for start in range(0, n, 256):
        pipe = client.pipeline(transaction=False)
        for o in objs[start : start + 256]:
            pipe.set(f"raw/{run}/{o.id}", o.model_dump_json().encode())
        await pipe.execute()
    rate = n / (time.perf_counter() - t0)
    await client.aclose()
    return rate


async def latency_dfdb(url: str, n: int) -> list[float]:
    run = uuid.uuid4().hex[:6]
    out: list[float] = []
    async with dfdb.connect(url + f"?prefix=b{run}") as nb:
        obj = await nb.create(port(0, run))
        async with nb.watch(LogicalPort) as stream:
            for i in range(n):
                t0 = time.perf_counter()
                event = asyncio.ensure_future(anext(stream))  # the consumer waits, as the raw XREAD does
                obj = await nb.update(obj.model_copy(update={"name": str(i)}))
                await event
                out.append(time.perf_counter() - t0)
    return out


async def latency_raw(url: str, n: int) -> list[float]:
    run = uuid.uuid4().hex[:6]
    writer = aioredis.Redis.from_url(url)
    reader = aioredis.Redis.from_url(url)
    key = f"raw/{run}/stream"
    value = port(0, run).model_dump_json().encode()
    last = "0-0"
    out: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        read = asyncio.ensure_future(reader.xread({key: last}, block=5000, count=1))
        await writer.xadd(key, {"v": value})
        got = await read
        last = got[0][1][-1][0]
        out.append(time.perf_counter() - t0)
    await writer.aclose()
    await reader.aclose()
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    seq_n, bulk_n, lat_n = (200, 2000, 200) if args.quick else (2000, 100_000, 2000)
    server = None
    url = args.db
    if url is None:
        server = RedisServer(appendonly=False)
        server.start()
        url = server.url
    try:
        rows = []
        for name, fd, fr, n in (
            ("sequential create (ops/s)", seq_dfdb, seq_raw, seq_n),
            (f"bulk load {bulk_n:,} ports (objects/s)", bulk_dfdb, bulk_raw, bulk_n),
        ):
            d, r = [], []
            for _ in range(args.repeat if not (bulk_n == n and not args.quick) else 3):
                d.append(await fd(url, n))
                r.append(await fr(url, n))
            md, mr = statistics.median(d), statistics.median(r)
            rows.append((name, f"{md:,.0f} (±{statistics.pstdev(d):,.0f})", f"{mr:,.0f} (±{statistics.pstdev(r):,.0f})",
                         f"{md / mr:.2f}x"))  # fmt: skip
        d_lat, r_lat = [], []
        for _ in range(args.repeat):
            d_lat += await latency_dfdb(url, lat_n)
            r_lat += await latency_raw(url, lat_n)
        rows.append(("write->event p50 (ms)", f"{pct(d_lat, 0.5):.3f}", f"{pct(r_lat, 0.5):.3f}",
                     f"{pct(d_lat, 0.5) / pct(r_lat, 0.5):.2f}x"))  # fmt: skip
        rows.append(("write->event p99 (ms)", f"{pct(d_lat, 0.99):.3f}", f"{pct(r_lat, 0.99):.3f}",
                     f"{pct(d_lat, 0.99) / pct(r_lat, 0.99):.2f}x"))  # fmt: skip
        print(f"Redis at {url}; median of {args.repeat} (bulk: 3) runs, interleaved")
        print("| case | dfdb | raw | dfdb/raw |")
        print("| --- | --- | --- | --- |")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
