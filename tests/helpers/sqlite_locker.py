"""Hold a SQLite file's lock in another OS process until told to let go.

Usage: python sqlite_locker.py PATH write|exclusive
``write`` takes the write lock of a database (``BEGIN IMMEDIATE``): readers go on,
writers wait. ``exclusive`` makes PATH a rollback-journal database and holds an
exclusive lock with a pending write: nobody else can even read it. Prints
``LOCKED``, waits for a line (or end of file) on stdin, rolls back, prints ``RELEASED``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys


def main(path: str, mode: str) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=30)) as db:
        if mode == "exclusive":
            db.execute("PRAGMA journal_mode = DELETE")
            db.execute("BEGIN EXCLUSIVE")
            db.execute("CREATE TABLE IF NOT EXISTS locker (x)")
            db.execute("INSERT INTO locker VALUES (1)")
        else:
            db.execute("BEGIN IMMEDIATE")
        print("LOCKED", flush=True)
        sys.stdin.readline()
        db.execute("ROLLBACK")
    print("RELEASED", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
