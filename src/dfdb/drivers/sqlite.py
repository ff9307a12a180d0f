"""``sqlite:///path/to/file.db``: embedded persistence with a change log.

Entries and a change log live in one SQLite file (WAL mode, a busy timeout). Every
write appends its change to the log in the same transaction; the log's
autoincrement key is the global revision. Compare-and-swap, create-if-absent,
conditional delete and unique-key allocation are atomic across every process that
shares the file.

Change streams read the log "after revision R" (:class:`ChangeLogPoller`): writes of
the same process wake watchers at once, other processes' writes are seen within
``poll_interval`` (default 0.1 s). Retention is bounded: ``log_size`` changes
(default 100,000) and, when set, ``log_age`` seconds; the highest discarded revision
is recorded in the same transaction as the trim, so a cursor below it yields
``resync``.

Options: ``poll_interval``, ``log_size``, ``log_age``, ``busy_timeout`` (seconds,
default 10).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any

import aiosqlite

from dfdb.drivers.base import (
    Capability,
    Driver,
    Entry,
    EventSource,
    Expect,
    Listing,
    PutRequest,
    RawEvent,
    check_delete,
    check_put,
)
from dfdb.drivers.polling import ChangeBatch, ChangeLogPoller
from dfdb.errors import (
    BackendUnavailableError,
    DfdbError,
    InvalidURL,
)
from dfdb.url import DatabaseURL

__all__ = ["SqliteDriver"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS dfdb_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dfdb_entries (
    tbl TEXT NOT NULL, id TEXT NOT NULL, topic TEXT, value BLOB NOT NULL, revision INTEGER NOT NULL,
    PRIMARY KEY (tbl, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dfdb_entries_topic ON dfdb_entries (tbl, topic);
CREATE TABLE IF NOT EXISTS dfdb_changelog (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL, id TEXT NOT NULL, topic TEXT, action TEXT NOT NULL, value BLOB, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dfdb_counters (tbl TEXT PRIMARY KEY, next INTEGER NOT NULL) WITHOUT ROWID;
"""

_CHANGES_LIMIT = 1000
_TRIM_EVERY = 256
_BATCH = 500  # writes per transaction in put_many

# Watchers of each file in this process, woken by this process's writes.
_WAITERS: defaultdict[str, set[asyncio.Event]] = defaultdict(set)


class SqliteDriver(Driver):
    """The SQLite driver; see the module documentation."""

    capabilities = Capability.CHANGE_LOG | Capability.ORDERED | Capability.TOPIC_FILTER

    def __init__(self, url: DatabaseURL) -> None:
        super().__init__(url)
        if url.hosts:
            raise InvalidURL(f"sqlite:// takes a path after three slashes (sqlite:///file.db), not a host: {url}")
        if not url.path:
            raise InvalidURL("sqlite:// needs a file path: sqlite:///path/to/file.db")
        unknown = set(url.options) - {"poll_interval", "log_size", "log_age", "busy_timeout"}
        if unknown:
            raise InvalidURL(f"unknown sqlite:// option(s): {', '.join(sorted(unknown))}")
        self.path = url.path
        self.poll_interval = url.float_option("poll_interval", 0.1)
        if self.poll_interval <= 0:
            raise InvalidURL("poll_interval must be positive")
        self.log_size = url.int_option("log_size", 100_000, minimum=1)
        self.log_age = url.float_option("log_age", 0.0)
        self.busy_timeout = url.float_option("busy_timeout", 10.0)
        self._key = os.path.realpath(self.path) if self.path != ":memory:" else f":memory:{id(self)}"
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._writes = 0
        self._identity = ""

    # ------------------------------------------------------------ connection
    async def open(self) -> None:
        await super().open()
        if self._db is not None:
            return
        try:
            # Probe first: when aiosqlite fails to connect, its worker thread may report
            # the failure to a loop that is gone. Opening a local file takes microseconds.
            sqlite3.connect(self.path).close()
            db = await aiosqlite.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
        except (sqlite3.Error, OSError) as exc:
            raise BackendUnavailableError(f"cannot open {self.url}: {exc}") from None
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.executescript(SCHEMA)
            await db.execute(
                "INSERT INTO dfdb_meta (key, value) VALUES ('identity', ?) ON CONFLICT (key) DO NOTHING",
                (f"sqlite-{uuid.uuid4().hex[:16]}",),
            )
            await db.execute("INSERT INTO dfdb_meta (key, value) VALUES ('trimmed', '0') ON CONFLICT (key) DO NOTHING")
            async with db.execute("SELECT value FROM dfdb_meta WHERE key = 'identity'") as cur:
                row = await cur.fetchone()
        except sqlite3.Error as exc:
            await db.close()
            raise BackendUnavailableError(f"cannot use {self.url}: {exc}") from None
        assert row is not None
        self._identity = str(row[0])
        self._db = db

    async def _release(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    def _conn(self) -> aiosqlite.Connection:
        self._check_open()
        if self._db is None:
            raise RuntimeError("the driver is not open; use 'async with' or 'await open()'")
        return self._db

    @contextlib.asynccontextmanager
    async def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> AsyncIterator[aiosqlite.Connection]:
        """One transaction under the driver's lock; SQLite errors become ``BackendUnavailableError``."""
        db = self._conn()
        async with self._lock:
            try:
                await db.execute(begin)
                try:
                    yield db
                    await db.execute("COMMIT")
                except BaseException:
                    await db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _unavailable(self.url, exc) from None

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._conn().execute_fetchall(sql, params)  # one trip to the SQLite thread
        return next(iter(rows), None)

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self._conn().execute_fetchall(sql, params))

    def _wake(self) -> None:
        for waiter in _WAITERS.get(self._key, ()):
            waiter.set()

    # ------------------------------------------------------------ contract
    async def identity(self) -> str:
        self._conn()
        return self._identity

    async def get(self, table: str, id: str) -> Entry | None:
        try:
            row = await self._fetchone(
                "SELECT topic, value, revision FROM dfdb_entries WHERE tbl = ? AND id = ?", (table, id)
            )
        except sqlite3.Error as exc:
            raise _unavailable(self.url, exc) from None
        return None if row is None else Entry(table, id, row[0], _blob(row[1]), row[2])

    async def _write(self, table: str, id: str, topic: str | None, value: bytes | None, expect: Expect | None) -> Entry:
        """One write transaction: check ``expect``, log the change, apply it. ``value`` None deletes."""
        async with self._transaction() as db:
            entry = await self._apply(db, table, id, topic, value, expect)
        self._wake()
        return entry

    async def put_many(self, writes: Sequence[PutRequest]) -> builtins.list[int | Exception]:
        """The writes in transactions of up to ``_BATCH``; a write whose expectation fails
        is reported in its place and the others go on."""
        results: builtins.list[int | Exception] = []
        for start in range(0, len(writes), _BATCH):
            async with self._transaction() as db:
                for w in writes[start : start + _BATCH]:
                    try:
                        results.append((await self._apply(db, w.table, w.id, w.topic, w.value, w.expect)).revision)
                    except DfdbError as exc:  # AlreadyExistsError, ConflictError, NotFoundError
                        results.append(exc)
            self._wake()
        return results

    async def _apply(
        self, db: Any, table: str, id: str, topic: str | None, value: bytes | None, expect: Expect | None
    ) -> Entry:
        """One write inside the caller's transaction."""
        old = await self._fetchone(
            "SELECT topic, value, revision FROM dfdb_entries WHERE tbl = ? AND id = ?", (table, id)
        )
        _check_expectation(table, id, topic, value, old, expect)
        if value is None:
            action, logged, topic = "delete", _blob(old[1]), old[0]
        else:
            action, logged = ("create" if old is None else "update"), value
        inserted = await db.execute_insert(
            "INSERT INTO dfdb_changelog (tbl, id, topic, action, value, at) VALUES (?, ?, ?, ?, ?, ?)",
            (table, id, topic, action, logged, time.time()),
        )
        assert inserted is not None
        revision = int(inserted[0])
        if value is None:
            await db.execute("DELETE FROM dfdb_entries WHERE tbl = ? AND id = ?", (table, id))
        else:
            await db.execute(
                "INSERT INTO dfdb_entries (tbl, id, topic, value, revision) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (tbl, id) DO UPDATE SET value = excluded.value, revision = excluded.revision",
                (table, id, topic, value, revision),
            )
        self._writes += 1
        if self._writes % _TRIM_EVERY == 0:
            await self._trim(revision)
        return Entry(table, id, topic, logged, revision)

    async def _trim(self, head: int, *, everything: bool = False) -> None:
        """Discard old log rows; record the highest discarded revision. Inside a write transaction."""
        limit = head if everything else head - self.log_size
        if self.log_age > 0 and not everything:
            row = await self._fetchone(
                "SELECT max(revision) FROM dfdb_changelog WHERE at < ?", (time.time() - self.log_age,)
            )
            if row and row[0] is not None:
                limit = max(limit, row[0])
        if limit <= 0:
            return
        await self._conn().execute("DELETE FROM dfdb_changelog WHERE revision <= ?", (limit,))
        await self._conn().execute(
            "UPDATE dfdb_meta SET value = CAST(max(CAST(value AS INTEGER), ?) AS TEXT) WHERE key = 'trimmed'",
            (limit,),
        )

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        return (await self._write(table, id, topic, value, expect)).revision

    async def delete(self, table: str, id: str, expect: int | None = None) -> Entry:
        return await self._write(table, id, None, None, expect)

    async def _head(self) -> int:
        row = await self._fetchone("SELECT seq FROM sqlite_sequence WHERE name = 'dfdb_changelog'")
        return int(row[0]) if row else 0

    async def list(self, table: str, topic: str | None = None) -> Listing:
        async with self._transaction("BEGIN"):  # one read snapshot for the head and the rows
            head = await self._head()
            if topic is None:
                rows = await self._fetchall(
                    "SELECT id, topic, value, revision FROM dfdb_entries WHERE tbl = ?", (table,)
                )
            else:
                rows = await self._fetchall(
                    "SELECT id, topic, value, revision FROM dfdb_entries WHERE tbl = ? AND topic = ?", (table, topic)
                )
        return Listing([Entry(table, r[0], r[1], _blob(r[2]), r[3]) for r in rows], head)

    async def tables(self) -> builtins.list[str]:
        return [r[0] for r in await self._fetchall("SELECT DISTINCT tbl FROM dfdb_entries ORDER BY tbl")]

    def changes_sql(
        self, tables: Collection[str], topics: Collection[str | None] | None
    ) -> tuple[str, builtins.list[Any]]:
        """The query for "changes after revision ?" of ``tables`` and ``topics`` (for tests and tools).

        One statement, so one snapshot: the matching log rows, then one row (revision 0)
        carrying the log's head and trim point.
        """
        params: builtins.list[Any] = []
        where = "revision > ?"
        where += f" AND tbl IN ({', '.join('?' * len(tables))})"
        params.extend(sorted(tables))
        if topics is not None:
            named = sorted(t for t in topics if t is not None)
            clauses = []
            if named:
                clauses.append(f"topic IN ({', '.join('?' * len(named))})")
                params.extend(named)
            if None in topics:
                clauses.append("topic IS NULL")
            where += f" AND ({' OR '.join(clauses) or '0'})"
        sql = (
            "SELECT * FROM (SELECT revision, tbl, id, topic, action, value FROM dfdb_changelog "
            f"WHERE {where} ORDER BY revision LIMIT {_CHANGES_LIMIT}) "
            "UNION ALL SELECT 0, NULL, (SELECT seq FROM sqlite_sequence WHERE name = 'dfdb_changelog'), "
            "(SELECT value FROM dfdb_meta WHERE key = 'trimmed'), NULL, NULL"
        )
        return sql, params

    async def changes_after(
        self, revision: int, tables: Collection[str], topics: Collection[str | None] | None
    ) -> ChangeBatch:
        """The logged changes after ``revision`` (at most 1,000), with the log's trim point."""
        sql, params = self.changes_sql(tables, topics)
        db = self._conn()
        try:
            async with self._lock:  # never inside another coroutine's open write transaction
                rows = list(await db.execute_fetchall(sql, [revision, *params]))
        except sqlite3.Error as exc:
            raise _unavailable(self.url, exc) from None
        meta = rows.pop()
        head, trimmed = int(meta[2] or 0), int(meta[3] or 0)
        if len(rows) == _CHANGES_LIMIT:
            head = rows[-1][0]
        events = [RawEvent(r[4], r[1], r[2], r[3], None if r[5] is None else _blob(r[5]), r[0]) for r in rows]
        return ChangeBatch(events, head, trimmed)

    async def watch(
        self,
        tables: Collection[str],
        topics: Collection[str | None] | None = None,
        since: int | None = None,
    ) -> EventSource:
        if since is None:
            try:
                since = await self._head()
            except sqlite3.Error as exc:
                raise _unavailable(self.url, exc) from None
        table_set, topic_set = frozenset(tables), None if topics is None else frozenset(topics)

        async def read(position: int, topics: frozenset[str | None] | None) -> ChangeBatch:
            return await self.changes_after(position, table_set, topics)

        return self._track(
            ChangeLogPoller(read, since, topics=topic_set, interval=self.poll_interval, waiters=_WAITERS[self._key])
        )

    async def allocate_unique_key(self, table: str) -> int:
        async with self._lock:
            try:
                row = await self._fetchone(
                    "INSERT INTO dfdb_counters (tbl, next) VALUES (?, 1) "
                    "ON CONFLICT (tbl) DO UPDATE SET next = next + 1 RETURNING next",
                    (table,),
                )
            except sqlite3.Error as exc:
                raise _unavailable(self.url, exc) from None
        return int(row[0])

    async def compact(self) -> None:
        async with self._transaction():
            await self._trim(await self._head(), everything=True)


def _check_expectation(
    table: str, id: str, topic: str | None, value: bytes | None, old: Any, expect: Expect | None
) -> None:
    """``old`` is the row (topic, value, revision) or ``None``; ``value`` ``None`` is a delete."""
    if value is None:
        check_delete(table, id, None if old is None else old[2], expect if isinstance(expect, int) else None)
    else:
        assert expect is not None
        check_put(table, id, topic, None if old is None else (old[0], old[2]), expect)


def _blob(value: bytes | str) -> bytes:
    """A stored value as bytes (a row written by another tool may hold text)."""
    return value.encode() if isinstance(value, str) else bytes(value)


def _unavailable(url: DatabaseURL, exc: sqlite3.Error) -> BackendUnavailableError:
    return BackendUnavailableError(f"{url}: {exc}")
