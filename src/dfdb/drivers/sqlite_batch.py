"""A batch of puts in one SQLite transaction, in bulk: one read of the keys' current
rows, then the change-log rows and the entries each written by one ``executemany``.

The result is the same as applying the puts one by one in order (a key written twice in
the batch sees its first write): the revisions are the log's next ones, one per write
that passes its check, in the batch's order.
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from dfdb.drivers.base import PutRequest
from dfdb.drivers.sqlite_leases import check_expectation
from dfdb.errors import DfdbError

__all__ = ["put_batch"]

_KEYS_PER_SELECT = 500
"""Keys per ``IN (…)`` read (SQLite before 3.32 allows 999 parameters)."""


def put_batch(
    db: sqlite3.Connection, writes: Sequence[PutRequest], refused: Sequence[Exception | None]
) -> tuple[list[int | Exception], int]:
    """Apply ``writes`` inside the caller's write transaction (in the SQLite thread);
    ``refused[i]`` set: write ``i`` is reported as that error and not applied.

    Returns:
        For each write its revision or the error that refused it, and how many were applied.
    """
    done: list[int | Exception | None] = list(refused)
    for i, w in enumerate(writes):
        if done[i] is None:
            try:  # a key or topic that SQLite cannot store fails alone, as a single put would
                w.table.encode()
                w.id.encode()
                if w.topic is not None:
                    w.topic.encode()
            except UnicodeEncodeError as exc:
                done[i] = ValueError(f"not storable text (not UTF-8): {exc.object!r}")
    current = _current(db, [w for w, d in zip(writes, done, strict=True) if d is None])
    head = _head(db)
    now = time.time()
    log_rows: list[tuple[Any, ...]] = []
    entry_rows: list[tuple[Any, ...]] = []
    for i, w in enumerate(writes):
        if done[i] is not None:
            continue
        key = (w.table, w.id)
        old = current.get(key)
        try:
            check_expectation(w.table, w.id, w.topic, w.value, old, w.expect)
        except (DfdbError, ValueError) as exc:  # AlreadyExistsError, ConflictError, a topic …
            done[i] = exc
            continue
        head += 1
        log_rows.append((head, w.table, w.id, w.topic, "create" if old is None else "update", w.value, now))
        entry_rows.append((w.table, w.id, w.topic, w.value, head))
        current[key] = (w.topic if old is None else old[0], w.value, head)
        done[i] = head
    if log_rows:
        db.executemany(
            "INSERT INTO dfdb_changelog (revision, tbl, id, topic, action, value, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            log_rows,
        )
        db.executemany(
            "INSERT INTO dfdb_entries (tbl, id, topic, value, revision) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (tbl, id) DO UPDATE SET value = excluded.value, revision = excluded.revision",
            entry_rows,
        )
    return [d for d in done if d is not None], len(log_rows)


def _current(db: sqlite3.Connection, writes: Sequence[PutRequest]) -> dict[tuple[str, str], Any]:
    """(table, id) -> the stored row (topic, value, revision) of each key that has one."""
    ids: defaultdict[str, set[str]] = defaultdict(set)
    for w in writes:
        ids[w.table].add(w.id)
    rows: dict[tuple[str, str], Any] = {}
    for table, keys in ids.items():
        todo = sorted(keys)
        for start in range(0, len(todo), _KEYS_PER_SELECT):
            chunk = todo[start : start + _KEYS_PER_SELECT]
            for id, topic, value, revision in db.execute(
                "SELECT id, topic, value, revision FROM dfdb_entries "
                f"WHERE tbl = ? AND id IN ({', '.join('?' * len(chunk))})",
                (table, *chunk),
            ):
                rows[(table, id)] = (topic, value, revision)
    return rows


def _head(db: sqlite3.Connection) -> int:
    """The change log's last revision given out (explicit revisions keep counting from it)."""
    (head,) = db.execute(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'dfdb_changelog'), 0),"
        " coalesce((SELECT max(revision) FROM dfdb_changelog), 0))"
    ).fetchone()
    return int(head)
