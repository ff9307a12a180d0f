"""A MkDocs hook: the command line page shows the ``--help`` of every ``dfdb`` command.

The marker ``<!-- dfdb-cli-help -->`` in a page is replaced by one section per command,
each with the text ``dfdb COMMAND --help`` prints, taken from the installed ``dfdb`` at
build time, so the page never drifts from the program.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from typing import Any

MARKER = "<!-- dfdb-cli-help -->"


class _Captured(BaseException):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _top_parser() -> argparse.ArgumentParser:
    """The parser ``dfdb.cli.main`` builds, caught when it is asked for ``--help``."""
    from dfdb import cli

    original = argparse.ArgumentParser.print_help

    def capture(self: argparse.ArgumentParser, file: Any = None) -> None:
        raise _Captured(self)

    argparse.ArgumentParser.print_help = capture  # type: ignore[method-assign]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cli.main(["--help"])
    except _Captured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.print_help = original  # type: ignore[method-assign]
    raise RuntimeError("dfdb --help did not print the help of an argparse parser")


def _commands(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub is not parser:
                    found.extend(_commands(sub, f"{prefix} {name}"))
    return found


def _reference() -> str:
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # the width argparse wraps at, the same on every machine
    try:
        return _sections(_top_parser())
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def _sections(parser: argparse.ArgumentParser) -> str:
    sections = []
    seen: set[int] = set()
    for name, sub in _commands(parser, "dfdb"):
        if id(sub) in seen:
            continue  # an alias of a command already shown
        seen.add(id(sub))
        sub.prog = name
        sections.append(f"### `{name}`\n\n```text\n{sub.format_help().rstrip()}\n```\n")
    return "\n".join(sections)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, _reference())
