"""What the commands print: tables, JSON lines, progress on a terminal."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["Progress", "UsageError", "print_rows"]


class UsageError(Exception):
    """A mistake in how the command was called (exit status 2)."""


def print_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], output: str, out: TextIO) -> None:
    """``rows`` as JSON lines (``output="json"``) or as a table with a header line."""
    if output == "json":
        for row in rows:
            print(json.dumps(row, ensure_ascii=False), file=out)
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    for line in [[c.upper() for c in columns], *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip(), file=out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Progress:
    """``TABLE: n/total`` on stderr, redrawn in place, only when stderr is a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.active = self.stream.isatty()

    def update(self, table: str, done: int, total: int) -> None:
        if self.active and (done % 100 == 0 or done == total):
            print(f"\r{table}: {done}/{total}", end="", file=self.stream, flush=True)

    def end(self, total: int) -> None:
        if self.active and total:
            print(file=self.stream)
