"""Metrics: ``NbApi.stats()`` counts what happened, and a Prometheus scrape (``dfdb.metrics``,
the ``dfdb[metrics]`` extra) shows the same numbers, by backend and table."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import IO

import pytest

import dfdb
from dfdb import metrics
from dfdb.codec import encode
from dfdb.drivers import ABSENT, Expect, register_driver
from dfdb.drivers.memory import MemoryDriver
from dfdb.nb import NbApi

prometheus_parser = pytest.importorskip("prometheus_client.parser")

WAIT = 10


class Net(dfdb.NbModel, table="metrics_net"):
    name: str = ""


class Vm(dfdb.NbModel, table="metrics_vm"):
    net: dfdb.Ref[Net] | None = None


class LossyDriver(MemoryDriver):
    """The first reply of every write is lost (the write itself is applied)."""

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        await super().put(table, id, topic, value, expect)
        raise dfdb.BackendUnavailableError("connection reset")


class DeafDriver(MemoryDriver):
    """Every write's reply is lost, and a reread finds a value another writer stored."""

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        await super().put(table, id, topic, b'{"version": 1}', expect)
        raise dfdb.BackendUnavailableError("connection reset")


register_driver("test-metrics-lossy", LossyDriver)
register_driver("test-metrics-deaf", DeafDriver)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in prometheus_parser.text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def get_samples(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=WAIT) as reply:
        assert reply.status == 200
        return parse(reply.read().decode())


async def scrape(url: str) -> Samples:
    return await asyncio.to_thread(get_samples, url)


async def settle(replica: dfdb.Replica, obj: dfdb.NbModel) -> None:
    revision = dfdb.revision_of(obj)
    assert revision is not None
    await asyncio.wait_for(replica.wait_for(revision), WAIT)


# ----------------------------------------------------------------- NbApi.stats()
async def test_nb_stats_count_writes_and_conflicts_by_table() -> None:
    async with dfdb.connect("memory://") as nb:
        assert nb.stats() == dfdb.NbStats(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, {})
        first = await nb.create(Net(id="a"))
        await nb.create(Net(id="b"))
        await nb.update(first)
        with pytest.raises(dfdb.ConflictError):
            await nb.update(first)  # stale
        with pytest.raises(dfdb.AlreadyExistsError):
            await nb.create(Net(id="b"))
        await nb.patch(Net, "b", name="x")
        await nb.put(Net(id="c"))
        outcomes = await nb.create_many([Net(id="d"), Net(id="a"), Vm(id="v")])
        assert isinstance(outcomes[1], dfdb.AlreadyExistsError)
        await nb.delete(Vm, "v")
        with pytest.raises(dfdb.NotFoundError):
            await nb.delete(Vm, "v")  # neither a write nor a conflict
        stats = nb.stats()
        assert (stats.writes, stats.conflicts, stats.retries, stats.outcome_unknowns) == (8, 3, 0, 0)
        assert stats.tables == {
            "metrics_net": dfdb.TableStats(writes=6, conflicts=3),
            "metrics_vm": dfdb.TableStats(writes=2),
        }


async def test_nb_stats_count_retries_and_unknown_outcomes() -> None:
    async with dfdb.connect("test-metrics-lossy://", timeout=5) as nb:
        await nb.create(Net(id="a"))  # its reply lost once: retried, recognised as its own
        assert nb.stats().tables["metrics_net"] == dfdb.TableStats(writes=1, retries=1)
        assert nb.retries == 1
    async with dfdb.connect("test-metrics-deaf://", timeout=0.5) as nb:
        with pytest.raises(dfdb.OutcomeUnknownError):
            await nb.create(Net(id="a"))
        counts = nb.stats().tables["metrics_net"]
        assert (counts.writes, counts.conflicts, counts.outcome_unknowns) == (0, 0, 1)
        assert counts.retries == nb.retries >= 1


async def test_nb_stats_add_up_change_streams_closed_ones_too() -> None:
    async with dfdb.connect("memory://?history=3") as nb:
        before = (await nb.list(Net)).cursor
        for i in range(6):  # the history keeps the last 3 to 6 of them
            await nb.create(Net(id=f"old{i}"))
        async with nb.watch(Net) as stream:
            await nb.create(Net(id="new"))
            assert (await asyncio.wait_for(anext(stream), WAIT)).id == "new"
            assert nb.stats().streams == 1
        async with nb.watch(Net, since=before) as stale:  # its history is gone: RESYNC
            assert (await asyncio.wait_for(anext(stale), WAIT)).action == dfdb.Action.RESYNC
        stats = nb.stats()
        assert (stats.streams, stats.resyncs, stats.records_read) == (0, 1, stream.records_read + stale.records_read)
        assert stats.records_read >= 1 and stats.bytes_read == stream.bytes_read + stale.bytes_read > 0


# ----------------------------------------------------------------- the scrape
async def test_a_scrape_shows_what_happened() -> None:
    async with dfdb.connect("memory://?history=50") as nb:
        start = (await nb.list(Net)).cursor
        registry = metrics.new_registry(nb)
        async with metrics.serve(0, registry=registry) as server, dfdb.Replica(nb, [Net, Vm]) as replica:
            events = replica.events()  # a consumer that reads nothing: the lag grows
            a = await nb.create(Net(id="a"))
            await nb.create(Net(id="b"))
            await nb.update(a)
            with pytest.raises(dfdb.ConflictError):
                await nb.update(a)
            with pytest.raises(dfdb.AlreadyExistsError):
                await nb.create(Net(id="b"))
            await nb.create_many([Net(id="c"), Net(id="a")])
            await nb.delete(Net, "c")
            await settle(replica, await nb.create(Vm(id="v", net="later")))  # its target is not there yet
            one = {"backend": "memory", "replica": next(n for n, r in nb._counters.replicas() if r is replica)}
            one["mode"] = "full"
            got = await scrape(server.url)
            assert value(got, "dfdb_replica_deferred", **one) == 1  # v's event waits for its net
            assert value(got, "dfdb_replica_deferred_events_total", **one) == 1
            # 150 writes straight through the driver, with no await: the Replica falls behind
            # the history (50 to 100 changes) and gets one RESYNC
            for i in range(150):
                _, raw, _ = encode(Net(id=f"d{i}"), 1)
                await nb.driver.put(Net.__table__, f"d{i}", None, raw, ABSENT)
            await settle(replica, await nb.create(Net(id="probe")))
            async with nb.watch(Net, since=start) as stale:
                assert (await asyncio.wait_for(anext(stale), WAIT)).action == dfdb.Action.RESYNC

            got = await scrape(server.url)
            stats, rstats = nb.stats(), replica.stats()
            net = {"backend": "memory", "table": "metrics_net"}
            vm = {"backend": "memory", "table": "metrics_vm"}
            assert value(got, "dfdb_writes_total", **net) == 6  # a, b, a's update, c, c's delete, probe
            assert value(got, "dfdb_writes_total", **vm) == 1
            assert value(got, "dfdb_write_conflicts_total", **net) == 3
            assert value(got, "dfdb_write_conflicts_total", **vm) == 0
            assert value(got, "dfdb_retries_total", **net) == 0
            assert value(got, "dfdb_write_outcome_unknown_total", **net) == 0
            assert value(got, "dfdb_stream_resyncs_total", backend="memory") == 2  # the Replica's and the stale one
            assert value(got, "dfdb_streams_open", backend="memory") == 1  # the Replica's
            assert value(got, "dfdb_stream_records_read_total", backend="memory") == stats.records_read
            assert value(got, "dfdb_stream_read_bytes_total", backend="memory") == stats.bytes_read > 0
            assert stats.records_read >= rstats.records_read > 0

            assert value(got, "dfdb_replica_objects", **one, table="metrics_net") == 153  # a, b, probe, d0..d149
            assert value(got, "dfdb_replica_objects", **one, table="metrics_vm") == 1
            assert value(got, "dfdb_replica_resyncs_total", **one) == 1
            assert value(got, "dfdb_replica_deferred", **one) == rstats.deferred_now
            assert value(got, "dfdb_replica_deferred_events_total", **one) == rstats.deferred
            assert value(got, "dfdb_replica_lag", **one) == rstats.lag > 0
            assert value(got, "dfdb_replica_events_total", **one) == rstats.events
            assert value(got, "dfdb_replica_position", **one) == rstats.position
            assert rstats.tables == {"metrics_net": 153, "metrics_vm": 1}
            await events.aclose()


async def test_the_endpoint_answers_only_metrics_requests() -> None:
    async with dfdb.connect("memory://") as nb, metrics.serve(0, registry=metrics.new_registry(nb)) as server:
        base = server.url.removesuffix("/metrics")

        def status(path: str, method: str = "GET") -> int:
            try:
                with urllib.request.urlopen(urllib.request.Request(base + path, method=method), timeout=WAIT) as r:
                    return int(r.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert await asyncio.to_thread(status, "/metrics") == 200
        assert await asyncio.to_thread(status, "/nope") == 404
        assert await asyncio.to_thread(status, "/metrics", "POST") == 405


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_serve_runs_on_asyncio_and_trio(backend: str) -> None:
    import anyio

    if backend == "trio":
        pytest.importorskip("trio")

    async def main() -> None:
        async with dfdb.connect("memory://") as nb, metrics.serve(0, registry=metrics.new_registry(nb)) as server:
            await nb.create(Net(id="a"))
            got = await anyio.to_thread.run_sync(get_samples, server.url)
            assert value(got, "dfdb_writes_total", backend="memory", table="metrics_net") == 1

    anyio.run(main, backend=backend)


async def test_one_collector_per_registry() -> None:
    async with dfdb.connect("memory://") as nb:
        registry = metrics.new_registry(nb)
        with pytest.raises(ValueError, match="registered on this registry already"):
            metrics.register(nb, registry=registry)


# ----------------------------------------------------------------- without the extra
@pytest.fixture
def no_prometheus(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As if prometheus-client were not installed: importing it fails."""
    for name in [m for m in sys.modules if m.split(".")[0] == "prometheus_client"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    yield


async def test_metrics_without_the_extra_is_a_clear_error(no_prometheus: None) -> None:
    async with dfdb.connect("memory://") as nb:
        await nb.create(Net(id="a"))
        assert nb.stats().writes == 1  # the counters need no metrics library
        with pytest.raises(dfdb.MissingDependencyError, match=r"pip install 'dfdb\[metrics\]'"):
            metrics.collector(nb)
        with pytest.raises(dfdb.MissingDependencyError, match="prometheus-client"):
            async with metrics.serve(0):
                pass


def test_demo_metrics_without_the_extra_is_one_line(no_prometheus: None, capsys: pytest.CaptureFixture[str]) -> None:
    from dfdb.cli import main

    assert main(["demo", "--metrics-port", "0", "--changes", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dfdb[metrics]" in err


def test_dfdb_does_not_load_prometheus_client() -> None:
    code = "import sys, dfdb, dfdb.cli, dfdb.metrics; print('prometheus_client' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"


# ----------------------------------------------------------------- dfdb demo --metrics-port
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_serves_metrics_that_match_its_summary() -> None:
    port = free_port()
    args = ["demo", "--metrics-port", str(port), "--tenants", "2", "--ports", "2", "--controllers", "2"]
    env = {k: v for k, v in os.environ.items() if k != "DFDB_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dfdb", *args, "--changes", "200", "--mode", "full"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        summary = read_until(proc.stdout, "result:")
        assert "result: every controller converged" in summary
        writes = int(next(line for line in summary.splitlines() if line.startswith("writer:")).split()[4])
        got = get_samples(f"http://127.0.0.1:{port}/metrics")
        by_name: dict[str, float] = {}
        for (name, labels), v in got.items():
            if dict(labels).get("table") == "dfdb_service":  # the controllers' presence records
                name += ":presence"
            by_name[name] = by_name.get(name, 0) + v
        assert by_name["dfdb_writes_total"] == writes
        assert by_name["dfdb_writes_total:presence"] >= 2  # each controller registered
        assert by_name["dfdb_write_conflicts_total"] == 0
        assert by_name["dfdb_write_outcome_unknown_total"] == 0
        assert by_name["dfdb_replica_resyncs_total"] == 0
        assert by_name["dfdb_stream_records_read_total"] > 0
        replicas = {dict(labels)["replica"] for (name, labels) in got if name == "dfdb_replica_lag"}
        assert len(replicas) == 2, json.dumps(sorted(replicas))
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert f"metrics at http://127.0.0.1:{port}/metrics" in err


def read_until(stream: IO[str], marker: str) -> str:
    lines: list[str] = []
    for line in stream:
        lines.append(line)
        if line.startswith(marker):
            break
    return "".join(lines)


def test_api_nb_stats_is_exported() -> None:
    assert NbApi.stats.__doc__ and dfdb.NbStats is metrics.NbStats


def test_demo_on_a_port_in_use_is_one_line_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    from dfdb.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--metrics-port", str(port), "--changes", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"cannot serve metrics on 127.0.0.1:{port}" in err and "--metrics-port 0" in err, err


@pytest.mark.parametrize("port", ["65536", "99999"])
def test_demo_refuses_a_port_out_of_range(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    from dfdb.cli import main

    assert main(["demo", "--metrics-port", port]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at most 65535" in err, err


@pytest.mark.parametrize("port", [65536, -1, "9464", True, 1.5])
async def test_serve_refuses_what_is_not_a_port(port: object) -> None:
    with pytest.raises(ValueError, match="integer from 0 to 65535"):
        async with metrics.serve(port):  # type: ignore[arg-type]
            pass


async def test_register_refuses_what_is_not_an_nbapi() -> None:
    with pytest.raises(TypeError, match="NbApi objects"):
        metrics.register("memory://", registry=metrics.new_registry())  # type: ignore[arg-type]


async def test_a_failing_collector_fails_the_scrape_not_the_application() -> None:
    from prometheus_client import CollectorRegistry

    class Broken:
        def collect(self) -> Iterator[object]:
            raise RuntimeError("broken collector")

    registry = CollectorRegistry()
    broken = Broken()
    registry.register(broken)  # type: ignore[arg-type]
    async with dfdb.connect("memory://") as nb, metrics.serve(0, registry=registry) as server:
        metrics.register(nb, registry=registry)
        with pytest.raises(urllib.error.HTTPError) as failed:
            await scrape(server.url)
        assert failed.value.code == 500
        failed.value.close()  # the error holds the connection
        registry.unregister(broken)  # type: ignore[arg-type]
        await nb.create(Net(id="after"))
        assert value(await scrape(server.url), "dfdb_writes_total", backend="memory", table="metrics_net") == 1
