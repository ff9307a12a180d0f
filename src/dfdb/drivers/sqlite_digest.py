"""The SQLite driver's digests: one aggregate query in one read transaction.

The bucket and hash functions of :mod:`dfdb.drivers.digest` are registered on the
connection, so SQLite groups the scope's rows by bucket itself and no value is read.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from dfdb.drivers.base import Entry
from dfdb.drivers.digest import MOD, Digest, KeyListing
from dfdb.errors import CorruptObjectError

if TYPE_CHECKING:
    from dfdb.drivers.sqlite import SqliteDriver

__all__ = ["SqliteDigest", "entries_of", "entry_of"]

log = logging.getLogger("dfdb.drivers.sqlite")


def entry_of(table: str, id: str, topic: str | None, value: bytes | str, revision: object) -> Entry:
    """An entry from a row (a row written by another tool may hold a text value).

    Raises:
        CorruptObjectError: its revision is not a number.
    """
    if not isinstance(revision, int):
        raise CorruptObjectError(table, id, f"malformed dfdb entry (revision {revision!r})")
    return Entry(table, id, topic, value.encode() if isinstance(value, str) else bytes(value), revision)


def entries_of(table: str, rows: list[Any]) -> list[Entry]:
    """The entries of listed rows ``(id as bytes, topic, value, revision)``; a row another
    program wrote whose id is not UTF-8 or whose revision is no number is logged and skipped."""
    entries: list[Entry] = []
    add = entries.append
    for raw_id, topic, value, revision in rows:
        if type(revision) is int and type(value) is bytes and type(raw_id) is bytes:  # as dfdb wrote it
            try:
                add(Entry(table, raw_id.decode(), topic, value, revision))
                continue
            except UnicodeDecodeError:
                pass  # reported below
        try:
            id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        except UnicodeDecodeError:
            log.warning("skipping corrupt object %s/%r: its id is not UTF-8", table, raw_id)
            continue
        try:
            entries.append(entry_of(table, id, topic, value, revision))
        except CorruptObjectError as exc:
            log.warning("skipping %s", exc)
    return entries


def _bucket(id: bytes, buckets: int) -> int:
    """:func:`bucket_of` over an id's bytes: the same for a UTF-8 id, and no error for a
    row another program wrote whose id is not UTF-8 text."""
    return int.from_bytes(hashlib.sha1(id).digest()[:4], "big") % buckets


def _hash(id: bytes, revision: object) -> int:
    """:func:`entry_hash` over an id's bytes (any revision: a garbled one only differs)."""
    return int.from_bytes(hashlib.sha1(id + f"\n{revision}".encode()).digest()[:4], "big")


def _scope_sql(table: str, topics: Collection[str | None] | None) -> tuple[str, list[Any]]:
    where, params = "tbl = ?", [table]
    if topics is not None:
        named = sorted(t for t in topics if t is not None)
        clauses = [f"topic IN ({', '.join('?' * len(named))})"] if named else []
        params += named
        if None in topics:
            clauses.append("topic IS NULL")
        where += f" AND ({' OR '.join(clauses) or '0'})"
    return where, params


def _read(db: sqlite3.Connection, sql: str, params: list[Any]) -> tuple[int, list[Any]]:
    """The log's head and the rows of ``sql``, in one read snapshot."""
    db.create_function("dfdb_bucket", 2, _bucket, deterministic=True)
    db.create_function("dfdb_hash", 2, _hash, deterministic=True)
    db.execute("BEGIN")
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'dfdb_changelog'").fetchone()
        return (int(row[0]) if row else 0), db.execute(sql, params).fetchall()
    finally:
        db.rollback()


class SqliteDigest:
    """:meth:`Driver.digest` and :meth:`Driver.digest_keys` for :class:`SqliteDriver`."""

    async def digest(self, table: str, topics: Collection[str | None] | None, buckets: int) -> Digest:
        where, params = _scope_sql(table, topics)
        sql = (
            f"SELECT dfdb_bucket(CAST(id AS BLOB), ?) AS b, count(*), sum(dfdb_hash(CAST(id AS BLOB), revision))"
            f" FROM dfdb_entries"
            f" WHERE {where} GROUP BY b"
        )
        driver: SqliteDriver = self  # type: ignore[assignment]
        head, rows = await driver._trip(lambda db, call: _read(db, sql, [buckets, *params]))
        return Digest({int(b): (int(c), int(h) % MOD) for b, c, h in rows}, head, bytes_read=24 * len(rows))

    async def digest_keys(
        self, table: str, topics: Collection[str | None] | None, buckets: int, wanted: Collection[int]
    ) -> KeyListing:
        where, params = _scope_sql(table, topics)
        chosen = sorted(wanted)
        sql = (
            f"SELECT CAST(id AS BLOB), revision FROM dfdb_entries WHERE {where}"
            f" AND dfdb_bucket(CAST(id AS BLOB), ?) IN ({', '.join('?' * len(chosen))})"
        )
        driver: SqliteDriver = self  # type: ignore[assignment]
        head, rows = await driver._trip(lambda db, call: _read(db, sql, [*params, buckets, *chosen]))
        keys = {}
        for id, revision in rows:
            try:  # a row another program wrote, not UTF-8 or with no revision number: no key of the scope
                if not isinstance(revision, int):
                    raise ValueError(f"revision {revision!r}")
                keys[id.decode()] = revision
            except (UnicodeDecodeError, ValueError) as exc:
                log.warning("%s: the digest skips %s/%r: not a dfdb entry (%s)", driver.url, table, id, exc)
        return KeyListing(keys, head, bytes_read=sum(len(r[0]) + 8 for r in rows))
