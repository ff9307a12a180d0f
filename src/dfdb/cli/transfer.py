"""Whole-database commands on raw values (no model needed): ``tables``, ``copy``, ``dump``,
``restore``.

A dump is JSON lines: a header ``{"format": "dfdb-dump", "version": 1, "source": SCHEME,
"tables": {TABLE: COUNT}}``, then one line per object, ``{"table", "id", "topic"}`` and
its stored value, exactly: ``"object"`` when the value is a JSON object that prints back
to the same bytes (every value dfdb writes), else ``"text"`` (UTF-8) or ``"base64"``.
The value holds the object's version, so a restored object keeps it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any, TextIO

from dfdb.cli.output import Progress, UsageError, dump_json, load_json, print_rows
from dfdb.drivers.base import ABSENT, ANY, Driver, Entry, Listing, PutRequest
from dfdb.errors import AlreadyExistsError, DfdbError
from dfdb.nb import NbApi
from dfdb.nbmodel import model_for_table, registered_models, validate_key
from dfdb.retry import Backoff

__all__ = ["FORMAT", "Dump", "copy", "dump", "read_dump", "restore", "snapshot", "stored_tables", "tables"]

FORMAT = "dfdb-dump"
"""The ``format`` of a dump's header line."""

_BATCH = 500
"""Writes sent together when copying or restoring."""


async def stored_tables(nb: NbApi) -> list[str]:
    """The tables that hold objects; for a driver that cannot list its tables, those of
    the registered models that do."""
    listed = await nb.driver.tables()
    if listed is not None:
        return list(listed)
    names = sorted({m.__table__ for m in registered_models()})
    return [name for name in names if (await nb.driver.list(name)).entries]


async def _listable(nb: NbApi, command: str) -> Sequence[str]:
    """Every table that holds an entry.

    Raises:
        DfdbError: the driver cannot list its tables.
    """
    listed = await nb.driver.tables()
    if listed is None:
        raise DfdbError(
            f"the {nb.url.scheme}:// backend cannot list its tables, so dfdb {command} cannot tell "
            "what to read (its driver does not implement Driver.tables)"
        )
    return listed


async def tables(nb: NbApi, output: str, out: TextIO) -> int:
    """``dfdb tables``: each table with its object count and registered model."""
    rows: list[dict[str, Any]] = []
    for name in await _listable(nb, "tables"):
        model = model_for_table(name)
        rows.append(
            {
                "table": name,
                "objects": len((await nb.driver.list(name)).entries),
                "model": f"{model.__module__}.{model.__qualname__}" if model else None,
            }
        )
    print_rows(rows, ["table", "objects", "model"], output, out)
    return 0


async def snapshot(nb: NbApi, command: str) -> dict[str, list[Entry]]:
    """Every table's entries as of one moment, sorted by id.

    The tables are listed one after another; when their listings name one revision, no
    write came between them. Otherwise they are listed again until two rounds agree on
    every entry's revision (nothing changed in between, so the first round is a state
    the database had), for at most the NbApi's timeout.

    Raises:
        DfdbError: the driver cannot list its tables, or writers kept changing the
            tables for the whole timeout.
    """
    driver: Driver = nb.driver
    limit = nb.timeout
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    previous: dict[str, list[tuple[str, int]]] | None = None
    backoff = Backoff(initial=0.02, maximum=0.5)
    for attempt in itertools.count():
        names = await _listable(nb, command)
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
    raise DfdbError(
        f"writers kept changing the source for {limit:g}s: pause them and run dfdb {command} again (or raise --timeout)"
    )


def _sorted_entries(listings: dict[str, Listing]) -> dict[str, list[Entry]]:
    return {name: sorted(listing.entries, key=lambda e: e.id) for name, listing in listings.items()}


async def _write(
    target: NbApi,
    table: str,
    entries: Sequence[Entry],
    force: bool,
    progress: Progress,
    done: int = 0,
    total: int | None = None,
) -> int:
    """Write ``entries`` to ``target``: created (``force``: created or replaced); returns
    how many were already there (left unchanged). ``done`` of ``total`` entries of the
    table were written before (for the progress line)."""
    total = len(entries) if total is None else total
    expect = ANY if force else ABSENT
    existing = 0
    for start in range(0, len(entries), _BATCH):
        chunk = entries[start : start + _BATCH]
        results = await target.driver.put_many([PutRequest(table, e.id, e.topic, e.value, expect) for e in chunk])
        for result in results:
            if isinstance(result, AlreadyExistsError):
                existing += 1
            elif isinstance(result, Exception):
                raise result
        progress.update(table, done + start + len(chunk), total)
    if done + len(entries) >= total:
        progress.end(total)
    return existing


async def copy(source: NbApi, target: NbApi) -> int:
    """``dfdb copy``: every table of ``source`` from one consistent snapshot; objects
    already at the target are left unchanged (exit status 1).

    Raises:
        UsageError: the target is the source's own dataset (whatever its URL's spelling).
    """
    if source._identity is not None and source._identity == target._identity:
        raise UsageError(f"{target.url} is the database being copied (the dataset of {source.url}): nothing to copy")
    data = await snapshot(source, "copy")
    progress = Progress()
    copied = skipped = 0
    try:
        for table, entries in data.items():
            for start in range(0, len(entries), _BATCH):
                chunk = entries[start : start + _BATCH]
                existing = await _write(target, table, chunk, False, progress, start, len(entries))
                skipped += existing
                copied += len(chunk) - existing
    except DfdbError as exc:
        raise DfdbError(f"{exc} ({_copy_stopped(copied + skipped, data, target)})") from None
    except BaseException:  # Ctrl-C: say what the target holds now, then stop as asked
        progress.end(1)
        print(f"dfdb: interrupted: {_copy_stopped(copied + skipped, data, target)}", file=sys.stderr, flush=True)
        raise
    print(
        f"copied {copied} objects of {sum(1 for e in data.values() if e)} tables to {target.url}; "
        f"{skipped} already there (left unchanged)",
        file=sys.stderr,
    )
    return 1 if skipped else 0


def _copy_stopped(done: int, data: dict[str, list[Entry]], target: NbApi) -> str:
    total = sum(len(e) for e in data.values())
    return (
        f"copy stopped with at least {done} of {total} objects done at {target.url}; "
        "dfdb copy again copies the rest (and leaves those already there unchanged)"
    )


def _line(entry: Entry) -> dict[str, Any]:
    record: dict[str, Any] = {"table": entry.table, "id": entry.id, "topic": entry.topic}
    with contextlib.suppress(ValueError):
        text = entry.value.decode("utf-8")
        with contextlib.suppress(ValueError):
            obj = load_json(text)
            if isinstance(obj, dict) and _compact(obj) == entry.value:
                record["object"] = obj
                return record
        record["text"] = text
        return record
    record["base64"] = base64.b64encode(entry.value).decode("ascii")
    return record


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def dump(nb: NbApi, path: str, out: TextIO) -> int:
    """``dfdb dump``: the header, then every object of every table, to ``path`` (``-``: ``out``).
    The header counts the objects, so ``restore`` refuses a dump cut short."""
    data = await snapshot(nb, "dump")
    header = {"format": FORMAT, "version": 1, "source": nb.url.scheme, "tables": {t: len(e) for t, e in data.items()}}
    progress = Progress()
    with _open(path, "w", out) as f:
        print(dump_json(header), file=f)
        for table, entries in data.items():
            for n, entry in enumerate(entries, 1):
                print(dump_json(_line(entry)), file=f)
                progress.update(table, n, len(entries))
            progress.end(len(entries))
    total = sum(len(e) for e in data.values())
    print(f"dumped {total} objects of {len(data)} tables", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _open(path: str, mode: str, std: IO[str]) -> Iterator[IO[str]]:
    if path == "-":
        yield std
        return
    with open(path, mode, encoding="utf-8") as f:
        yield f


def _entry(record: Any, where: str) -> Entry:
    """The entry of one dump line.

    Raises:
        DfdbError: the line is not an object of a dump.
    """
    try:
        if not isinstance(record, dict) or not isinstance(record.get("table"), str):
            raise ValueError("not a dump line")
        table, id, topic = record["table"], record["id"], record.get("topic")
        validate_key(table, "table")
        validate_key(id)
        if topic is not None:
            validate_key(topic, "topic")
        if "object" in record:
            value = _compact(record["object"])
        elif "text" in record:
            value = str(record["text"]).encode("utf-8")
        else:
            value = base64.b64decode(record["base64"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise DfdbError(f"{where}: not a dfdb dump line ({type(exc).__name__}: {exc}): nothing restored") from None
    return Entry(table, id, topic, value, 0)


async def restore(nb: NbApi, dump: Dump, *, force: bool) -> int:
    """``dfdb restore``: load a dump written by ``dfdb dump`` and read by :func:`read_dump`.

    The whole file was read and checked first: a dump that is truncated, not UTF-8 or
    holds a bad line writes nothing. The writes themselves are batches, not one
    transaction: when they stop (an error, Ctrl-C), the message says how many objects
    were written, and ``--force`` runs the restore again over them.

    Raises:
        DfdbError: (without ``force``) the database holds objects of the dump's tables,
            or a write failed.
    """
    counts, entries = dump
    if not force:
        held = sorted(set(await stored_tables(nb)) & {t for t, n in counts.items() if n})
        if held:
            raise DfdbError(
                f"{nb.url} already holds objects of {', '.join(held)}: restore refuses to overwrite "
                "them (--force replaces the objects the dump holds and leaves the others)"
            )
    progress = Progress()
    done, per_table = 0, dict[str, int]()
    try:
        for batch in _batches(entries):
            done += await _restore_batch(nb, batch, force, counts, per_table, progress)
    except DfdbError as exc:
        raise DfdbError(f"{exc} ({_partial(done, len(entries), nb)})") from None
    except BaseException:  # Ctrl-C: say what is in the database, then stop as asked
        progress.end(1)
        print(f"dfdb: interrupted: {_partial(done, len(entries), nb)}", file=sys.stderr, flush=True)
        raise
    print(f"restored {done} objects of {sum(1 for n in counts.values() if n)} tables into {nb.url}", file=sys.stderr)
    return 0


def _batches(entries: list[Entry]) -> Iterator[list[Entry]]:
    """``entries`` in runs of one table, at most :data:`_BATCH` long."""
    start = 0
    for i in range(1, len(entries) + 1):
        if i == len(entries) or entries[i].table != entries[start].table or i - start >= _BATCH:
            yield entries[start:i]
            start = i


def _partial(done: int, total: int, nb: NbApi) -> str:
    return (
        f"restore stopped with at least {done} of {total} objects written: {nb.url} holds a partial restore; "
        "dfdb restore --force with the same dump completes it"
    )


Dump = tuple[dict[str, int], list[Entry]]
"""A dump read: its header's object count by table, and its entries in file order."""


def read_dump(path: str) -> Dump:
    """The dump at ``path`` (``-``: stdin), every line checked.

    Raises:
        DfdbError: the file is not a dfdb dump, or not a whole one.
    """
    name = "stdin" if path == "-" else path
    entries: list[Entry] = []
    try:
        with _open(path, "r", sys.stdin) as f:
            counts: dict[str, int] = _header(f.readline(), name)["tables"]
            for lineno, line in enumerate(f, 2):
                if not line.strip():
                    continue
                try:
                    record = load_json(line)
                except ValueError as exc:
                    raise DfdbError(f"{name}:{lineno}: not JSON ({exc}): nothing restored") from None
                entries.append(_entry(record, f"{name}:{lineno}"))
    except UnicodeDecodeError:  # text is decoded by the block: no line number to tell
        raise DfdbError(f"{name} is not a dfdb dump: not UTF-8 text; nothing restored") from None
    if len(entries) != sum(counts.values()):
        raise DfdbError(
            f"{name}: the header announces {sum(counts.values())} objects, the file holds {len(entries)} "
            "(a truncated dump?): nothing restored"
        )
    return counts, entries


def _header(line: str, name: str) -> dict[str, Any]:
    try:
        header = load_json(line)
    except ValueError:
        header = None
    if (
        not isinstance(header, dict)
        or header.get("format") != FORMAT
        or not isinstance(header.get("tables"), dict)
        or not all(isinstance(n, int) for n in header["tables"].values())
    ):
        raise DfdbError(f"{name} is not a dfdb dump (its first line is not a dfdb-dump header)")
    if header.get("version") != 1:
        raise DfdbError(f"{name}: dump format version {header.get('version')!r} is not known here (1 is)")
    return header


async def _restore_batch(
    nb: NbApi, entries: list[Entry], force: bool, counts: dict[str, int], done: dict[str, int], progress: Progress
) -> int:
    table = entries[0].table
    total = max(counts.get(table, 0), done.get(table, 0) + len(entries))
    existing = await _write(nb, table, entries, force, progress, done.get(table, 0), total)
    if existing:
        raise DfdbError(
            f"{existing} objects of {table} appeared while restoring: restore stopped (--force replaces them)"
        )
    done[table] = done.get(table, 0) + len(entries)
    return len(entries)
