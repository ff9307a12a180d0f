"""The page benchmarks/choose.py writes: the table, what survives what, the chart,
``dfdb copy``'s time and the recommendations, from one run's figures."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from choose_setups import REPLICATED, SETTINGS, Recovery

from dfdb.bench import versions
from dfdb.bench.overhead import FIGURES, Overhead

PERFORMANCE = {"write rate": "objects/s", "write->event p50": "ms", "write->event p99": "ms"}
DEFAULTS = {"objects": 100_000, "controllers": 50, "writes": 10_000}
"""The script's default sizes: smaller runs say so on the page."""


@dataclass
class Run:
    """Everything one run measured."""

    rows: list[Overhead] = field(default_factory=list)
    restart: dict[str, Recovery] = field(default_factory=dict)
    """Per single-server set-up: kill -9 and a start on its data."""
    failover: dict[str, Recovery] = field(default_factory=dict)
    """Per replicated set-up: kill -9 of the leader or master."""
    volatile: Recovery | None = None
    """Redis without persistence, restarted."""
    reopen: Recovery | None = None
    """SQLite closed and opened again."""
    copies: dict[str, float | str] = field(default_factory=dict)
    uptime: list[str] = field(default_factory=list)
    """``uptime`` at the start and (once done) at the end."""
    loads: list[list[float]] = field(default_factory=list)
    """The load averages at the start and (once done) at the end."""
    seconds: float = 0.0
    """How long the run took (so far)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Per set-up (or ``dfdb copy``) whose measurement failed: why."""


TESTS = {
    "redis restart": "`tests/test_redis.py::test_kill_9_with_persistence_loses_nothing`",
    "redis loss": "`tests/test_redis.py::test_lost_data_is_announced_and_reconciled`",
    "sentinel kill": "`tests/test_redis_sentinel.py::test_kill_9_of_the_master_during_writes`",
    "sentinel lost write": "`tests/test_redis_sentinel.py::test_a_write_the_new_master_never_got_is_announced`",
    "sentinel quorum": "`tests/test_redis_sentinel.py::test_a_lost_sentinel_quorum_is_unavailable_until_it_returns`",
    "etcd restart": "`tests/test_etcd.py::test_restart_of_a_single_member_loses_nothing`",
    "etcd leader": "`tests/test_etcd.py::test_leader_killed_during_writes_and_watches`",
    "etcd hung": "`tests/test_etcd.py::test_watch_leaves_a_hung_member_within_ten_seconds`",
    "zk restart": "`tests/test_zookeeper.py::test_restart_loses_nothing`",
    "zk leader": "`tests/test_zookeeper.py::test_leader_killed_during_writes_and_watches`",
    "zk expiry": "`tests/test_zookeeper.py::test_session_expiry_is_survived`",
    "chaos": "`tests/test_chaos.py::test_chaos`, family `server` on this server's URLs (kill -9 and restart, "
    "SIGSTOP during a write, dropped connections; `nox -s chaos`)",
}
"""The tests the cells of "what survives what" rest on."""

MEASURED = "measured"
"""A cell's verdict taken in this run (from the Recovery named in the cell)."""

SURVIVES: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "restart with persistence (kill -9, started again on its data)": {
        "memory": ("n/a: no server", ()),
        "sqlite": (MEASURED + ":reopen", ()),
        "redis": (MEASURED + ":restart", ("redis restart",)),
        "redis-sentinel": ("yes: a data server started again rejoins as a replica", ("sentinel lost write",)),
        "etcd": (MEASURED + ":restart", ("etcd restart",)),
        "etcd-3": ("not tested", ()),
        "zookeeper": (MEASURED + ":restart", ("zk restart",)),
        "zookeeper-3": ("not tested", ()),
    },
    "restart without persistence (its data lost)": {
        "memory": ("no: the data ends with the process, a new one starts empty", ()),
        "sqlite": ("n/a: the file is the data", ()),
        "redis": (MEASURED + ":volatile", ("redis loss",)),
        "redis-sentinel": ("not tested", ()),
        "etcd": ("n/a: always persistent", ()),
        "etcd-3": ("n/a: always persistent", ()),
        "zookeeper": ("n/a: always persistent", ()),
        "zookeeper-3": ("n/a: always persistent", ()),
    },
    "member loss (kill -9 of the leader or master, not restarted)": {
        "memory": ("n/a", ()),
        "sqlite": ("n/a", ()),
        "redis": ("no: down until restarted (then as a restart)", ()),
        "redis-sentinel": (MEASURED + ":failover", ("sentinel kill", "sentinel lost write")),
        "etcd": ("no: down until restarted (then as a restart)", ()),
        "etcd-3": (MEASURED + ":failover", ("etcd leader",)),
        "zookeeper": ("no: down until restarted (then as a restart)", ()),
        "zookeeper-3": (MEASURED + ":failover", ("zk leader",)),
    },
    "partition (the server or a member hung by SIGSTOP, or connections dropped)": {
        "memory": ("n/a", ()),
        "sqlite": ("n/a", ()),
        "redis": ("yes, once it answers again", ("chaos",)),
        "redis-sentinel": ("yes, once a quorum of sentinels is back (unavailable until then)", ("sentinel quorum",)),
        "etcd": ("yes, once it answers again", ("chaos",)),
        "etcd-3": ("yes: the stream leaves a hung member within 10 s", ("etcd hung",)),
        "zookeeper": ("yes, an expired session included", ("zk expiry", "chaos")),
        "zookeeper-3": ("not tested", ()),
    },
}
"""Per fault, per set-up: the verdict (or the measurement it is taken from) and the tests it rests on."""


def _shown(value: float | None, unit: str) -> str:
    if value is None:
        return "not taken"
    if unit in ("s", "ms"):
        return f"{value:.3g}"
    return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"


def chart(run: Run, path: Path) -> str:
    """A PNG of write->event p99 against CPU per 10k writes (server + client) and
    against server RSS per 100k objects; returns the line the page shows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (
            "No chart: matplotlib is not installed where this page was made (`pip install 'dfdb[bench]'` "
            "and run the script again to get `choosing-a-backend.png`)."
        )
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for row in run.rows:
        f, p = row.figures(), row.performance()
        p99 = p["write->event p99"]
        if p99 is None:
            continue
        marker = "s" if row.backend in REPLICATED else "o"
        cpu = (f["server CPU per 10k writes"] or 0.0) + (f["client CPU per 10k writes"] or 0.0)
        left.scatter([cpu], [p99], marker=marker)
        left.annotate(row.backend, (cpu, p99), textcoords="offset points", xytext=(4, 4))
        rss = f["server RSS per 100k objects"]
        if rss is not None:
            right.scatter([rss], [p99], marker=marker)
            right.annotate(row.backend, (rss, p99), textcoords="offset points", xytext=(4, 4))
    left.set_xlabel("CPU s per 10k writes (server + client)")
    right.set_xlabel("server RSS MB per 100k objects (all members)")
    for ax in (left, right):
        ax.set_ylabel("write->event p99 (ms)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    fig.suptitle("latency against resource use (squares: replicated set-ups)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"![latency against resource use]({path.name})"


def _value(run: Run, setup: str, figure: str) -> float | None:
    for row in run.rows:
        if row.backend == setup:
            return {**row.figures(), **row.performance()}.get(figure)
    return None


def _best(run: Run, figure: str, among: tuple[str, ...], highest: bool = False) -> tuple[str, float] | None:
    found = [(v, s) for s in among if (v := _value(run, s, figure)) is not None]
    if not found:
        return None
    value, setup = max(found) if highest else min(found)
    return setup, value


def _measured(run: Run, source: str, setup: str) -> Recovery | None:
    if source == "reopen":
        return run.reopen
    if source == "volatile":
        return run.volatile
    return (run.restart if source == "restart" else run.failover).get(setup)


def survives(run: Run, setups: list[str]) -> list[str]:
    """The "what survives what" table and the tests its cells rest on."""
    used: list[str] = []
    lines = [
        "| fault | " + " | ".join(setups) + " |",
        "| --- | " + " | ".join("---" for _ in setups) + " |",
    ]
    for fault, cells in SURVIVES.items():
        shown = []
        for setup in setups:
            verdict, tests = cells[setup]
            if verdict.startswith(MEASURED):
                got = _measured(run, verdict.split(":", 1)[1], setup)
                if got is None or got.seconds is None:
                    verdict = "not measured here (the measurement failed: see under the first table)"
                else:
                    verdict = f"**{got.survived()}** (measured here)"
            refs = []
            for test in tests:
                if test not in used:
                    used.append(test)
                refs.append(f"(T{used.index(test) + 1})")
            shown.append(" ".join([verdict, *refs]))
        lines.append(f"| {fault} | " + " | ".join(shown) + " |")
    lines += ["", *[f"- T{i + 1}: {TESTS[t]}" for i, t in enumerate(used)]]
    return lines


def recommend(run: Run) -> list[str]:
    """One recommendation per kind of deployment, each naming the figure it rests on."""
    lines = ["## Which backend", ""]
    lab = _value(run, "sqlite", "client CPU per 10k writes")
    rate = _value(run, "sqlite", "write rate")
    if lab is not None and rate is not None:
        lines.append(
            "- **A lab on one host**: SQLite. No server to run, its data survives a restart (*what survives what*, "
            f"first row), and its whole cost is this process's CPU (row *client CPU per 10k writes*: {lab:.3g} s; "
            f"*write rate*: {rate:,.0f} objects/s). memory:// is for tests: nothing survives the process."
        )
    replicated = tuple(s for s in REPLICATED if any(r.backend == s for r in run.rows))
    fan = _best(run, "server CPU per 10k delivered events", replicated)
    p99 = _best(run, "write->event p99", replicated)
    if fan is not None and p99 is not None:
        fails = ", ".join(f"{s} {r.cell()}" for s, r in run.failover.items())
        lines.append(
            "- **A production control plane of hundreds of hosts** (many controllers watching, no downtime when a "
            "machine dies): a replicated set-up (row *member loss* of *what survives what*). Among them the lowest "
            f"*server CPU per 10k delivered events*, the figure that grows with the number of watchers, is "
            f"{fan[0]}'s ({fan[1]:.3g} s) and the lowest *write->event p99* {p99[0]}'s ({p99[1]:.3g} ms); "
            f"*failover to first write* (s): {fails or 'not measured'}. Redis Sentinel replicates asynchronously: "
            "a write the new master never got is announced as a RESYNC "
            "(`test_a_write_the_new_master_never_got_is_announced`), where etcd and ZooKeeper commit a write on "
            "a majority before acknowledging it."
        )
    durable = _best(run, "write rate", ("etcd-3", "zookeeper-3"), highest=True)
    if durable is not None:
        lines.append(
            "- **Strict durability** (no acknowledged write lost on a power cut, nor with a machine): a 3-member "
            "etcd or ZooKeeper (`forceSync=yes`): each write is fsynced on a majority before it is acknowledged. "
            f"The faster here on *write rate* is {durable[0]} ({durable[1]:,.0f} objects/s); compare *disk per 100k "
            "objects* and *server RSS after the load* too. On one machine, a single etcd or Redis with "
            "`appendfsync always` is durable on its own disk (row *restart with persistence*)."
        )
    return [*lines, ""]


def _load(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def render(run: Run, args: argparse.Namespace, chart_line: str) -> str:
    """The whole page."""
    objects, controllers, writes, events, warmup = args.objects, args.controllers, args.writes, args.events, args.warmup
    setups = [r.backend for r in run.rows]
    cores = os.cpu_count()
    lines = [
        "# Choosing a backend",
        "",
        "What each backend costs to run next to how fast it is, measured in one run of `benchmarks/choose.py` on "
        f"one machine and one workload: {objects:,} LogicalPorts loaded with `create_many`; then {controllers} "
        f"change streams, each of one topic, while {writes:,} more ports are created spread over the topics; then "
        f"{events} write→event latencies (one writer, one stream). The server's resident memory and CPU seconds "
        "are read from `/proc/<pid>/stat`, its data folder's size on disk as `du` counts it (allocated blocks), "
        "and the client's CPU is this benchmark process's own (dfdb, the client library, the event loop). "
        "Per-100k and per-10k figures are the growth over the phase scaled linearly. For the replicated set-ups "
        f"({', '.join(REPLICATED)}) memory, CPU and disk are **the sum over every member** (and the sentinels). "
        "`dfdb bench --db URL --resources` measures the same on a server of your own.",
        "",
        f"The run took {run.seconds / 60:.0f} minutes on {cores} cores. `uptime` at its start: "
        f"`{run.uptime[0] if run.uptime else '?'}`; at its end: `{run.uptime[1] if len(run.uptime) > 1 else '?'}`.",
        "",
    ]
    small = any(getattr(args, k) < v for k, v in DEFAULTS.items())
    busy = cores is not None and any(load[0] > cores for load in run.loads)
    if small or busy:
        why = "used sizes below the defaults" if small else "ran on a machine busy with other work"
        lines += [
            f"**This run {why}** (load averages {' / '.join(_load(v) for v in run.loads)}): the figures "
            "must be regenerated on a quiet machine (`python benchmarks/choose.py` with its defaults: 100,000 "
            "objects, 50 controllers, 10,000 writes) before anyone relies on them; read them as orders of magnitude.",
            "",
        ]
    lines += [
        "| figure | unit | " + " | ".join(setups) + " |",
        "| --- | --- | " + " | ".join("---" for _ in setups) + " |",
    ]
    perf = [r.performance() for r in run.rows]
    figs = [r.figures() for r in run.rows]
    for name, unit in PERFORMANCE.items():
        lines.append(f"| {name} | {unit} | " + " | ".join(_shown(p[name], unit) for p in perf) + " |")
    for name, unit in FIGURES.items():
        lines.append(f"| {name} | {unit} | " + " | ".join(_shown(f[name], unit) for f in figs) + " |")

    def recovery(table: dict[str, Recovery], setup: str, other: str, to_event: bool) -> str:
        return table[setup].cell(to_event) if setup in table else other

    serverless = ("memory", "sqlite")
    restart = [recovery(run.restart, s, "no server" if s in serverless else "n/a", True) for s in setups]
    failover = [recovery(run.failover, s, "no failover", False) for s in setups]
    lines.append("| restart (kill -9) to first event | s (first event) | " + " | ".join(restart) + " |")
    lines.append("| failover (kill -9 of the leader) to first write | s (event after) | " + " | ".join(failover) + " |")
    lines += ["", "Not taken:", ""]
    lines += [f"- {r.backend}: {m}" for r in run.rows for m in r.missing] or ["- nothing"]
    failures = [
        (setup, what, got.event)
        for what, table in (("restart", run.restart), ("failover", run.failover))
        for setup, got in table.items()
        if got.seconds is None
    ]
    if failures:
        lines += ["", "Measurements that failed in this run:", ""]
        lines += [f"- {setup}, {what}: {why}" for setup, what, why in failures]
    if run.failed:
        lines += ["", "Failed in this run (not on the page):", ""]
        lines += [f"- {setup}: {why}" for setup, why in run.failed.items()]
    lines += ["", chart_line, "", "## What survives what", ""]
    lines += [
        "**yes**: every object written before is there and the open change stream goes on without a RESYNC; "
        "**RESYNC**: the stream announces what it lost (the promise: no change is lost silently); **no**: the "
        "data is gone, or the set-up is down until someone restarts it. A bold verdict was measured in this run "
        "(20 objects written and seen by a stream, the fault, then the first acknowledged write, the stream's "
        "next event and a read of every object); the tests named under the table prove the rest (and the "
        "measured ones under concurrent writes).",
        "",
        *survives(run, setups),
        "",
        "## Switching later",
        "",
        "`dfdb --db FROM copy --to TO` copies every table from one consistent snapshot of the source (objects "
        "already at the target are left unchanged, so a stopped copy is run again to finish it); `dfdb dump` and "
        "`dfdb restore` do the same through a file. To move a live deployment: stop the writers (or accept that "
        "writes after the snapshot stay behind), copy, point the controllers at the new URL; their Replicas "
        f"start with a full sync. Measured here, the `dfdb copy` command of {objects:,} LogicalPorts (its "
        "interpreter's start included):",
        "",
        "| from > to | seconds | objects/s |",
        "| --- | --- | --- |",
    ]
    for pair, took in run.copies.items():
        shown = (f"{took:.1f}", f"{objects / took:,.0f}") if isinstance(took, float) else (took, "")
        lines.append(f"| {pair} | {shown[0]} | {shown[1]} |")
    if not run.copies:
        lines.append("| not measured in this run | | |")
    lines += ["", *recommend(run), "## Persistence settings", ""]
    lines += [f"- **{s}**: {SETTINGS[s]}" for s in setups]
    lines += [
        "",
        "## Reading the table",
        "",
        "- memory and SQLite have no server: their whole cost is the client CPU rows (and the process's own "
        "memory, not measured here).",
        "- The write rate is the load phase's: `create_many` of every object, with the fsync policy above.",
        "- Server CPU per 10k delivered events covers the fan-out phase, its writes included.",
        "- Restart to first event: the single server is killed (`kill -9`) and started again on its data under "
        "an open change stream; the time runs from the kill until the stream's first event (its kind in brackets: "
        "the create retried until the server accepted it, or a RESYNC), the server's own start-up included.",
        "- Failover to first write: the leader (etcd, ZooKeeper) or the master (Sentinel) is killed (`kill -9`) "
        "and not restarted; the time runs from the kill until a create, retried, is acknowledged (it includes "
        "the failure detection of the settings below: Sentinel's `down-after-milliseconds`, etcd's election "
        "timeout, ZooKeeper's `tickTime`).",
        f"- Each set-up is freshly started and first takes a warm-up load of {warmup:,} objects (not measured).",
        "",
        "## Machine and versions",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in versions().items()]
    return "\n".join(lines) + "\n"
