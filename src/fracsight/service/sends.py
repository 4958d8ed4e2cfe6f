"""The outgoing queue: result objects waiting to be sent to a PACS, their attempts and outcomes.

A row per object and destination, in the store's database, so a result made is never lost: a
send is ``pending`` (due at ``next_try``), ``sending`` (claimed by one sender), ``sent``, or
``rejected`` (the destination answered with a failure status: retrying the same object cannot
help, so it waits for ``fracsight dicom-node --resend`` or the worklist's resend action).
A sender that stops while ``sending`` leaves rows that :meth:`SendQueue.requeue_sending` puts
back at the next start. ``last_error`` says what went wrong in words that never carry patient
data (statuses, exception types, connection errors).

:class:`SendQueue` is mixed into :class:`fracsight.service.store.SqliteStore`; it uses the
store's connection and transactions.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

SEND_STATUSES = ("pending", "sending", "sent", "rejected")
# A claim older than this is taken to belong to a sender that died without releasing it.
STALE_CLAIM_S = 600.0

SENDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS sends (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id TEXT NOT NULL REFERENCES images (id),
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    file TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    claimed_at REAL,
    last_error TEXT,
    created_at TEXT NOT NULL,
    sent_at TEXT
);
CREATE INDEX IF NOT EXISTS sends_due ON sends (status, next_try);
CREATE INDEX IF NOT EXISTS sends_image ON sends (image_id);
"""


@dataclass(frozen=True)
class NewSend:
    """A result object written to disk, to be sent to ``destination`` (``AET@HOST:PORT``)."""

    image_id: str
    destination: str
    kind: str  # "sc", "sr" or "gsps"
    file: str  # relative to the data folder
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Send:
    id: int
    image_id: str
    destination: str
    kind: str
    file: str
    sop_class_uid: str
    sop_instance_uid: str
    status: str
    attempts: int
    next_try: float
    last_error: str | None
    created_at: str
    sent_at: str | None

    def to_api(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "destination": self.destination,
            "status": self.status,
            "attempts": self.attempts,
            "next_try": None if self.status != "pending" else _iso(self.next_try),
            "last_error": self.last_error,
            "sent_at": self.sent_at,
        }


def insert_sends(db: sqlite3.Connection, sends: Iterable[NewSend], created_at: str) -> None:
    """Queue ``sends`` inside the caller's transaction, due now."""
    due = time.time()
    db.executemany(
        "INSERT INTO sends (image_id, destination, kind, file, sop_class_uid, sop_instance_uid, next_try, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(s.image_id, s.destination, s.kind, s.file, s.sop_class_uid, s.sop_instance_uid, due, created_at)
         for s in sends],
    )  # fmt: skip


class SendQueue:
    """The send queue's methods, over the connection and transactions of the store they are mixed into."""

    def _connection(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def claim_sends(self, limit: int = 16, now: float | None = None) -> list[Send]:
        """Up to ``limit`` due sends, oldest first, now ``sending``; [] when none is due."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            ids = [
                r["id"]
                for r in db.execute(
                    "SELECT id FROM sends WHERE status = 'pending' AND next_try <= ? ORDER BY next_try, id "
                    "LIMIT ?",
                    (now, limit),
                )
            ]
            db.executemany(
                "UPDATE sends SET status = 'sending', claimed_at = ? WHERE id = ?", [(now, i) for i in ids]
            )
        return [s for s in (self.get_send(i) for i in ids) if s is not None]

    def send_succeeded(self, send_id: int, sent_at: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE sends SET status = 'sent', attempts = attempts + 1, sent_at = ?, last_error = NULL, "
                "claimed_at = NULL WHERE id = ?",
                (sent_at, send_id),
            )

    def send_failed(self, send_id: int, error: str, next_try: float) -> None:
        """Not delivered this time (destination unreachable, busy, out of resources): due again later."""
        with self._transaction() as db:
            db.execute(
                "UPDATE sends SET status = 'pending', attempts = attempts + 1, next_try = ?, last_error = ?, "
                "claimed_at = NULL WHERE id = ?",
                (next_try, error[:500], send_id),
            )

    def send_rejected(self, send_id: int, error: str) -> None:
        """The destination refused the object: kept, not retried until a resend."""
        with self._transaction() as db:
            db.execute(
                "UPDATE sends SET status = 'rejected', attempts = attempts + 1, last_error = ?, "
                "claimed_at = NULL WHERE id = ?",
                (error[:500], send_id),
            )

    def requeue_sending(self, older_than_s: float = 0.0) -> int:
        """Sends claimed by a sender that stopped go back to ``pending``; at start, all of them."""
        cutoff = time.time() - older_than_s
        with self._transaction() as db:
            return db.execute(
                "UPDATE sends SET status = 'pending', claimed_at = NULL WHERE status = 'sending' "
                "AND (claimed_at IS NULL OR claimed_at <= ?)",
                (cutoff,),
            ).rowcount

    def resend_undelivered(self, now: float | None = None) -> int:
        """Every send not yet delivered (pending or rejected) is due now; returns how many."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            return db.execute(
                "UPDATE sends SET status = 'pending', next_try = ? WHERE status IN ('pending', 'rejected')",
                (now,),
            ).rowcount

    def next_send_due(self) -> float | None:
        """When the earliest pending send is due (epoch seconds), None when none is pending."""
        row = (
            self._connection()
            .execute("SELECT MIN(next_try) AS t FROM sends WHERE status = 'pending'")
            .fetchone()
        )
        return row["t"]

    def get_send(self, send_id: int) -> Send | None:
        row = self._connection().execute("SELECT * FROM sends WHERE id = ?", (send_id,)).fetchone()
        return _send(row) if row else None

    def sends(self, image_id: str | None = None, status: str | None = None) -> list[Send]:
        query, args = "SELECT * FROM sends WHERE 1 = 1", []
        if image_id is not None:
            query, args = query + " AND image_id = ?", [*args, image_id]
        if status is not None:
            query, args = query + " AND status = ?", [*args, status]
        rows = self._connection().execute(query + " ORDER BY id", args).fetchall()
        return [_send(r) for r in rows]

    def undelivered_by_image(self) -> dict[str, int]:
        """Image id -> how many of its results are not yet delivered (pending, sending or rejected)."""
        rows = self._connection().execute(
            "SELECT image_id, COUNT(*) AS n FROM sends WHERE status != 'sent' GROUP BY image_id"
        )
        return {r["image_id"]: r["n"] for r in rows}

    def send_counts(self) -> dict[str, int]:
        rows = self._connection().execute("SELECT status, COUNT(*) AS n FROM sends GROUP BY status")
        found = {r["status"]: r["n"] for r in rows}
        return {status: found.get(status, 0) for status in SEND_STATUSES}


def _send(row: sqlite3.Row) -> Send:
    return Send(
        id=row["id"],
        image_id=row["image_id"],
        destination=row["destination"],
        kind=row["kind"],
        file=row["file"],
        sop_class_uid=row["sop_class_uid"],
        sop_instance_uid=row["sop_instance_uid"],
        status=row["status"],
        attempts=row["attempts"],
        next_try=row["next_try"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        sent_at=row["sent_at"],
    )


def _iso(epoch: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds")
