"""Running a command: the database it opens, its errors (one line, exit 1 or 2), logging."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import dfdb.models  # noqa: F401  (registers the network model set)
from dfdb.cli import objects, transfer
from dfdb.cli.options import DEFAULT_TIMEOUT, DEFAULT_URL, DEMO_URL, build_parser, merge_globals
from dfdb.cli.output import UsageError, printable
from dfdb.connecting import connect
from dfdb.errors import ConfigurationError, DfdbError
from dfdb.nb import NbApi
from dfdb.url import DatabaseURL

if TYPE_CHECKING:
    from dfdb.bench import Sizes

__all__ = ["main"]

READS = frozenset({"tables", "ls", "get", "rm", "dump", "copy", "status"})
"""Commands that only read (or remove) what is there: they refuse a SQLite file that does
not exist rather than create an empty one. (``watch`` creates it, saying so: it waits for
the writes that will fill it.)"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        args = merge_globals(build_parser().parse_args(argv))
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        return 130
    _logging(args.verbose)
    try:
        for module in args.models:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise UsageError(f"cannot import models module {module!r}: {exc}") from None
            except Exception as exc:  # the module itself failed (a syntax error, its own exception)
                raise UsageError(f"cannot import models module {module!r}: {type(exc).__name__}: {exc}") from None
        if args.command == "server":
            return _server(args)  # synchronous: Ctrl-C must reach it at once
        if args.command == "completion":
            return _completion(args.shell, sys.stdout)
        if args.command == "fleet":
            return asyncio.run(_fleet(args, sys.stdout))  # its own database and processes
        return asyncio.run(_run(args, sys.stdout))
    except (UsageError, ConfigurationError) as exc:
        return fail(2, f"error: {exc}")
    except DfdbError as exc:
        return fail(1, str(exc))
    except ValueError as exc:  # an invalid id, topic or object given on the command line
        return fail(2, f"error: {exc}")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a file named on the command line
        return fail(1, f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except Exception as exc:  # one line, never a traceback
        return fail(1, f"unexpected error: {type(exc).__name__}: {exc}")


def fail(status: int, message: str) -> int:
    """Print ``message`` as one line on stderr; return ``status``."""
    line = " ".join(message.split())
    print(f"dfdb: {line}".encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)
    return status


def _logging(verbose: int) -> None:
    """``-v``: info, ``-vv``: debug, on stderr; without it only what the library warns about."""
    if verbose:
        level = logging.INFO if verbose == 1 else logging.DEBUG
        logging.basicConfig(stream=sys.stderr, level=level, format="dfdb: %(levelname)s %(name)s: %(message)s")


def _url(args: argparse.Namespace) -> str:
    default = DEMO_URL if args.command == "demo" else DEFAULT_URL
    return str(args.db or os.environ.get("DFDB_URL") or default)


def open_nb(url: str, timeout: float | None) -> NbApi:
    """``connect(url)``: ``--timeout`` when given wins over the URL's ``timeout``, which
    wins over :data:`DEFAULT_TIMEOUT`."""
    return connect(url, timeout=call_timeout(url, timeout))


def call_timeout(url: str, timeout: float | None) -> float | None:
    """The ``timeout`` to connect to ``url`` with: ``--timeout`` when given, else ``None``
    when the URL has its own, else :data:`DEFAULT_TIMEOUT`."""
    if timeout is None and "timeout" not in DatabaseURL.parse(url).options:
        timeout = DEFAULT_TIMEOUT
    return timeout


def sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite://`` URL names, resolved; ``None`` for other URLs and ``:memory:``."""
    parsed = DatabaseURL.parse(url)
    if parsed.scheme != "sqlite" or not parsed.path or parsed.path == ":memory:":
        return None
    return Path(parsed.path).resolve()


def _path_hint(url: str) -> str:
    """Where a ``sqlite://`` URL's file is, and the four-slash form when the path is relative."""
    path = DatabaseURL.parse(url).path
    resolved = sqlite_file(url)
    if resolved is None:
        return ""
    if os.path.isabs(path):
        return f" (the file {resolved})"
    hint = f" (sqlite:///{path} names the relative path {path}, here {resolved}"
    if not path.startswith("."):
        hint += f"; an absolute path takes four slashes: sqlite:////{path} for /{path}"
    return hint + ")"


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    objects.check(args)
    url = _url(args)
    path = sqlite_file(url)
    if args.command in READS and path is not None and not path.exists():
        if args.command == "rm" and args.if_exists:
            return 0
        given = DatabaseURL.parse(url).path
        hint = "" if os.path.isabs(given) or given.startswith(".") else _path_hint(url)
        raise ConfigurationError(  # a wrong --db, like a wrong argument
            f"no database at {path}: the file does not exist, nothing to read "
            f"(dfdb put or dfdb restore creates it){hint}"
        )
    if args.command == "restore":  # a dump that cannot be restored leaves no empty database behind
        args.dump = transfer.read_dump(args.file)
    if args.command == "watch" and path is not None and not path.exists():
        print(f"dfdb: no database at {path} yet: created empty, waiting for changes", file=sys.stderr)
    nb = open_nb(url, args.timeout)
    try:
        await nb.__aenter__()
    except DfdbError as exc:
        if path is None:
            raise
        wrapped = ConfigurationError if isinstance(exc, ConfigurationError) else DfdbError
        raise wrapped(f"{exc}{_path_hint(url)}") from None
    async with nb:
        return await _dispatch(nb, args, out)


async def _dispatch(nb: NbApi, args: argparse.Namespace, out: TextIO) -> int:
    command = args.command
    if command == "demo":
        return await _demo(nb, args, out)
    if command == "bench":
        return await _bench(nb, args, out)
    if command == "copy":
        async with open_nb(args.to, args.timeout) as target:
            return await transfer.copy(nb, target)
    if command == "dump":
        return await transfer.dump(nb, args.file, out)
    if command == "restore":
        return await transfer.restore(nb, args.dump, force=args.force)
    if command == "tables":
        return await transfer.tables(nb, args.output, out)
    if command == "status":
        return await _status(nb, args.json, out)
    return await objects.run(nb, args, out)


async def _fleet(args: argparse.Namespace, out: TextIO) -> int:
    import json

    from dfdb.fleet import FleetConfig, print_result, run_fleet

    if args.relist_jitter < 0:
        raise UsageError("--relist-jitter cannot be negative")
    if args.json and not _writable(Path(args.json)):  # said now, not after a run of minutes
        raise UsageError(f"--json: cannot write {args.json} (no such folder, not writable, or a folder)")
    url = None if args.server else _url(args)
    cfg = FleetConfig(
        url=url,
        server=args.server,
        members=args.members,
        etcd_progress=args.etcd_progress,
        controllers=args.controllers,
        workers=args.workers,
        tenants=args.tenants,
        ports=args.ports,
        spread=args.spread,
        rate=args.rate,
        duration=args.duration,
        lost=args.lost,
        scenarios=tuple(s.strip() for s in args.scenarios.split(",") if s.strip()),
        relist_rate=args.relist_rate,
        relist_burst=args.relist_burst,
        starts=args.starts,
        json=args.json,
        relist_jitter=args.relist_jitter,
        within=args.within,
        url_options=args.url_options,
        timeout=call_timeout(url, args.timeout) if url is not None else None,
    )
    result = await run_fleet(cfg)
    print_result(result, out)
    if args.json:
        text = json.dumps({**dataclasses.asdict(result), "ok": result.ok}, indent=2)
        await asyncio.to_thread(Path(args.json).write_text, text + "\n")
    return 0 if result.ok else 1


def _writable(path: Path) -> bool:
    """Whether a file can be written at ``path``: a folder that exists and may be written."""
    return path.parent.is_dir() and os.access(path.parent, os.W_OK) and not path.is_dir()


async def _demo(nb: NbApi, args: argparse.Namespace, out: TextIO) -> int:
    from dfdb.demo import DemoConfig, run_demo

    stored = await transfer.stored_tables(nb)
    if stored:
        raise UsageError(
            f"dfdb demo needs an empty database, and {nb.url} holds objects ({', '.join(stored)}): "
            "give it another with --db (the default memory:// is always empty)"
        )
    cfg = DemoConfig(
        args.tenants, args.switches, args.ports, args.controllers, args.changes, args.seed, args.mode, args.spread
    )
    if args.metrics_port is None:
        return 0 if (await run_demo(nb, cfg, out)).ok else 1
    from dfdb import metrics

    async with contextlib.AsyncExitStack() as stack:
        try:
            server = await stack.enter_async_context(
                metrics.serve(args.metrics_port, registry=metrics.new_registry(nb))
            )
        except OSError as exc:  # the port is taken or not allowed: the message names it
            hint = "; --metrics-port 0 picks a free port" if exc.errno == errno.EADDRINUSE else ""
            raise DfdbError(f"{exc.strerror or exc}{hint}") from None
        print(f"dfdb: metrics at {server.url}", file=sys.stderr, flush=True)
        result = await run_demo(nb, cfg, out)
        out.flush()
        print("dfdb: demo done; serving its metrics until interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        await asyncio.Event().wait()
    return 0 if result.ok else 1  # pragma: no cover - interrupted above


async def _status(nb: NbApi, as_json: bool, out: TextIO) -> int:
    """The live services (``dfdb.presence``): one line each, or a JSON list; a presence record
    that cannot be read is named on a line of its own (on stderr with ``--json``)."""
    import json
    import time

    from dfdb.presence import ServicePresence

    now = time.time()
    listing = await nb.list(ServicePresence)
    services = sorted(listing.items, key=lambda s: (s.chassis, s.service, s.pid))
    unreadable = ""
    if listing.corrupt:
        count = len(listing.corrupt)
        unreadable = (
            f"{count} presence record{'s' if count != 1 else ''} could not be read "
            f"(left out): {', '.join(map(repr, listing.corrupt))}"
        )
    if as_json:
        rows = [{**s.model_dump(), "age": round(now - s.reported_at, 3)} for s in services]
        print(json.dumps(rows, indent=2), file=out)
        if unreadable:
            print(f"dfdb: {unreadable}", file=sys.stderr)
        return 0
    header = ("SERVICE", "CHASSIS", "PID", "VERSION", "POSITION", "LAG", "LAST REPORT")
    rows_text = [
        (printable(s.service), printable(s.chassis), str(s.pid), printable(s.dfdb_version),
         "-" if s.position is None else str(s.position), "-" if s.lag is None else str(s.lag),
         f"{now - s.reported_at:.1f}s ago")
        for s in services
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows_text]) for i in range(len(header))]
    for row in [header, *rows_text]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)
    print(f"{len(services)} live service{'s' if len(services) != 1 else ''}", file=out)
    if unreadable:
        print(unreadable, file=out)
    return 0


async def _bench(nb: NbApi, args: argparse.Namespace, out: TextIO) -> int:
    import dataclasses

    from dfdb.bench import SCHEMES, Sizes, render_markdown, run_backend, versions, write_reports

    sizes = Sizes.quick() if args.quick else Sizes()
    if args.repeat is not None:
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    backend = SCHEMES.get(nb.url.scheme)
    if backend is None:
        raise UsageError(f"dfdb bench knows {', '.join(sorted(SCHEMES))} URLs, not {nb.url.scheme}://")
    await nb.aclose()  # every run opens its own namespace
    info = versions()
    results = await run_backend(backend, nb.url, sizes, cleanup=True, log=sys.stderr, info=info)
    print(render_markdown(results, sizes=sizes, versions=info, quick=args.quick), file=out)
    if args.json:
        write_reports(results, info, sizes, quick=args.quick, markdown=None, json_path=Path(args.json))
    if args.resources:
        await _bench_resources(backend, nb.url, sizes, args, out)
    return 0


async def _bench_resources(backend: str, url: DatabaseURL, sizes: Sizes, args: argparse.Namespace, out: TextIO) -> None:
    """The resource overhead on ``url``: a table, what could not be taken, and with
    ``--json`` the figures added to the JSON file."""

    from dfdb.bench.overhead import measure_overhead, render_overhead

    print(f"  {backend}: resources, {sizes.bulk} objects then {sizes.fanout_writes} events", file=sys.stderr)
    row = await measure_overhead(
        backend, url, objects=sizes.bulk, controllers=sizes.controllers, writes=sizes.fanout_writes, cleanup=True
    )
    print(f"## Resources\n\n{render_overhead([row])}", file=out)
    if args.json:
        _add_to_json(Path(args.json), "resources", row.as_dict())


def _add_to_json(path: Path, key: str, value: object) -> None:
    import json

    payload = json.loads(path.read_text())
    payload[key] = value
    path.write_text(json.dumps(payload, indent=1) + "\n")


def _completion(shell: str, out: TextIO) -> int:
    """Print the completion script of ``shell``, generated from the parser by shtab."""
    import shtab

    print(shtab.complete(build_parser(), shell=shell), file=out)
    return 0


def _server(args: argparse.Namespace) -> int:
    """Run a server in the foreground; ``SIGHUP`` (a closed terminal) stops it as Ctrl-C
    and ``SIGTERM`` do: the server process ends and its data folder goes."""
    from dfdb.servers import SERVERS, run_foreground

    factory = SERVERS.get(args.backend)
    if factory is None:
        known = ", ".join(sorted(SERVERS)) or "none yet"
        raise UsageError(f"no server backend {args.backend!r}; available: {known}")
    main_thread = threading.current_thread() is threading.main_thread()
    hangup = getattr(signal, "SIGHUP", None) if main_thread else None
    previous = signal.signal(hangup, _interrupt) if hangup is not None else None
    try:
        return run_foreground(factory, args.members, tls=args.tls)
    finally:
        if hangup is not None:
            signal.signal(hangup, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
