"""Run the dfdb command as ``python -m dfdb`` does, and note how long the command itself ran,
from after its imports to its exit status: an interpreter's start alone can take seconds on a
loaded machine, so a test comparing a command's time with a deadline measures this instead.

Usage: python timed_cli.py SECONDS_FILE ARGS...  (ARGS: the dfdb command's arguments)
Writes the seconds to SECONDS_FILE and exits with the command's status.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from dfdb.cli import main


def run(seconds_file: str, args: list[str]) -> int:
    started = time.monotonic()
    try:
        return main(args)
    finally:
        Path(seconds_file).write_text(repr(time.monotonic() - started))


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1], sys.argv[2:]))
