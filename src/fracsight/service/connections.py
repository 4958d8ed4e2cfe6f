"""One SQLite connection per thread, set up the same way for every table kept in the store file."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


def thread_connection(
    local: threading.local, path: Path, *, foreign_keys: bool = False
) -> sqlite3.Connection:
    """This thread's connection to ``path`` (kept in ``local``), opened on first use.

    Autocommit (transactions are begun explicitly), rows by column name, WAL so readers never
    wait for the writer, and ``synchronous=FULL`` so a commit is on disk before it returns.
    """
    db = getattr(local, "db", None)
    if db is None:
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a commit (a revocation, a result) is on disk when it returns
        if foreign_keys:
            db.execute("PRAGMA foreign_keys=ON")
        local.db = db
    return db


def close_thread_connection(local: threading.local) -> None:
    """Close this thread's connection, if it opened one (the next use opens a fresh one)."""
    db = getattr(local, "db", None)
    if db is not None:
        db.close()
        local.db = None
