"""The commands on objects of a registered model: ``ls``, ``get``, ``put``, ``rm``, ``watch``."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from typing import Any, BinaryIO, TextIO

from pydantic import ValidationError

from dfdb.cli.output import UsageError, load_json, print_rows, terminal_safe_json
from dfdb.codec import unknown_fields
from dfdb.errors import DfdbError, NotFoundError
from dfdb.events import Action
from dfdb.nb import NbApi
from dfdb.nbmodel import NbModel, model_for_table, registered_models, validate_key

__all__ = ["check", "model", "run"]


def model(table: str) -> type[NbModel]:
    """The registered model of ``table``.

    Raises:
        UsageError: no model of that table is registered.
    """
    found = model_for_table(table)
    if found is None:
        known = ", ".join(m.__table__ for m in registered_models())
        raise UsageError(f"unknown table {table!r} (--models MODULE registers more); known tables: {known}")
    return found


def check(args: argparse.Namespace) -> None:
    """Refuse a bad table, id or topic on the command line before any database is opened.

    Raises:
        UsageError: an unknown table.
        ValueError: an invalid id or topic.
    """
    for table in [args.table] if "table" in args else getattr(args, "tables", []):
        model(table)
    if "id" in args:
        validate_key(args.id)
    for topic in [args.topic] if isinstance(getattr(args, "topic", None), str) else getattr(args, "topic", None) or []:
        validate_key(topic, "topic")


async def run(nb: NbApi, args: argparse.Namespace, out: TextIO) -> int:
    """Run ``ls``, ``get``, ``put``, ``rm`` or ``watch``."""
    command = args.command
    if command == "ls":
        cls = model(args.table)
        listing = await nb.list(cls, topic=args.topic)
        columns = ["id", "topic", "version", *(f for f in cls.model_fields if f not in ("id", "topic", "version"))]
        print_rows([o.model_dump(mode="json") for o in listing.items], columns, args.output, out)
        if listing.corrupt:  # named, not left out unsaid (stderr: the rows stay parseable)
            count = len(listing.corrupt)
            print(
                f"dfdb: {count} {args.table} object{'s' if count != 1 else ''} could not be read "
                f"(left out): {', '.join(map(repr, listing.corrupt))}",
                file=sys.stderr,
            )
        return 0
    if command == "get":
        print(terminal_safe_json((await nb.get(model(args.table), args.id)).model_dump_json()), file=out)
        return 0
    if command == "put":
        text = _put_text(args, max(PUT_TEXT_LIMIT, nb.driver.max_value_size or 0))
        print(terminal_safe_json((await _put(nb, model(args.table), text)).model_dump_json()), file=out)
        return 0
    if command == "rm":
        try:
            await nb.delete(model(args.table), args.id)
        except NotFoundError:
            if not args.if_exists:
                raise
        return 0
    if command == "watch":
        return await _watch(nb, args, out)
    raise UsageError(f"unknown command {command!r}")  # pragma: no cover - argparse refuses first


PUT_TEXT_LIMIT = 16 * 1024 * 1024
"""The most ``put`` reads of one object's JSON text from stdin or ``--file`` (the backend's
value-size limit when that is larger): a larger input is refused before it is read whole."""


def _put_text(args: argparse.Namespace, limit: int) -> str:
    """The JSON text of ``put``: its argument, stdin (``-``) or ``--file``, at most ``limit``
    bytes of it.

    Raises:
        UsageError: both or neither given, an input over ``limit`` bytes, or not UTF-8.
        OSError: the file cannot be read.
    """
    if args.json is not None and args.file is not None:
        raise UsageError("put takes the object as an argument or from --file, not both")
    source = args.file if args.file is not None else args.json
    if source is None:
        raise UsageError("put needs the object: as an argument, '-' for stdin, or --file FILE")
    if args.file is None and source != "-":
        return str(source)
    name = "stdin" if source == "-" else source
    too_large = UsageError(f"{name} is larger than {limit:,} bytes, the most put takes for one object")
    if source == "-":
        binary: BinaryIO | None = getattr(sys.stdin, "buffer", None)
        if binary is None:  # a text stream put in place of stdin
            text = sys.stdin.read(limit + 1)
            if len(text.encode("utf-8", "surrogatepass")) > limit:
                raise too_large
            return text
        raw = binary.read(limit + 1)
    else:
        with open(source, "rb") as f:
            found = os.fstat(f.fileno())
            if stat.S_ISREG(found.st_mode) and found.st_size > limit:
                raise UsageError(f"{name} is {found.st_size:,} bytes; put takes at most {limit:,} for one object")
            raw = f.read(limit + 1)  # a pipe or a device tells no size: read no further than the limit
    if len(raw) > limit:
        raise too_large
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{name} is not UTF-8 text, so not a JSON object") from None


async def _put(nb: NbApi, cls: type[NbModel], text: str) -> NbModel:
    """Create or replace; with a ``version`` in the object, only if the stored one is at it
    (0: only if there is none)."""
    try:
        data = load_json(text)
    except ValueError as exc:
        raise UsageError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError("the object must be a JSON object")
    expected = data.pop("version", None)
    if expected is not None and (type(expected) is not int or expected < 0):
        raise UsageError(
            f"invalid {cls.__table__}: version must be a whole number (the stored version to replace, "
            f"0 for a new object), not {json.dumps(expected)}"
        )
    try:
        obj = cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "object"
        raise UsageError(f"invalid {cls.__table__}: {where}: {first.get('msg')}") from None
    unknown = unknown_fields(data, obj.model_dump())
    if unknown:
        raise UsageError(f"invalid {cls.__table__}: unknown field {', '.join(map(repr, unknown))}")
    try:
        if expected is None:
            return await nb.put(obj)
        if expected == 0:
            return await nb.create(obj)
        return await nb.update(obj.model_copy(update={"version": expected}))
    except ValueError as exc:
        if isinstance(exc, DfdbError):
            raise
        raise UsageError(str(exc)) from None


async def _watch(nb: NbApi, args: argparse.Namespace, out: TextIO) -> int:
    models = [model(t) for t in args.tables]
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
