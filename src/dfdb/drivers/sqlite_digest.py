"""The SQLite driver's digests: one aggregate query in one read transaction.

The bucket and hash functions of :mod:`dfdb.drivers.digest` are registered on the
connection, so SQLite groups the scope's rows by bucket itself and no value is read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from dfdb.drivers.digest import MOD, Digest, KeyListing, bucket_of, entry_hash

if TYPE_CHECKING:
    from dfdb.drivers.sqlite import SqliteDriver

__all__ = ["SqliteDigest"]


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
    db.create_function("dfdb_bucket", 2, bucket_of, deterministic=True)
    db.create_function("dfdb_hash", 2, entry_hash, deterministic=True)
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
            f"SELECT dfdb_bucket(id, ?) AS b, count(*), sum(dfdb_hash(id, revision)) FROM dfdb_entries"
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
            f"SELECT id, revision FROM dfdb_entries WHERE {where}"
            f" AND dfdb_bucket(id, ?) IN ({', '.join('?' * len(chosen))})"
        )
        driver: SqliteDriver = self  # type: ignore[assignment]
        head, rows = await driver._trip(lambda db, call: _read(db, sql, [*params, buckets, *chosen]))
        return KeyListing({r[0]: int(r[1]) for r in rows}, head, bytes_read=sum(len(r[0]) + 8 for r in rows))
