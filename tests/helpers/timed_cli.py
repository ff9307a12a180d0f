"""Run the dfdb command as ``python -m dfdb`` does, and note how long the command itself ran,
from after its imports to its exit status: an interpreter's start and the imports alone can
take seconds on a loaded machine, so a test comparing a command's time with a deadline
measures this instead. The driver of the ``--db`` URL and the event loop's modules are
imported before the clock starts too (the command imports them on first use).

Usage: python timed_cli.py SECONDS_FILE ARGS...  (ARGS: the dfdb command's arguments)
Writes the seconds to SECONDS_FILE and exits with the command's status.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import anyio

from dfdb.cli import main
from dfdb.drivers import driver_class
from dfdb.errors import DfdbError
from dfdb.url import DatabaseURL


def preload(args: list[str]) -> None:
    """Import what the command would import on first use: the driver of its ``--db`` URL
    (a URL the command refuses is left to the command) and the event loop's modules."""
    if "--db" in args[:-1]:
        with contextlib.suppress(DfdbError, ValueError):
            driver_class(DatabaseURL.parse(args[args.index("--db") + 1]))
    anyio.run(anyio.sleep, 0)


def run(seconds_file: str, args: list[str]) -> int:
    preload(args)
    started = time.monotonic()
    try:
        return main(args)
    finally:
        Path(seconds_file).write_text(repr(time.monotonic() - started))


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1], sys.argv[2:]))
