"""Leases, locks and guarded writes of the SQLite driver (a part of :class:`SqliteDriver`).

Three tables in the same file: ``dfdb_leases`` (id, ttl, deadline on the host's wall
clock), ``dfdb_lease_keys`` (each bound object with the revision it was bound at: a later
write without the lease changes the revision and so unbinds it) and ``dfdb_locks`` (name,
holder lease, last fencing token). Every open connection reaps: every lease call first, and
a watcher after a change-log poll that saw a deadline passed (the poll's one statement reads
the earliest deadline too, so without a lease due a watcher spends nothing on reaping), ends
the leases whose deadline passed, in one write transaction — their objects deleted with
ordinary change-log rows (action ``expire``, read back as ``delete`` events marked
``expired``), their locks released, the lease rows removed — so a lease is reaped once
whichever connections race for it. Guards are checked inside the
write's own transaction.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from dfdb.drivers.base import Entry, Expect, Guard, check_delete, check_put
from dfdb.errors import LeaseLostError

if TYPE_CHECKING:
    from dfdb.drivers.sqlite import _Call

__all__ = ["LEASE_SCHEMA", "SqliteLeases", "check_expectation"]

T = TypeVar("T")

LEASE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dfdb_leases (id TEXT PRIMARY KEY, ttl REAL NOT NULL, deadline REAL NOT NULL)"
    " WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS dfdb_leases_deadline ON dfdb_leases (deadline)",
    "CREATE TABLE IF NOT EXISTS dfdb_lease_keys (tbl TEXT NOT NULL, id TEXT NOT NULL, lease TEXT NOT NULL,"
    " revision INTEGER NOT NULL, PRIMARY KEY (tbl, id)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS dfdb_lease_keys_lease ON dfdb_lease_keys (lease)",
    "CREATE TABLE IF NOT EXISTS dfdb_locks (name TEXT PRIMARY KEY, holder TEXT, token INTEGER NOT NULL) WITHOUT ROWID",
)


def check_expectation(
    table: str, id: str, topic: str | None, value: bytes | None, old: Any, expect: Expect | None
) -> None:
    """``old`` is the row (topic, value, revision) or ``None``; ``value`` ``None`` is a delete."""
    if value is None:
        check_delete(table, id, None if old is None else old[2], expect if isinstance(expect, int) else None)
    else:
        assert expect is not None
        check_put(table, id, topic, None if old is None else (old[0], old[2]), expect)


def _reap(db: sqlite3.Connection, now: float) -> int:
    due = db.execute("SELECT id FROM dfdb_leases WHERE deadline < ?", (now,)).fetchall()
    for (lease,) in due:
        _end(db, lease)
    return len(due)


def _end(db: sqlite3.Connection, lease: str) -> None:
    """Delete the lease's objects with logged expiry deletes, release its locks, drop it."""
    bound = db.execute(
        "SELECT k.tbl, k.id, e.topic, e.value FROM dfdb_lease_keys k JOIN dfdb_entries e"
        " ON e.tbl = k.tbl AND e.id = k.id AND e.revision = k.revision WHERE k.lease = ? ORDER BY k.revision",
        (lease,),
    ).fetchall()
    for table, id, topic, value in bound:
        db.execute(
            "INSERT INTO dfdb_changelog (tbl, id, topic, action, value, at) VALUES (?, ?, ?, 'expire', ?, ?)",
            (table, id, topic, value, time.time()),
        )
        db.execute("DELETE FROM dfdb_entries WHERE tbl = ? AND id = ?", (table, id))
    db.execute("DELETE FROM dfdb_lease_keys WHERE lease = ?", (lease,))
    db.execute("DELETE FROM dfdb_leases WHERE id = ?", (lease,))
    db.execute("UPDATE dfdb_locks SET holder = NULL WHERE holder = ?", (lease,))


def _alive(db: sqlite3.Connection, lease: str, now: float) -> float:
    row = db.execute("SELECT ttl, deadline FROM dfdb_leases WHERE id = ?", (lease,)).fetchone()
    if row is None or row[1] < now:
        raise LeaseLostError(f"lease {lease} ended")
    return float(row[0])


def _check_guard(db: sqlite3.Connection, guard: Guard | None, now: float) -> None:
    if guard is None:
        return
    _alive(db, guard.lease, now)
    if guard.lock is not None:
        row = db.execute("SELECT holder, token FROM dfdb_locks WHERE name = ?", (guard.lock,)).fetchone()
        if row is None or (row[0], row[1]) != (guard.lease, guard.token):
            raise LeaseLostError(f"lock {guard.lock!r} is no longer held with token {guard.token}")


class SqliteLeases:
    """The lease methods of :class:`~dfdb.drivers.sqlite.SqliteDriver`; see the module documentation."""

    _lease_due = False
    """Whether the last change-log poll saw a lease whose deadline passed."""

    if TYPE_CHECKING:

        async def _trip(self, fn: Callable[[sqlite3.Connection, _Call], T]) -> T: ...
        def _wake(self) -> None: ...
        def _check_size(self, table: str, id: str, value: bytes) -> None: ...
        def _apply(
            self,
            db: sqlite3.Connection,
            table: str,
            id: str,
            topic: str | None,
            value: bytes | None,
            expect: Expect | None,
        ) -> Entry: ...

    async def _leased(self, fn: Callable[[sqlite3.Connection, float], T]) -> T:
        """``fn(db, now)`` in one write transaction, after reaping what is due. A
        ``LeaseLostError`` from ``fn`` (raised before it wrote anything) keeps the reaping."""
        from dfdb.drivers.sqlite import _transaction

        def run(db: sqlite3.Connection, call: _Call) -> tuple[int, T | LeaseLostError]:
            now = time.time()
            with _transaction(db, call):
                reaped = _reap(db, now)
                try:
                    return reaped, fn(db, now)
                except LeaseLostError as exc:
                    return reaped, exc

        reaped, outcome = await self._trip(run)
        if reaped:
            self._wake()
        if isinstance(outcome, LeaseLostError):
            raise outcome
        return outcome

    async def reap(self) -> int:
        from dfdb.drivers.sqlite import _transaction

        def reap(db: sqlite3.Connection, call: _Call) -> int:
            now = time.time()
            if db.execute("SELECT 1 FROM dfdb_leases WHERE deadline < ? LIMIT 1", (now,)).fetchone() is None:
                return 0  # the usual case: a read, no write lock
            with _transaction(db, call):
                return _reap(db, now)

        reaped = await self._trip(reap)
        if reaped:
            self._wake()
        return reaped

    async def lease_grant(self, ttl: float) -> str:
        lease = uuid.uuid4().hex

        def grant(db: sqlite3.Connection, now: float) -> str:
            db.execute("INSERT INTO dfdb_leases (id, ttl, deadline) VALUES (?, ?, ?)", (lease, ttl, now + ttl))
            return lease

        return await self._leased(grant)

    async def lease_keepalive(self, lease: str) -> None:
        def keep(db: sqlite3.Connection, now: float) -> None:
            ttl = _alive(db, lease, now)
            db.execute("UPDATE dfdb_leases SET deadline = ? WHERE id = ?", (now + ttl, lease))

        await self._leased(keep)

    async def lease_revoke(self, lease: str) -> None:
        await self._leased(lambda db, now: _end(db, lease))
        self._wake()

    async def put_bound(
        self,
        table: str,
        id: str,
        topic: str | None,
        value: bytes,
        expect: Expect,
        lease: str | None,
        guard: Guard | None,
    ) -> int:
        self._check_size(table, id, value)

        def write(db: sqlite3.Connection, now: float) -> int:
            _check_guard(db, guard, now)
            if lease is not None:
                _alive(db, lease, now)
            revision = self._apply(db, table, id, topic, value, expect).revision
            if lease is not None:
                db.execute(
                    "INSERT INTO dfdb_lease_keys (tbl, id, lease, revision) VALUES (?, ?, ?, ?) ON CONFLICT (tbl, id)"
                    " DO UPDATE SET lease = excluded.lease, revision = excluded.revision",
                    (table, id, lease, revision),
                )
            return revision

        revision = await self._leased(write)
        self._wake()
        return revision

    async def delete_guarded(self, table: str, id: str, guard: Guard) -> Entry:
        def delete(db: sqlite3.Connection, now: float) -> Entry:
            _check_guard(db, guard, now)
            return self._apply(db, table, id, None, None, None)

        entry = await self._leased(delete)
        self._wake()
        return entry

    async def lock_acquire(self, name: str, lease: str) -> int | None:
        def acquire(db: sqlite3.Connection, now: float) -> int | None:
            _alive(db, lease, now)
            row = db.execute("SELECT holder, token FROM dfdb_locks WHERE name = ?", (name,)).fetchone()
            holder, token = row if row is not None else (None, 0)
            if holder == lease:
                return int(token)
            if holder is not None:
                return None
            db.execute(
                "INSERT INTO dfdb_locks (name, holder, token) VALUES (?, ?, ?) ON CONFLICT (name)"
                " DO UPDATE SET holder = excluded.holder, token = excluded.token",
                (name, lease, token + 1),
            )
            return int(token) + 1

        return await self._leased(acquire)

    async def lock_release(self, name: str, lease: str, token: int) -> None:
        def release(db: sqlite3.Connection, now: float) -> None:
            db.execute(
                "UPDATE dfdb_locks SET holder = NULL WHERE name = ? AND holder = ? AND token = ?", (name, lease, token)
            )

        await self._leased(release)
