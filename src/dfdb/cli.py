"""The ``dfdb`` command: demo, admin commands, copy between backends, benchmarks.

Every handled error prints one line; usage mistakes exit 2, other failures exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from pydantic import ValidationError

import dfdb.models  # noqa: F401  (registers the network model set)
from dfdb.codec import unknown_fields
from dfdb.connecting import connect
from dfdb.drivers.base import ABSENT, Driver, Entry, Listing
from dfdb.errors import AlreadyExistsError, ConfigurationError, DfdbError
from dfdb.events import Action
from dfdb.nb import NbApi
from dfdb.nbmodel import NbModel, model_for_table, registered_models
from dfdb.retry import Backoff
from dfdb.url import DatabaseURL

__all__ = ["DEFAULT_URL", "DEMO_URL", "main"]

DEFAULT_URL = "sqlite:///./dfdb.sqlite3"
"""The embedded default database of the admin commands, used when neither ``--db`` nor
``DFDB_URL`` is set: a file in the current folder, so that commands in several
terminals see each other's writes."""

DEMO_URL = "memory://"
"""The default database of ``dfdb demo``: in-process, nothing left behind."""

DEFAULT_TIMEOUT = 5.0
"""Seconds before an unreachable server is an error, unless ``--timeout`` or the URL says otherwise."""


class UsageError(Exception):
    """A mistake in how the command was called (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"dfdb: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dfdb", description="dfdb: a pluggable northbound database with loss-free change streams.")
    p.add_argument("--db", help="database URL (default: $DFDB_URL, else the embedded default)")
    p.add_argument(
        "--timeout",
        type=_seconds,
        help=f"seconds before an unreachable server is an error (default: the URL's timeout, else {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument("--models", action="append", default=[], metavar="MODULE", help="import MODULE to register models")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", help="run a whole deployment in one process and check convergence")
    d.add_argument("--tenants", type=_positive, default=4)
    d.add_argument("--switches", type=_positive, default=2, help="switches per tenant")
    d.add_argument("--ports", type=_positive, default=8, help="ports per switch")
    d.add_argument("--controllers", type=_positive, default=3)
    d.add_argument("--changes", type=_natural, default=2000, help="changes after the topology is built")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument(
        "--mode",
        choices=["stream", "full", "selective", "reactive"],
        default="stream",
        help="controllers as change streams, or as Replicas in this mode",
    )

    ls = sub.add_parser("ls", help="list a table as JSON lines")
    ls.add_argument("table")
    ls.add_argument("--topic")
    g = sub.add_parser("get", help="print one object as JSON")
    g.add_argument("table")
    g.add_argument("id")
    put = sub.add_parser("put", help="create or replace an object given as JSON")
    put.add_argument("table")
    put.add_argument("json")
    rm = sub.add_parser("rm", help="delete an object")
    rm.add_argument("table")
    rm.add_argument("id")
    w = sub.add_parser("watch", help="print changes as JSON lines until interrupted")
    w.add_argument("tables", nargs="+", metavar="TABLE")
    w.add_argument("--topic", action="append", help="only this topic (repeatable)")
    w.add_argument("--since", help="resume from a cursor")
    w.add_argument("--count", type=_positive, help="stop after this many events")
    c = sub.add_parser("copy", help="copy every table to another backend")
    c.add_argument("--to", required=True, metavar="URL")
    srv = sub.add_parser("server", help="run a local database server for development")
    srv_sub = srv.add_subparsers(dest="server_command", required=True, metavar="ACTION", parser_class=_Parser)
    run = srv_sub.add_parser("run", help="run BACKEND in the foreground on loopback")
    run.add_argument("backend")
    run.add_argument("--members", type=_positive, default=1)
    run.add_argument("--tls", action="store_true", help="serve TLS only, with a local CA made for development")
    b = sub.add_parser("bench", help="dfdb against the raw client on --db: the five benchmark cases")
    b.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    b.add_argument("--repeat", type=_positive, help="runs of each case (default 5; quick: 2)")
    b.add_argument("--json", metavar="FILE", help="also write every sample as JSON to FILE")
    return p


def _positive(text: str) -> int:
    value = _natural(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds: {text}")
    return value


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        for module in args.models:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise UsageError(f"cannot import models module {module!r}: {exc}") from None
        if args.command == "server":
            return _server(args)  # synchronous: Ctrl-C must reach it at once
        return asyncio.run(_run(args, sys.stdout))
    except (UsageError, ConfigurationError) as exc:
        return _fail(2, f"error: {exc}")
    except DfdbError as exc:
        return _fail(1, str(exc))
    except ValueError as exc:  # an invalid id, topic or object given on the command line
        return _fail(2, f"error: {exc}")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # one line, never a traceback
        return _fail(1, f"unexpected error: {type(exc).__name__}: {exc}")


def _fail(status: int, message: str) -> int:
    """Print ``message`` as one line on stderr; return ``status``."""
    line = " ".join(message.split())
    print(f"dfdb: {line}".encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)
    return status


def _url(args: argparse.Namespace) -> str:
    default = DEMO_URL if args.command == "demo" else DEFAULT_URL
    return str(args.db or os.environ.get("DFDB_URL") or default)


def _connect(url: str, timeout: float | None) -> NbApi:
    """``connect(url)``: ``--timeout`` when given wins over the URL's ``timeout``, which
    wins over :data:`DEFAULT_TIMEOUT`."""
    if timeout is None and "timeout" not in DatabaseURL.parse(url).options:
        timeout = DEFAULT_TIMEOUT
    return connect(url, timeout=timeout)


def _model(table: str) -> type[NbModel]:
    model = model_for_table(table)
    if model is None:
        known = ", ".join(m.__table__ for m in registered_models())
        raise UsageError(f"unknown table {table!r}; known tables: {known}")
    return model


def _json(obj: NbModel) -> str:
    return obj.model_dump_json()


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    nb = _connect(_url(args), args.timeout)
    async with nb:
        command = args.command
        if command == "demo":
            return await _demo(nb, args, out)
        if command == "ls":
            for obj in await nb.get_all(_model(args.table), topic=args.topic):
                print(_json(obj), file=out)
            return 0
        if command == "get":
            print(_json(await nb.get(_model(args.table), args.id)), file=out)
            return 0
        if command == "put":
            print(_json(await _put(nb, _model(args.table), args.json)), file=out)
            return 0
        if command == "rm":
            await nb.delete(_model(args.table), args.id)
            return 0
        if command == "watch":
            return await _watch(nb, args, out)
        if command == "copy":
            return await _copy(nb, args.to, args.timeout)
        if command == "bench":
            return await _bench(nb, args, out)
    raise UsageError(f"unknown command {args.command!r}")  # pragma: no cover - argparse refuses first


async def _put(nb: NbApi, model: type[NbModel], text: str) -> NbModel:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError("the object must be a JSON object")
    data.pop("version", None)
    try:
        obj = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "object"
        raise UsageError(f"invalid {model.__table__}: {where}: {first.get('msg')}") from None
    unknown = unknown_fields(data, obj.model_dump())
    if unknown:
        raise UsageError(f"invalid {model.__table__}: unknown field {', '.join(map(repr, unknown))}")
    try:
        return await nb.put(obj)
    except ValueError as exc:
        if isinstance(exc, DfdbError):
            raise
        raise UsageError(str(exc)) from None


async def _watch(nb: NbApi, args: argparse.Namespace, out: TextIO) -> int:
    models = [_model(t) for t in args.tables]
    topics = set(args.topic) if args.topic else None
    try:
        stream = nb.watch(models, topics=topics, since=args.since)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    seen = 0
    async with stream:
        async for ev in stream:
            record: dict[str, Any] = {
                "action": ev.action.value,
                "table": ev.model.__table__ if ev.model else None,
                "id": ev.id or None,
                "topic": ev.topic,
                "revision": ev.revision,
                "cursor": ev.cursor,
            }
            if ev.obj is not None and ev.action != Action.RESYNC:
                record["object"] = ev.obj.model_dump(mode="json")
            print(json.dumps(record), file=out, flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


async def _copy(source: NbApi, to_url: str, limit: float | None) -> int:
    """Copy every table of ``source`` (raw values: no model needed) from one consistent
    snapshot; objects already at the target are left unchanged (exit status 1)."""
    tty = sys.stderr.isatty()
    driver = source.driver
    listed = await driver.tables()
    if listed is None:
        print(
            f"dfdb: the {source.url.scheme}:// backend cannot list its tables: "
            "copying the tables of the registered models (--models adds more)",
            file=sys.stderr,
        )
    snapshot = await _snapshot(driver, listed is None, source.timeout)
    copied = skipped = 0
    async with _connect(to_url, limit) as target:
        for table, entries in snapshot.items():
            total = len(entries)
            for n, entry in enumerate(entries, 1):
                try:
                    await target.driver.put(table, entry.id, entry.topic, entry.value, ABSENT)
                    copied += 1
                except AlreadyExistsError:
                    skipped += 1
                if tty and (n % 100 == 0 or n == total):
                    print(f"\r{table}: {n}/{total}", end="", file=sys.stderr, flush=True)
            if tty and total:
                print(file=sys.stderr)
            elif total:
                print(f"{table}: {total}/{total}", file=sys.stderr)
    tables = sum(1 for entries in snapshot.values() if entries)
    print(
        f"copied {copied} objects of {tables} tables to {target.url}; {skipped} already there (left unchanged)",
        file=sys.stderr,
    )
    return 1 if skipped else 0


async def _snapshot(driver: Driver, registered_only: bool, limit: float) -> dict[str, list[Entry]]:
    """Every table's entries as of one moment, sorted by id.

    The tables are listed one after another; when their listings name one revision, no
    write came between them. Otherwise they are listed again until two rounds agree on
    every entry's revision (nothing changed in between, so the first round is a state
    the database had), for at most ``limit`` seconds.

    Raises:
        DfdbError: writers kept changing the tables for ``limit`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    previous: dict[str, list[tuple[str, int]]] | None = None
    backoff = Backoff(initial=0.02, maximum=0.5)
    for attempt in itertools.count():
        if registered_only:
            names = sorted(m.__table__ for m in registered_models())
        else:
            names = list(await driver.tables() or ())
        listings: dict[str, Listing] = {name: await driver.list(name) for name in names}
        if len({listing.revision for listing in listings.values()}) <= 1:
            return _sorted_entries(listings)
        keys = {name: sorted((e.id, e.revision) for e in listing.entries) for name, listing in listings.items()}
        if keys == previous:
            return _sorted_entries(listings)
        previous = keys
        delay = backoff.delay(attempt)
        if loop.time() + delay >= deadline:
            break
        await asyncio.sleep(delay)
    raise DfdbError(f"writers kept changing the source for {limit:g}s: pause them and copy again (or raise --timeout)")


def _sorted_entries(listings: dict[str, Listing]) -> dict[str, list[Entry]]:
    return {name: sorted(listing.entries, key=lambda e: e.id) for name, listing in listings.items()}


async def _demo(nb: NbApi, args: argparse.Namespace, out: TextIO) -> int:
    from dfdb.demo import DemoConfig, run_demo

    cfg = DemoConfig(args.tenants, args.switches, args.ports, args.controllers, args.changes, args.seed, args.mode)
    result = await run_demo(nb, cfg, out)
    return 0 if result.ok else 1


async def _bench(nb: NbApi, args: argparse.Namespace, out: TextIO) -> int:
    import dataclasses
    from pathlib import Path

    from dfdb.bench import SCHEMES, Sizes, render_markdown, run_backend, versions, write_reports

    sizes = Sizes.quick() if args.quick else Sizes()
    if args.repeat is not None:
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    backend = SCHEMES.get(nb.url.scheme)
    if backend is None:
        raise UsageError(f"dfdb bench knows {', '.join(sorted(SCHEMES))} URLs, not {nb.url.scheme}://")
    await nb.aclose()  # every run opens its own namespace
    results = await run_backend(backend, nb.url, sizes, cleanup=True, log=sys.stderr)
    info = versions()
    print(render_markdown(results, sizes=sizes, versions=info, quick=args.quick), file=out)
    if args.json:
        write_reports(results, info, sizes, quick=args.quick, markdown=None, json_path=Path(args.json))
    return 0


def _server(args: argparse.Namespace) -> int:
    from dfdb.servers import SERVERS, run_foreground

    factory = SERVERS.get(args.backend)
    if factory is None:
        known = ", ".join(sorted(SERVERS)) or "none yet"
        raise UsageError(f"no server backend {args.backend!r}; available: {known}")
    return run_foreground(factory, args.members, tls=args.tls)
