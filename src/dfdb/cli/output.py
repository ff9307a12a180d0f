"""What the commands print: tables, JSON lines, progress on a terminal."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["Progress", "UsageError", "dump_json", "load_json", "print_rows", "printable", "terminal_safe_json"]


class UsageError(Exception):
    """A mistake in how the command was called (exit status 2)."""


def load_json(text: str) -> Any:
    """``json.loads(text)``.

    Raises:
        ValueError: ``text`` is not JSON, or JSON beyond what Python reads (nested more
            deeply than its recursion limit, an integer longer than its digit limit); the
            message is one short line.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except json.JSONDecodeError:
        raise
    except ValueError:  # the one other: an integer longer than Python converts
        raise ValueError(f"a number of more than {sys.get_int_max_str_digits()} digits") from None


def terminal_safe_json(text: str) -> str:
    """JSON ``text`` with DEL, the C1 controls (U+0080 to U+009F) and the line and paragraph
    separators escaped (``\\u0085``): JSON allows them raw inside strings, but a terminal acts
    on C1 controls and some readers split lines at the separators. The value is the same JSON;
    the C0 controls are escaped by every JSON encoder already."""
    return _RAW_IN_JSON.sub(_escape, text)


def dump_json(obj: Any) -> str:
    """``obj`` as one line of JSON, non-ASCII text as itself but for what
    :func:`terminal_safe_json` escapes."""
    return terminal_safe_json(json.dumps(obj, ensure_ascii=False))


def print_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], output: str, out: TextIO) -> None:
    """``rows`` as JSON lines (``output="json"``) or as a table with a header line."""
    if output == "json":
        for row in rows:
            print(dump_json(row), file=out)
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    for line in [[c.upper() for c in columns], *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip(), file=out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return printable(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def printable(text: str) -> str:
    """``text`` for a table cell: its control characters and line separators escaped
    (``\\u001b``), so that a stored value cannot drive the terminal or break a row."""
    return _UNPRINTABLE.sub(_escape, text)


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""Control characters and line separators: a stored value must not drive the terminal
(escape sequences) or break a table's rows."""

_RAW_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029]")
"""What JSON encoders leave raw and a terminal or a line reader may act on."""

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\u{ord(char):04x}"


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
