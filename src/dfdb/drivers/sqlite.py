"""``sqlite:///path/to/file.db``: embedded persistence with a change log.

Entries and a change log live in one SQLite file (WAL mode). Every write appends its change to the log in the
same transaction; the log's autoincrement key is the global revision. Compare-and-swap, create-if-absent,
conditional delete and unique-key allocation are atomic across every process that shares the file.

All SQLite work runs on one connection in a worker thread, one call at a time (``anyio.to_thread.run_sync``
with a limiter of one): each operation — a write with its check, log append and trim, a whole ``put_many``, a
listing — is one function run in one trip to the thread, committed or rolled back before it returns. So the
driver runs under asyncio and trio alike, and a cancelled call never leaves the connection inside a
transaction: a cancelled write happened once or not at all. While another process holds the write lock the
call waits, at most ``busy_timeout`` seconds and never past its deadline, then raises ``LockedError``
(a ``BackendTimeoutError``: nothing was written).

Change streams read the log "after revision R" (:class:`ChangeLogPoller`): writes of the same process wake
watchers at once, other processes' writes are seen within ``poll_interval`` (default 0.1 s). Retention is
bounded: ``log_size`` changes (default 100,000) and, when set, ``log_age`` seconds; the highest discarded
revision is recorded in the same transaction as the trim, so a cursor below it yields ``resync``. A log row
the driver cannot read (written by another tool) is logged, counted in :attr:`SqliteDriver.malformed_records`
and announced as a ``resync`` of its table; the stream goes on after it. Values are limited to
:attr:`SqliteDriver.max_value_size` (16 MiB).

Options: ``poll_interval``, ``log_size``, ``log_age``, ``busy_timeout`` (seconds, default 10).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import anyio
import anyio.to_thread

from dfdb._collector import collector_paused
from dfdb.drivers.base import (
    Capability,
    Driver,
    Entry,
    EventSource,
    Expect,
    Listing,
    PutRequest,
    RawEvent,
)
from dfdb.drivers.polling import ChangeBatch, ChangeLogPoller
from dfdb.drivers.sqlite_batch import put_batch
from dfdb.drivers.sqlite_digest import SqliteDigest, entries_of, entry_of
from dfdb.drivers.sqlite_leases import LEASE_SCHEMA, SqliteLeases, check_expectation
from dfdb.errors import (
    BackendUnavailableError,
    ConfigurationError,
    DfdbError,
    InvalidURL,
    LockedError,
    StreamClosedError,
)
from dfdb.url import MAX_POLL_INTERVAL, DatabaseURL

__all__ = ["SqliteDriver"]

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dfdb_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS dfdb_entries ("
    " tbl TEXT NOT NULL, id TEXT NOT NULL, topic TEXT, value BLOB NOT NULL, revision INTEGER NOT NULL,"
    " PRIMARY KEY (tbl, id)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS dfdb_entries_topic ON dfdb_entries (tbl, topic)",
    "CREATE TABLE IF NOT EXISTS dfdb_changelog ("
    " revision INTEGER PRIMARY KEY AUTOINCREMENT,"
    " tbl TEXT NOT NULL, id TEXT NOT NULL, topic TEXT, action TEXT NOT NULL, value BLOB, at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dfdb_counters (tbl TEXT PRIMARY KEY, next INTEGER NOT NULL) WITHOUT ROWID",
    *LEASE_SCHEMA,
)

_CHANGES_LIMIT = 1000
_TRIM_EVERY = 256
_MAX_LOG_AGE = 366 * 86_400.0  # a year: a change log kept longer is a mistake, not retention
_LOCK_SLICE = 0.02
"""Seconds SQLite itself waits on another connection's lock before the driver checks
the call's deadline and whether the caller is still waiting."""
_NOT_OPEN = "the driver is not open; use 'async with' or 'await open()'"
_ACTIONS = frozenset({"create", "update", "delete"})
_PERMANENT = frozenset(
    {sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH}
)
"""Error codes that retrying cannot fix: the URL names a file that cannot be used."""

# Watchers of each file in this process, woken by this process's writes.
_WAITERS: defaultdict[str, set[anyio.Event]] = defaultdict(set)


@dataclass(frozen=True, slots=True)
class _Call:
    """One trip to the SQLite thread: when to give up waiting on a lock, and whether
    the caller stopped waiting for the answer (it was cancelled)."""

    deadline: float
    """``time.monotonic()`` value."""
    abandoned: threading.Event = field(default_factory=threading.Event)


class SqliteDriver(SqliteDigest, SqliteLeases, Driver):
    """The SQLite driver; see the module documentation."""

    capabilities = Capability.CHANGE_LOG | Capability.ORDERED | Capability.TOPIC_FILTER | Capability.LEASES
    max_value_size: ClassVar[int | None] = 16 * 1024 * 1024
    """The largest value a put takes, in bytes. SQLite itself allows up to
    SQLITE_MAX_LENGTH (1,000,000,000 by default), but a value is copied several times
    on its way (the entry, the change log row, every watcher's read), every write holds
    the file's single write lock while it is copied in, and the other backends refuse
    far less (ZooKeeper ~1 MB, etcd 1.5 MB). 16 MiB keeps one write well under a second
    and a change-log read of 1,000 rows within memory."""

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
        self.poll_interval = url.float_option("poll_interval", 0.1, maximum=MAX_POLL_INTERVAL, positive=True)
        self.log_size = url.int_option("log_size", 100_000, minimum=1)
        self.log_age = url.float_option("log_age", 0.0, maximum=_MAX_LOG_AGE)  # 0: no age limit
        self.busy_timeout = url.float_option("busy_timeout", 10.0)
        self._key = os.path.realpath(self.path) if self.path != ":memory:" else f":memory:{id(self)}"
        self._db: sqlite3.Connection | None = None
        self._limiter: anyio.CapacityLimiter | None = None  # made in open(): it belongs to the event loop
        self._mutex = threading.Lock()  # held by the thread while it uses the connection
        self._writes = 0
        self._identity = ""
        self.malformed_records = 0
        """Change-log rows this driver could not read (each announced as a ``resync``)."""

    # ------------------------------------------------------------ the SQLite thread
    async def _trip(self, fn: Callable[[sqlite3.Connection, _Call], T]) -> T:
        """Run ``fn(connection, call)`` in the SQLite thread, one call at a time.

        A cancelled caller marks the call abandoned: the thread gives up waiting on a
        lock and rolls back a transaction that has not committed yet.
        """
        self._check_open()
        return await self._to_thread(functools.partial(self._in_thread, fn))

    async def _to_thread(self, fn: Callable[[_Call], T]) -> T:
        if self._limiter is None:
            raise RuntimeError(_NOT_OPEN)
        call = _Call(self._deadline())
        try:
            return await anyio.to_thread.run_sync(fn, call, limiter=self._limiter)
        except BaseException:
            call.abandoned.set()
            raise

    def _deadline(self) -> float:
        remaining = self.busy_timeout
        deadline = anyio.current_effective_deadline()
        if deadline != math.inf:
            remaining = min(remaining, deadline - anyio.current_time())
        return time.monotonic() + max(remaining, 0.0)

    def _in_thread(self, fn: Callable[[sqlite3.Connection, _Call], T], call: _Call) -> T:
        """``fn`` on the connection (in the SQLite thread)."""
        with self._mutex:
            db = self._db
            if db is None:
                if self._closed:
                    raise StreamClosedError(f"the {self.url.scheme} driver is closed")
                raise RuntimeError(_NOT_OPEN)
            return self._until_deadline(lambda: fn(db, call), db, call)

    def _until_deadline(self, attempt: Callable[[], T], db: sqlite3.Connection, call: _Call) -> T:
        """``attempt()``, again while another connection holds a lock, until the call's
        deadline or until the caller is gone. SQLite errors become dfdb's."""
        started = time.monotonic()
        while True:
            if db.in_transaction:  # never carry a transaction from one call to the next
                db.rollback()
            try:
                return attempt()
            except UnicodeEncodeError as exc:  # a key or topic with a lone surrogate
                raise ValueError(f"not storable text (not UTF-8): {exc.object!r}") from None
            except sqlite3.Error as exc:
                if not _busy(exc):
                    raise _mapped(self.url, exc) from None
                if call.abandoned.is_set() or time.monotonic() >= call.deadline:
                    raise LockedError(
                        f"{self.url}: the database is locked by another connection "
                        f"(waited {time.monotonic() - started:.1f}s)"
                    ) from None

    # ------------------------------------------------------------ connection
    async def open(self) -> None:
        await super().open()
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        if self._db is None:
            await self._to_thread(self._connect)

    def _connect(self, call: _Call) -> None:
        """Open and set up the connection (in the SQLite thread); the driver owns it
        from here on, even when the caller was cancelled meanwhile."""
        with self._mutex:
            if self._db is not None or self._closed:
                return
            if self.path != ":memory:":
                directory = os.path.dirname(os.path.abspath(self.path))
                if not os.path.isdir(directory):
                    raise ConfigurationError(f"cannot open {self.url}: directory {directory} does not exist")
            try:
                db = sqlite3.connect(self.path, timeout=_LOCK_SLICE, isolation_level=None, check_same_thread=False)
            except sqlite3.Error as exc:
                raise _mapped(self.url, exc, "cannot open") from None
            try:
                self._identity = self._until_deadline(lambda: _set_up(db, call), db, call)
            except BaseException:
                db.close()
                raise
            self._db = db
        log.debug("opened %s (identity %s)", self.url, self._identity)

    async def _release(self) -> None:
        if self._limiter is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self._close, limiter=self._limiter)
            except BaseException:
                # The wait was cancelled from outside the shield: close as soon as the
                # connection is free, in a thread of its own that ends then.
                threading.Thread(target=self._close, name="dfdb-sqlite-close").start()
                raise

    def _close(self) -> None:
        with self._mutex:
            db, self._db = self._db, None
            if db is not None:
                db.close()

    def _wake(self) -> None:
        for waiter in _WAITERS.get(self._key, ()):
            waiter.set()

    # ------------------------------------------------------------ contract
    async def identity(self) -> str:
        self._check_open()
        if self._db is None:
            raise RuntimeError(_NOT_OPEN)
        return self._identity

    async def get(self, table: str, id: str) -> Entry | None:
        row = await self._trip(
            lambda db, _: db.execute(
                "SELECT topic, value, revision FROM dfdb_entries WHERE tbl = ? AND id = ?", (table, id)
            ).fetchone()
        )
        return None if row is None else entry_of(table, id, row[0], row[1], row[2])

    def _check_size(self, table: str, id: str, value: bytes) -> None:
        limit = self.max_value_size
        if limit is not None and len(value) > limit:
            raise ValueError(
                f"{table}/{id}: a value of {len(value):,} bytes is over the sqlite:// limit of {limit:,} bytes"
            )

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        self._check_size(table, id, value)
        return (await self._write(table, id, topic, value, expect)).revision

    async def delete(self, table: str, id: str, expect: int | None = None) -> Entry:
        return await self._write(table, id, None, None, expect)

    async def _write(self, table: str, id: str, topic: str | None, value: bytes | None, expect: Expect | None) -> Entry:
        """One write transaction: check ``expect``, log the change, apply it. ``value`` None deletes."""

        def write(db: sqlite3.Connection, call: _Call) -> Entry:
            with _transaction(db, call):
                return self._apply(db, table, id, topic, value, expect)

        entry = await self._trip(write)
        self._wake()
        return entry

    async def put_many(self, writes: Sequence[PutRequest]) -> builtins.list[int | Exception]:
        """The writes in one transaction, in one trip to the SQLite thread; a write whose
        expectation fails is reported in its place and the others go on."""
        results: builtins.list[Exception | None] = [None] * len(writes)
        for i, w in enumerate(writes):
            try:
                self._check_size(w.table, w.id, w.value)
            except ValueError as exc:
                results[i] = exc

        def write_all(db: sqlite3.Connection, call: _Call) -> builtins.list[int | Exception]:
            with _transaction(db, call):
                done, applied = put_batch(db, writes, results)
                if applied:
                    before, self._writes = self._writes, self._writes + applied
                    if before // _TRIM_EVERY != self._writes // _TRIM_EVERY:
                        self._trim(db, max(r for r in done if isinstance(r, int)))
            return done

        outcomes = await self._trip(write_all)
        self._wake()
        return outcomes

    def _apply(
        self, db: sqlite3.Connection, table: str, id: str, topic: str | None, value: bytes | None, expect: Expect | None
    ) -> Entry:
        """One write inside the caller's transaction (in the SQLite thread)."""
        old = db.execute(
            "SELECT topic, value, revision FROM dfdb_entries WHERE tbl = ? AND id = ?", (table, id)
        ).fetchone()
        check_expectation(table, id, topic, value, old, expect)
        if value is None:
            action, logged, topic = "delete", _blob(old[1]), old[0]
        else:
            action, logged = ("create" if old is None else "update"), value
        cur = db.execute(
            "INSERT INTO dfdb_changelog (tbl, id, topic, action, value, at) VALUES (?, ?, ?, ?, ?, ?)",
            (table, id, topic, action, logged, time.time()),
        )
        revision = cur.lastrowid
        assert revision is not None
        if value is None:
            db.execute("DELETE FROM dfdb_entries WHERE tbl = ? AND id = ?", (table, id))
        else:
            db.execute(
                "INSERT INTO dfdb_entries (tbl, id, topic, value, revision) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (tbl, id) DO UPDATE SET value = excluded.value, revision = excluded.revision",
                (table, id, topic, value, revision),
            )
        self._writes += 1
        if self._writes % _TRIM_EVERY == 0:
            self._trim(db, revision)
        return Entry(table, id, topic, logged, revision)

    def _trim(self, db: sqlite3.Connection, head: int, *, everything: bool = False) -> None:
        """Discard old log rows; record the highest discarded revision. Inside a write transaction."""
        limit = head if everything else head - self.log_size
        if self.log_age > 0 and not everything:
            row = db.execute(
                "SELECT max(revision) FROM dfdb_changelog WHERE at < ?", (time.time() - self.log_age,)
            ).fetchone()
            if row and row[0] is not None:
                limit = max(limit, row[0])
        if limit <= 0:
            return
        db.execute("DELETE FROM dfdb_changelog WHERE revision <= ?", (limit,))
        db.execute(
            "UPDATE dfdb_meta SET value = CAST(max(CAST(value AS INTEGER), ?) AS TEXT) WHERE key = 'trimmed'",
            (limit,),
        )

    async def list(self, table: str, topic: str | None = None) -> Listing:
        def read(db: sqlite3.Connection, call: _Call) -> tuple[int, builtins.list[Any]]:
            with _transaction(db, call, "BEGIN"):  # one read snapshot for the head and the rows
                head = _head(db)
                sql = "SELECT CAST(id AS BLOB), topic, value, revision FROM dfdb_entries WHERE tbl = ?"
                params = (table,) if topic is None else (table, topic)
                with collector_paused():  # a row per entry, all kept (see dfdb._collector)
                    rows = db.execute(sql if topic is None else sql + " AND topic = ?", params).fetchall()
            return head, rows

        head, rows = await self._trip(read)
        with collector_paused():
            return Listing(entries_of(table, rows), head)

    async def tables(self) -> builtins.list[str]:
        sql = "SELECT DISTINCT tbl FROM dfdb_entries ORDER BY tbl"
        return [r[0] for r in await self._trip(lambda db, call: db.execute(sql).fetchall())]

    def changes_sql(
        self, tables: Collection[str], topics: Collection[str | None] | None
    ) -> tuple[str, builtins.list[Any]]:
        """The query for "changes after revision ?" of ``tables`` and ``topics`` (for tests and tools).

        One statement, so one snapshot: the matching log rows (text columns as bytes,
        so that a row another tool wrote badly can be reported, not fail the read), then
        one row (revision 0) carrying the log's head, its trim point and the earliest
        lease deadline (``NULL`` without leases: a watcher reaps only when one is due).
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
            "SELECT * FROM (SELECT revision, CAST(tbl AS BLOB), CAST(id AS BLOB), CAST(topic AS BLOB), "
            "CAST(action AS BLOB), CAST(value AS BLOB) FROM dfdb_changelog "
            f"WHERE {where} ORDER BY revision LIMIT {_CHANGES_LIMIT}) "
            "UNION ALL SELECT 0, NULL, (SELECT seq FROM sqlite_sequence WHERE name = 'dfdb_changelog'), "
            "(SELECT value FROM dfdb_meta WHERE key = 'trimmed'), NULL, (SELECT MIN(deadline) FROM dfdb_leases)"
        )
        return sql, params

    async def changes_after(
        self, revision: int, tables: Collection[str], topics: Collection[str | None] | None
    ) -> ChangeBatch:
        """The logged changes after ``revision`` (at most 1,000), with the log's trim point.

        A row that cannot be read becomes a ``resync`` of its table at its revision.
        """
        sql, params = self.changes_sql(tables, topics)
        rows = await self._trip(lambda db, _: db.execute(sql, [revision, *params]).fetchall())
        meta = rows.pop()
        head, trimmed = int(meta[2] or 0), int(meta[3] or 0)
        self._lease_due = meta[5] is not None and float(meta[5]) < time.time()
        if len(rows) == _CHANGES_LIMIT:
            head = rows[-1][0]
        return ChangeBatch([self._event_of(row) for row in rows], head, trimmed)

    def _event_of(self, row: Any) -> RawEvent:
        revision, table, id, topic, action, value = row
        try:
            expired = _text(action) == "expire"  # a lease's object, deleted when the lease ended
            action = b"delete" if expired else action
            event = RawEvent(_text(action), _text(table), _text(id), _text(topic, None), value, revision, None, expired)
            if event.action not in _ACTIONS or not event.id or (value is None and event.action != "delete"):
                raise ValueError(f"not a change: action {event.action!r}" + (", no value" if value is None else ""))
        except ValueError as exc:
            self.malformed_records += 1
            name, key = (x.decode(errors="backslashreplace") if isinstance(x, bytes) else x for x in (table, id))
            scope = _text(table) if _readable(table) else None  # a table name that is not text: everything
            log.warning(
                "%s: unreadable change-log row at revision %d (table %r, key %r): %s; announcing a resync of %s",
                self.url,
                revision,
                name,
                key,
                exc,
                "everything watched" if scope is None else repr(scope),
            )
            return RawEvent("resync", scope, "", None, None, revision)
        return event

    async def watch(
        self,
        tables: Collection[str],
        topics: Collection[str | None] | None = None,
        since: int | None = None,
    ) -> EventSource:
        if since is None:
            since = await self._trip(lambda db, _: _head(db))
        table_set, topic_set = frozenset(tables), None if topics is None else frozenset(topics)

        async def read(position: int, topics: frozenset[str | None] | None) -> ChangeBatch:
            batch = await self.changes_after(position, table_set, topics)
            if self._lease_due:  # every watching connection reaps the leases that are due
                await self.reap()  # (their deletes wake every watcher of this process)
            return batch

        return self._track(
            ChangeLogPoller(read, since, topics=topic_set, interval=self.poll_interval, waiters=_WAITERS[self._key])
        )

    async def allocate_unique_key(self, table: str) -> int:
        def allocate(db: sqlite3.Connection, call: _Call) -> int:
            with _transaction(db, call):
                row = db.execute(
                    "INSERT INTO dfdb_counters (tbl, next) VALUES (?, 1) "
                    "ON CONFLICT (tbl) DO UPDATE SET next = next + 1 RETURNING next",
                    (table,),
                ).fetchall()[0]
            return int(row[0])

        return await self._trip(allocate)

    async def compact(self) -> None:
        def compact(db: sqlite3.Connection, call: _Call) -> None:
            with _transaction(db, call):
                self._trim(db, _head(db), everything=True)

        await self._trip(compact)


# ---------------------------------------------------------------- in the SQLite thread
@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, call: _Call, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """One transaction, committed when the body returns, rolled back when it raises.
    A call whose caller is gone commits nothing new."""
    db.execute(begin)
    try:
        if call.abandoned.is_set():
            raise LockedError("the call was cancelled before it could take the lock")
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.rollback()
        raise


def _set_up(db: sqlite3.Connection, call: _Call) -> str:
    """Make the file a dfdb database (when it is not yet); return its identity.

    Writes only to a file that is not set up, so a file that is locked by another
    writer still opens.
    """
    db.execute("PRAGMA synchronous = NORMAL")
    if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        db.execute("PRAGMA journal_mode = WAL")
    (objects,) = db.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'dfdb_%'").fetchone()
    if objects >= len(SCHEMA):
        meta = dict(db.execute("SELECT key, value FROM dfdb_meta WHERE key IN ('identity', 'trimmed')").fetchall())
        if len(meta) == 2:
            return str(meta["identity"])
    with _transaction(db, call):
        for statement in SCHEMA:
            db.execute(statement)
        db.execute(
            "INSERT INTO dfdb_meta (key, value) VALUES ('identity', ?) ON CONFLICT (key) DO NOTHING",
            (f"sqlite-{uuid.uuid4().hex[:16]}",),
        )
        db.execute("INSERT INTO dfdb_meta (key, value) VALUES ('trimmed', '0') ON CONFLICT (key) DO NOTHING")
        identity = db.execute("SELECT value FROM dfdb_meta WHERE key = 'identity'").fetchone()[0]
    return str(identity)


def _head(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'dfdb_changelog'").fetchone()
    return int(row[0]) if row else 0


# ---------------------------------------------------------------- helpers
def _blob(value: bytes | str) -> bytes:
    """A stored value as bytes (a row written by another tool may hold text)."""
    return value.encode() if isinstance(value, str) else bytes(value)


_MISSING = object()


def _text(raw: bytes | None, default: Any = _MISSING) -> Any:
    """A text column read as bytes, decoded; ``ValueError`` when it is not UTF-8 text."""
    if raw is None:
        if default is _MISSING:
            raise ValueError("a required column is NULL")
        return default
    return raw.decode()  # UnicodeDecodeError is a ValueError


def _readable(raw: bytes | None) -> bool:
    try:
        _text(raw)
    except ValueError:
        return False
    return True


def _busy(exc: sqlite3.Error) -> bool:
    """Another connection holds a lock: waiting may help."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _mapped(url: DatabaseURL, exc: sqlite3.Error, what: str = "cannot use") -> DfdbError:
    """A SQLite error as dfdb's: ``ConfigurationError`` when the file cannot be used at
    all (retrying will not help), else ``BackendUnavailableError``."""
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _PERMANENT:
        return ConfigurationError(f"{what} {url}: {exc}")
    return BackendUnavailableError(f"{url}: {exc}")
