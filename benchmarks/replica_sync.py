"""A Replica's full sync against the driver's own listing, in one process, and where its time goes.

Usage: python benchmarks/replica_sync.py [--db URL] [--ports 20000] [--repeat 3] [--profile] [--memory] [--gc]

Fills ``--db`` with ``--ports`` ports (the benchmark's ports) when it holds none, then times,
``--repeat`` times each, interleaved: a Replica's full sync, the driver's listing of the table
plus ``json.loads`` of every value, and (on a server or SQLite) the raw client's read and parse
of as many values, as ``nox -s bench`` does it. The best run of each and the ratios are printed;
``--profile`` adds the functions that took the most time in the last sync (cProfile). A sync
holds the values as stored and validates them in the background afterwards: the time until that
validation ended is printed too. ``--memory`` adds the memory a synced Replica holds per port
(tracemalloc; after the sync and after its background validation) against a plain dict of the
same validated models (measured on at most 100,000 of them: the size per model does not depend
on how many there are). ``--gc`` adds the garbage collections (count and CPU seconds by
generation) during the best sync and listing, and the CPU time of a plain dict of the listing
by id (one entry per port and no dfdb code: how such a table grows on this machine). On a
machine shared with other work the absolute figures vary a lot: compare ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import tempfile
import time
import tracemalloc
from pathlib import Path

from dfdb.bench.cases import dict_of_models_bytes
from dfdb.bench.raw import raw_client_for
from dfdb.bench.workload import sample_port, sample_values
from dfdb.codec import encode
from dfdb.connecting import connect
from dfdb.drivers.base import ABSENT, PutRequest
from dfdb.models import LogicalPort
from dfdb.nb import NbApi
from dfdb.replica import Replica
from dfdb.url import DatabaseURL


async def validated(replica: Replica) -> None:
    """Wait until the background validation of a lazy sync ended (at once on older versions)."""
    flag = getattr(replica, "_validated", None)
    if flag is not None:
        await flag.wait()


class Collections:
    """Garbage collections seen (by ``gc.callbacks``) while ``on``: count and CPU seconds by generation."""

    def __init__(self) -> None:
        self.on = False
        self.seen: dict[int, tuple[int, float]] = {}
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if not self.on:
            return
        if phase == "start":
            self._start = time.process_time()
            return
        count, cpu = self.seen.get(info["generation"], (0, 0.0))
        self.seen[info["generation"]] = (count + 1, cpu + time.process_time() - self._start)

    def take(self) -> dict[int, tuple[int, float]]:
        seen, self.seen = self.seen, {}
        return seen


def collections_text(seen: dict[int, tuple[int, float]]) -> str:
    return ", ".join(f"gen {g}: {n} ({cpu:.3f} s)" for g, (n, cpu) in sorted(seen.items())) or "none"


async def memory(nb: NbApi, ports: int) -> str:
    """Bytes per port held by a synced Replica (after the sync, after its validation) and by a
    plain dict of the validated models."""
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        async with Replica(nb, [LogicalPort], check_interval=None) as replica:
            gc.collect()
            synced = tracemalloc.get_traced_memory()[0] - start
            await validated(replica)
            gc.collect()
            checked = tracemalloc.get_traced_memory()[0] - start
            held = len(replica)
        gc.collect()
        sample = min(held, 100_000)
        listing = await nb.driver.list(LogicalPort.__table__, None)
        values = [entry.value for entry in listing.entries[:sample]]
        del listing
        plain = dict_of_models_bytes(values)
    finally:
        tracemalloc.stop()
    return (
        f"memory per port: Replica {synced / held:,.0f} B after the sync, {checked / held:,.0f} B after its "
        f"validation; plain dict of the validated models {plain / sample:,.0f} B ({sample:,} models): "
        f"{synced / held / (plain / sample):.2f}x / {checked / held / (plain / sample):.2f}x"
    )


_TEMPLATE = (
    '{{"_w":"{wid}","id":"{id}","topic":"{topic}","version":1,"name":"","lswitch":"{lswitch}","ips":["{ip}"],'
    '"macs":["{mac}"],"enabled":true,"binding":null,"security_groups":[],"port_security_enabled":true,'
    '"device_owner":"","device_id":"","qos_policy":null}}'
)


def port_fields(i: int) -> dict[str, str]:
    """The fields of ``sample_port(i, "sync")``, without building it."""
    return {
        "id": f"sync-{i}",
        "topic": f"tenant-{i % 20}",
        "lswitch": f"ls-{i % 50}",
        "ip": f"10.{i % 200}.{i % 250}.5",
        "mac": f"fa:16:3e:00:{i % 256:02x}:{i // 256 % 256:02x}",
    }


def stored_value(i: int) -> bytes:
    """Port ``i`` as dfdb stores it (checked against ``encode`` below), made without a model:
    writing a million ports through the NbApi would take longer than the syncs measured."""
    return _TEMPLATE.format(wid=f"{i:032x}", **port_fields(i)).encode()


async def fill(nb: NbApi, ports: int) -> None:
    """Write ``ports`` ports through the driver, in chunks, as dfdb stores them."""
    for i in (0, 1, 257, ports - 1):
        value = encode(sample_port(i, "sync"), 1)[1]
        assert json.loads(value) | {"_w": ""} == json.loads(stored_value(i)) | {"_w": ""}, i
    table = LogicalPort.__table__
    for start in range(0, ports, 1_000):  # a server answers each batch well within its timeout
        writes = []
        for i in range(start, min(ports, start + 1_000)):
            fields = port_fields(i)
            writes.append(PutRequest(table, fields["id"], fields["topic"], stored_value(i), ABSENT))
        for result in await nb.driver.put_many(writes):
            if isinstance(result, Exception):
                raise result


async def main(
    url: str, ports: int, repeat: int, profile: bool, measure_memory: bool, wait: bool = True, collections: bool = False
) -> None:
    async with connect(url, timeout=600) as nb:
        if not (await nb.list(LogicalPort)).items:
            await fill(nb, ports)
        raw = raw_client_for(DatabaseURL.parse(url), Path(tempfile.mkdtemp()))
        if raw is not None:
            await raw.open()
            await raw.prepare("sync-raw")
            await raw.bulk("sync-raw", sample_values(ports, "sync-raw"))
        listed: list[float] = []
        synced: list[float] = []
        checked: list[float] = []
        read: list[float] = []
        cpu: dict[str, list[float]] = {"read": [], "listed": [], "synced": []}
        profiler = cProfile.Profile()
        seen = Collections()
        gcs: dict[str, list[dict[int, tuple[int, float]]]] = {"listed": [], "synced": []}
        plain: list[float] = []
        for run in range(repeat):
            if raw is not None:
                t0, c0 = time.perf_counter(), time.process_time()
                await raw.read_all("sync-raw")
                read.append(time.perf_counter() - t0)
                cpu["read"].append(time.process_time() - c0)
            seen.on = collections
            t0, c0 = time.perf_counter(), time.process_time()
            listing = await nb.driver.list(LogicalPort.__table__, None)
            for entry in listing.entries:
                json.loads(entry.value)
            listed.append(time.perf_counter() - t0)
            cpu["listed"].append(time.process_time() - c0)
            gcs["listed"].append(seen.take())
            if collections:
                c0 = time.process_time()
                by_id = {entry.id: entry for entry in listing.entries}
                plain.append(time.process_time() - c0)
                del by_id
            seen.on = False
            del listing
            last = profile and run == repeat - 1
            t0, c0 = time.perf_counter(), time.process_time()
            if last:
                profiler.enable()
            seen.on = collections
            async with Replica(nb, [LogicalPort]) as replica:
                synced.append(time.perf_counter() - t0)
                cpu["synced"].append(time.process_time() - c0)
                seen.on = False
                gcs["synced"].append(seen.take())
                if last:
                    profiler.disable()
                held = len(replica)
                if wait:
                    await validated(replica)
                checked.append(time.perf_counter() - t0)
        if raw is not None:
            await raw.drop(["sync-raw"])
            await raw.close()
        print(
            f"{url}: {held:,} ports; Replica full sync {min(synced):.3f} s, "
            f"driver listing + json.loads {min(listed):.3f} s: {min(synced) / min(listed):.2f}x"
            + (f"; raw client read + json.loads {min(read):.3f} s: {min(synced) / min(read):.2f}x" if read else "")
            + (f"; background validation ended {min(checked):.3f} s after the start" if wait else "")
        )
        ratio = min(cpu["synced"]) / min(cpu["read"] or cpu["listed"])
        print(
            f"  CPU seconds of the process (less sensitive to other load): sync {min(cpu['synced']):.3f}, "
            f"listing + json.loads {min(cpu['listed']):.3f}"
            + (f", raw client read + json.loads {min(cpu['read']):.3f}" if cpu["read"] else "")
            + f": {ratio:.2f}x"
        )
        if collections:
            best = {name: gcs[name][cpu[name].index(min(cpu[name]))] for name in gcs}
            print(
                f"  garbage collections during the sync: {collections_text(best['synced'])}; during the listing: "
                f"{collections_text(best['listed'])}; a plain dict of the listing by id: {min(plain):.3f} s of CPU"
            )
        if measure_memory:
            print(await memory(nb, ports))
        if profile:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="memory://sync")
    parser.add_argument("--ports", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for the background validation")
    parser.add_argument("--gc", action="store_true", help="count the garbage collections, time a plain dict")
    args = parser.parse_args()
    asyncio.run(main(args.db, args.ports, args.repeat, args.profile, args.memory, not args.no_wait, args.gc))
