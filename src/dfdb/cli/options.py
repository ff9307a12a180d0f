"""The command line's grammar: every command, its options, their defaults and an example.

The global options (``--db``, ``--timeout``, ``--models``, ``-v``) are accepted before
the command and after it (``dfdb ls lport --db URL``); given in both places, the one
after the command wins (``--models`` and ``-v`` add up).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, NoReturn

from dfdb import __version__
from dfdb.url import MAX_SECONDS

__all__ = ["DEFAULT_TIMEOUT", "DEFAULT_URL", "DEMO_URL", "build_parser", "merge_globals"]

DEFAULT_URL = "sqlite:///./dfdb.sqlite3"
"""The embedded default database of the admin commands, used when neither ``--db`` nor
``DFDB_URL`` is set: a file in the current folder, so that commands in several
terminals see each other's writes."""

DEMO_URL = "memory://"
"""The default database of ``dfdb demo``: in-process, nothing left behind."""

DEFAULT_TIMEOUT = 5.0
"""Seconds before an unreachable server is an error, unless ``--timeout`` or the URL says otherwise."""

_SUB = "_after"
"""The suffix of the destinations of the global options given after the command."""

OUTPUTS = ("json", "table")


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {line} (see '{self.prog} --help')\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help with every option's default (when it has one) and the examples laid out as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == [] or action.default == 0:
            return action.help
        return super()._get_help_string(action)


def _global_options(p: argparse.ArgumentParser, suffix: str) -> None:
    """The options every command takes; ``suffix`` names their copies after the command,
    which default to "not given" so that they never hide the ones before it."""
    after = bool(suffix)
    unset: Any = argparse.SUPPRESS
    g = p.add_argument_group("global options")
    g.add_argument(
        "--db",
        dest="db" + suffix,
        metavar="URL",
        help=f"database URL; default: $DFDB_URL, else {DEFAULT_URL} ({DEMO_URL} for demo)",
        default=unset if after else None,
    )
    g.add_argument(
        "--timeout",
        dest="timeout" + suffix,
        type=_seconds,
        metavar="SECONDS",
        help=f"seconds before an unreachable server is an error; default: the URL's timeout, else {DEFAULT_TIMEOUT:g}",
        default=unset if after else None,
    )
    g.add_argument(
        "--models",
        dest="models" + suffix,
        action="append",
        metavar="MODULE",
        help="import MODULE to register its models (repeatable)",
        default=unset if after else [],
    )
    g.add_argument(
        "-v",
        "--verbose",
        dest="verbose" + suffix,
        action="count",
        help="log to stderr: -v info, -vv debug",
        default=unset if after else 0,
    )


def merge_globals(args: argparse.Namespace) -> argparse.Namespace:
    """Fold the global options given after the command into the ones before it."""
    for name in ("db", "timeout"):
        after = getattr(args, name + _SUB, None)
        if after is not None:
            setattr(args, name, after)
    args.models = [*args.models, *getattr(args, "models" + _SUB, [])]
    args.verbose = args.verbose + getattr(args, "verbose" + _SUB, 0)
    return args


def _command(
    sub: argparse._SubParsersAction[Parser], name: str, help: str, example: str, description: str = ""
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"example:\n  {example}",
        formatter_class=_Formatter,
    )
    _global_options(p, _SUB)
    return p


def _output(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("-o", "--output", choices=OUTPUTS, default=default, help="output format")


def build_parser() -> Parser:
    """The ``dfdb`` command's parser (also what ``dfdb completion`` describes)."""
    p = Parser(
        prog="dfdb",
        description="dfdb: a pluggable northbound database with loss-free change streams.",
        epilog="example:\n  dfdb --db redis://127.0.0.1:6379/0 tables\n\n'dfdb COMMAND --help' tells more.",
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"dfdb {__version__}")
    _global_options(p, "")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    d = _command(sub, "demo", "run a whole deployment in one process and check convergence", "dfdb demo --changes 500")
    d.add_argument("--tenants", type=_positive, default=4, help="tenants")
    d.add_argument("--switches", type=_positive, default=2, help="switches per tenant")
    d.add_argument("--ports", type=_positive, default=8, help="ports per switch")
    d.add_argument("--controllers", type=_positive, default=3, help="local controllers")
    d.add_argument("--changes", type=_natural, default=2000, help="changes after the topology is built")
    d.add_argument("--seed", type=int, default=1, help="random seed")
    d.add_argument("--spread", type=_positive, default=1, help="chassis each tenant's ports sit on")
    d.add_argument(
        "--mode",
        choices=["stream", "full", "selective", "reactive"],
        default="stream",
        help="controllers as change streams, or as Replicas in this mode",
    )
    d.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics on 127.0.0.1:PORT during the demo and after it until interrupted "
        "(needs dfdb[metrics])",
    )

    t = _command(sub, "tables", "list the tables that hold objects, with their counts", "dfdb tables -o json")
    _output(t, "table")
    ls = _command(sub, "ls", "list a table's objects", "dfdb ls lport --topic tenant1 -o table")
    ls.add_argument("table")
    ls.add_argument("--topic", help="only this topic")
    _output(ls, "json")
    g = _command(sub, "get", "print one object as JSON", "dfdb get lswitch net1")
    g.add_argument("table")
    g.add_argument("id")
    put = _command(
        sub,
        "put",
        "create or replace an object given as JSON",
        'echo \'{"id": "net1", "topic": "t1", "mtu": 1400}\' | dfdb put lswitch -',
        description="Create or replace an object given as JSON (an argument, '-' for stdin, or --file). "
        'With "version": N it is a compare-and-swap: written only if the stored object is at '
        "version N (0: only if it does not exist yet).",
    )
    put.add_argument("table")
    put.add_argument("json", nargs="?", help="the object; '-' reads it from stdin")
    put.add_argument("-f", "--file", metavar="FILE", help="read the object from FILE ('-': stdin), at most 16 MiB")
    rm = _command(sub, "rm", "delete an object", "dfdb rm lswitch net1 --if-exists")
    rm.add_argument("table")
    rm.add_argument("id")
    rm.add_argument("--if-exists", action="store_true", help="succeed when the object does not exist")
    w = _command(sub, "watch", "print changes as JSON lines until interrupted", "dfdb watch lport lswitch --count 10")
    w.add_argument("tables", nargs="+", metavar="TABLE")
    w.add_argument("--topic", action="append", help="only this topic (repeatable)")
    w.add_argument("--since", help="resume from a cursor")
    w.add_argument("--count", type=_positive, help="stop after this many events")
    dump = _command(
        sub,
        "dump",
        "write every table as JSON lines, from one consistent snapshot",
        "dfdb --db redis://127.0.0.1:6379/0 dump -f backup.jsonl",
    )
    dump.add_argument("-f", "--file", metavar="FILE", default="-", help="write to FILE ('-': stdout)")
    restore = _command(
        sub,
        "restore",
        "load a dump into the database",
        "dfdb --db sqlite:///restored.db restore -f backup.jsonl",
        description="Load a dump into the database, every object with its version. Refuses a "
        "database that already holds objects of the dump's tables, unless --force (which "
        "replaces the objects the dump holds and leaves the others in place: it is not a "
        "replacement of the whole database). The whole dump is checked before anything is "
        "written, so a truncated or damaged one writes nothing; the writes themselves are "
        "batches, not one transaction: if they stop (an error, Ctrl-C) the message says how "
        "many were written, and restore --force with the same dump completes them.",
    )
    restore.add_argument("-f", "--file", metavar="FILE", default="-", help="read from FILE ('-': stdin)")
    restore.add_argument("--force", action="store_true", help="restore into tables that hold objects")
    st = _command(sub, "status", "list the live services with their lag and last report", "dfdb status --json")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c = _command(
        sub,
        "copy",
        "copy every table to another database",
        "dfdb --db sqlite:///dfdb.sqlite3 copy --to redis://h:6379/0",
    )
    c.add_argument("--to", required=True, metavar="URL", help="the target database")
    srv = sub.add_parser("server", help="run a local database server for development", formatter_class=_Formatter)
    srv_sub = srv.add_subparsers(dest="server_command", required=True, metavar="ACTION", parser_class=Parser)
    run = _command(srv_sub, "run", "run BACKEND in the foreground on loopback", "dfdb server run etcd --members 3")
    run.add_argument("backend", help="redis, etcd or zookeeper")
    run.add_argument(
        "--members", type=_members, default=1, help=f"cluster members, 1 to {MAX_MEMBERS} (each a server process)"
    )
    run.add_argument("--tls", action="store_true", help="serve TLS only, with a local CA made for development")
    b = _command(sub, "bench", "dfdb against the raw client on --db: the five benchmark cases", "dfdb bench --quick")
    b.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    b.add_argument("--repeat", type=_positive, help="runs of each case (default 5; quick: 2)")
    b.add_argument("--json", metavar="FILE", help="also write every sample as JSON to FILE")
    b.add_argument(
        "--resources",
        action="store_true",
        help="also measure the server's memory, CPU and disk and the client's CPU (a local server: read from /proc)",
    )
    _fleet(sub)
    comp = _command(
        sub,
        "completion",
        "print a shell completion script",
        'eval "$(dfdb completion bash)"',
    )
    comp.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    return p


def _fleet(sub: argparse._SubParsersAction[Parser]) -> None:
    f = _command(
        sub,
        "fleet",
        "many selective controllers in worker processes: cold start, steady state, restart, history loss",
        "dfdb fleet --server redis --controllers 200",
    )
    f.add_argument("--server", choices=["redis", "etcd", "zookeeper"], help="start a local server (instead of --db)")
    f.add_argument(
        "--members", type=_members, default=1, help="members of the server started (3: its restart kills the leader)"
    )
    f.add_argument(
        "--etcd-progress",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="progress notification interval of the etcd server started",
    )
    f.add_argument("--controllers", type=_at_most(100_000), default=50, help="controllers (one per chassis)")
    f.add_argument(
        "--workers", type=_at_most(1_000), default=4, help="worker processes the controllers are spread over"
    )
    f.add_argument("--tenants", type=_at_most(1_000_000), help="tenants (default: as many as controllers)")
    f.add_argument("--ports", type=_at_most(1_000), default=20, help="ports per tenant")
    f.add_argument("--spread", type=_positive, default=3, help="chassis each tenant's ports sit on")
    f.add_argument("--rate", type=_rate, default=50.0, help="writes per second in the steady state")
    f.add_argument("--duration", type=_seconds, default=10.0, help="seconds of steady-state writing")
    f.add_argument(
        "--lost", type=_at_most(1_000_000, 0), default=200, help="changes lost to the controllers (history loss)"
    )
    f.add_argument("--scenarios", default="cold,idle,steady,restart,history", help="comma-separated scenarios to run")
    f.add_argument("--relist-rate", type=_rate, default=20.0, help="relists per second per process")
    f.add_argument("--relist-burst", type=_positive, default=10, help="relists at once per process")
    f.add_argument("--relist-jitter", type=_delay, default=1.0, help="longest random delay before a relist, seconds")
    f.add_argument(
        "--starts", type=_positive, default=25, help="controllers of a process connecting and loading at once"
    )
    f.add_argument("--within", type=_seconds, default=300.0, help="seconds a scenario may take to converge")
    f.add_argument(
        "--url-options", default="", metavar="K=V&...", help="URL options of the controllers' connections (block=5)"
    )
    f.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")


MAX_MEMBERS = 7
"""The largest development cluster ``dfdb server run`` starts (etcd's own advice for a cluster)."""


def _members(text: str) -> int:
    value = _positive(text)
    if value > MAX_MEMBERS:
        raise argparse.ArgumentTypeError(f"at most {MAX_MEMBERS} members, each a server process: {text}")
    return value


def _at_most(maximum: int, minimum: int = 1) -> Callable[[str], int]:
    """An integer option from ``minimum`` to ``maximum`` (more is a typing mistake, or a
    run that would never end)."""

    def parse(text: str) -> int:
        value = _positive(text) if minimum else _natural(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}: {text}")
        return value

    return parse


def _positive(text: str) -> int:
    value = _natural(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _seconds(text: str) -> float:
    return _number(text, f"must be a number of seconds above 0 and at most {MAX_SECONDS:g}")


def _delay(text: str) -> float:
    return _number(text, f"must be a number of seconds from 0 to {MAX_SECONDS:g}", positive=False)


def _rate(text: str) -> float:
    return _number(text, f"must be a number per second above 0 and at most {MAX_RATE:g}", maximum=MAX_RATE)


MAX_RATE = 1e6
"""The highest rate (per second) an option takes: more is a typing mistake."""


def _number(text: str, expected: str, *, positive: bool = True, maximum: float = MAX_SECONDS) -> float:
    """``text`` as a finite number up to ``maximum``, above 0 (from 0 unless ``positive``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text}") from None
    if not (math.isfinite(value) and (value > 0 if positive else value >= 0) and value <= maximum):
        raise argparse.ArgumentTypeError(f"{expected}: {text}")
    return value


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _port(text: str) -> int:
    value = _natural(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is at most 65535: {text}")
    return value
