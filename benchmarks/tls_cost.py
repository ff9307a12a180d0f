"""The cost of TLS per server backend: dfdb on a plain and on a TLS-only local server.

Usage: python benchmarks/tls_cost.py [--backends redis,etcd,zookeeper] [--quick] [--repeat N]
       [--creates N] [--events N] [--note TEXT]

Prints a markdown section (``benchmarks/run.py`` appends it to docs/benchmarks.md);
the cases are described in ``dfdb.bench.tls``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shlex
import sys

from dfdb.bench import Sizes
from dfdb.bench.tls import TLS_BACKENDS, TlsCost, render_tls_cost, run_tls_cost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(TLS_BACKENDS))
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    parser.add_argument("--repeat", type=int, help="runs of each case (default 5; quick: 2)")
    parser.add_argument("--creates", type=int, help="objects created per run (default 1000)")
    parser.add_argument("--events", type=int, help="write->event round trips per run (default 2000)")
    parser.add_argument("--note", default="", help="a sentence printed with the figures (the machine, its load)")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(TLS_BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(TLS_BACKENDS)}")
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.repeat is not None:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    for name, field in (("creates", "seq"), ("events", "events")):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                parser.error(f"--{name} must be at least 1")
            sizes = dataclasses.replace(sizes, **{field: value})

    async def measure() -> list[TlsCost]:
        return [await run_tls_cost(backend, sizes, log=sys.stderr) for backend in backends]

    load = os.getloadavg()[0]
    costs = asyncio.run(measure())
    command = shlex.join(["python", "benchmarks/tls_cost.py", *sys.argv[1:]])
    cores = os.cpu_count()
    measured = f"{cores} cores; load average (1 min) {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end."
    print(render_tls_cost(costs, command=command, note=" ".join(filter(None, [measured, args.note]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
