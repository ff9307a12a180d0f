"""The fleet simulator's printed summary."""

from __future__ import annotations

from typing import Any, TextIO

from dfdb.fleet.run import FleetResult

__all__ = ["print_result"]


def _f(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def _connections(d: dict[str, Any], out: TextIO) -> None:
    c = d.get("connections")
    if c is None:
        return
    print(
        f"               connections refused: {'YES' if c['refused'] else 'none'} (server turned away "
        f"{_f(c['server_rejected'])}; host: accept queue full {c['host_listen_overflows']:,}, dropped "
        f"{c['host_listen_drops']:,}, connects failed {c['host_connects_failed']:,})",
        file=out,
    )


def print_result(result: FleetResult, out: TextIO) -> None:
    """Print what the run measured, one block per scenario."""
    cfg = result.config
    print(
        f"dfdb fleet on {result.backend}: {cfg['controllers']} controllers in {cfg['workers']} processes, "
        f"{result.objects:,} objects ({cfg['tenants'] or cfg['controllers']} tenants x {cfg['ports']} ports, "
        f"each on {cfg['spread']} chassis); loaded in {result.load_seconds:.1f}s",
        file=out,
    )
    s = result.scenarios
    cold = s.get("cold")
    if cold:
        held = cold["per_controller"]["objects"]
        kib = cold["listed_bytes"] // 1024
        print(
            f"cold start:    all converged in {_f(cold['converged_s'], 's')}; objects held per controller "
            f"{_f(held.get('mean'))} (min {_f(held.get('min'))}, max {_f(held.get('max'))}) "
            f"= {100 * held.get('mean', 0) / max(result.objects, 1):.1f}% of the database; listed "
            f"{_f(cold['objects'])} objects, {kib:,} KiB in total ({kib // max(cfg['controllers'], 1):,} KiB per "
            f"controller); peak server CPU {_f(cold['peak_server_cpu_pct'], '%')}",
            file=out,
        )
        if cold.get("workers_cpu_s") is not None:
            print(
                f"               the worker processes ran {cold['workers_cpu_s']}s on a CPU and waited "
                f"{cold['workers_waited_for_cpu_s']}s for one (runnable, starved by the host); "
                f"{_f(cold.get('cpu_ms_per_controller'), ' ms')} of CPU per controller loaded",
                file=out,
            )
        _connections(cold, out)
    idle = s.get("idle")
    if idle:
        print(
            f"idle:          nothing written for {_f(idle['seconds'], 's')}: the worker processes ran "
            f"{_f(idle['workers_cpu_s'], 's')} on a CPU, {_f(idle['cpu_ms_per_controller_s'], ' ms')} per controller "
            f"and second; server CPU {_f(idle['server_cpu_pct'], '%')}",
            file=out,
        )
    steady = s.get("steady")
    if steady:
        print(
            f"steady state:  {steady['writes']:,} writes at {steady['rate']}/s; write→applied p50 "
            f"{_f(steady['p50_ms'], ' ms')}, p99 {_f(steady['p99_ms'], ' ms')} over {steady['events']:,} events "
            f"({steady['deliveries']:,} deliveries); all converged {_f(steady['converged_s'], 's')} after the "
            f"last write; peak server CPU {_f(steady['peak_server_cpu_pct'], '%')}",
            file=out,
        )
    for name, title in (("restart", "server restart"), ("history", "history lost")):
        d = s.get(name)
        if d:
            print(
                f"{title + ':':<14} all converged in {_f(d['converged_s'], 's')} ({d['not_converged']} not); "
                f"relists {d['relists']}, reconnects {d['reconnects']}, objects relisted {d['objects_relisted']:,}, "
                f"change records read {d['records_read']:,} ({_f(d['bytes_read'] // 1024)} KiB), "
                f"{_f(d.get('records_read_total'))} records in all; relists waited "
                f"{_f(d['relist_wait_s'], 's')} in all, at most {d['peak_relists_at_once']} at once; "
                f"peak server CPU {_f(d['peak_server_cpu_pct'], '%')}",
                file=out,
            )
            _connections(d, out)
    check = s.get("check")
    if check:
        compared, differ = check["controllers"], check["diverged"]
        print(f"check:         {compared} controllers compared with the database, {differ} differ", file=out)
    for failure in result.failures:
        print(f"FAILED: {failure}", file=out)
    mem = result.memory_mib
    if mem:
        print(
            f"memory:        worker processes' peak {_f(mem.get('workers'), ' MiB')}, server "
            f"{_f(mem.get('server'), ' MiB')}",
            file=out,
        )
    for when, load in result.load_average.items():
        print(f"load average at the {when}: {', '.join(f'{x:.2f}' for x in load)}", file=out)
    print("result: every controller converged" if result.ok else "result: DIVERGED", file=out)
