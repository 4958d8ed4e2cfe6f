"""Where received images, their analysis queue, results, read status and feedback live.

:class:`Store` is the interface the web API, the queue worker and the DICOM node use;
:class:`SqliteStore` is the embedded default (one SQLite file in write-ahead-log mode with
``synchronous=FULL``, so a commit is on disk when it returns: an image is acknowledged only
after its row is). A PostgreSQL store for a multi-user site implements the same methods.

The queue is the ``status`` column: ``queued`` -> ``analysing`` -> ``done`` / ``refused`` /
``failed``. :meth:`Store.claim_next` moves one image to ``analysing`` in one transaction, so
two workers never take the same image; :meth:`Store.requeue_interrupted`, called at start,
puts back what a stopped service was analysing (its result was never written, so analysing it
again is its first analysis), and gives up after :data:`MAX_ATTEMPTS` on an image that keeps
stopping the service.

Images received over DICOM also carry the ``batch`` (the association) they arrived in, and a
``results`` stage: ``pending`` until the result objects for the PACS are made and queued for
sending (``made``; ``none`` for an image refused analysis). Results are made once every image of
a study that arrived in the same batch is finished and the batch is over (the association ended,
or no image came for a while), so each structured report can carry the study's answer. The
outgoing sends live in :mod:`fracsight.service.sends`.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fracsight.service.sends import SENDS_SCHEMA, NewSend, SendQueue, insert_sends

MAX_ATTEMPTS = 3
STATUSES = ("queued", "analysing", "done", "refused", "failed")
# Worklist order: the most suspicious first.
CATEGORY_RANK = {"fracture": 0, "doubt": 1, "no_fracture": 2}


@dataclass(frozen=True)
class StudyInfo:
    """What the worklist shows about an image's study; from the DICOM header where there is one.

    Patient fields are kept for the clinician's worklist only: never logged, never in errors.
    """

    study_key: str  # StudyInstanceUID, or "upload-<image id>" for an image without one
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    accession_number: str = ""
    modality: str = ""
    body_part: str = ""
    view_position: str = ""


@dataclass(frozen=True)
class Analysis:
    """What the worker writes for an analysed image."""

    probability: float
    category: str
    model_id: str
    result: dict[str, Any]  # JSON-ready: thresholds, peak, region probabilities, letterbox, timings
    heatmap: np.ndarray  # (h, w) float in [0, 1] over the square model input


@dataclass(frozen=True)
class ImageRecord:
    id: str
    received_at: str
    source: str  # "upload" or "dicom"
    file: str  # relative to the data folder
    kind: str  # dicom, png, jpeg, tiff
    size_bytes: int
    info: StudyInfo
    status: str
    attempts: int
    analyses: int  # completed analyses: 1 once done, never more
    error: str | None
    probability: float | None
    category: str | None
    model_id: str | None
    result: dict[str, Any] | None
    analysed_at: str | None
    batch: str = ""  # the DICOM association the image arrived in; "" for uploads
    # result objects for the PACS: pending, made, none (refused), failed; None: not wanted
    results: str | None = None
    # why some result object could not be made (no patient data); None when all were
    results_error: str | None = None

    def to_api(self) -> dict[str, Any]:
        """The image as ``GET /api/images/{id}`` returns it."""
        out: dict[str, Any] = {
            "id": self.id,
            "study": self.info.study_key,
            "status": self.status,
            "received_at": self.received_at,
            "kind": self.kind,
            "source": self.source,
            "sop_instance_uid": self.info.sop_instance_uid or None,
            "series_instance_uid": self.info.series_instance_uid or None,
        }
        if self.status == "done":
            out.update(
                probability=self.probability,
                category=self.category,
                model=(self.result or {}).get("model", {"id": self.model_id}),
                peak=(self.result or {}).get("peak"),
                size=(self.result or {}).get("display"),  # the original image's width and height
                regions=(self.result or {}).get("regions"),
                analysed_at=self.analysed_at,
            )
        elif self.status in ("refused", "failed"):
            out["error"] = self.error
        if self.results is not None:
            out["results"] = self.results
            if self.results_error:
                out["results_error"] = self.results_error
        return out


@dataclass(frozen=True)
class Feedback:
    image_id: str
    reader: str
    reader_label: int  # the reader's call: 1 fracture, 0 no fracture
    agrees: bool | None  # with the model's category; None where that was "doubt"
    note: str
    created_at: str


class Store(Protocol):
    """The store the service needs; see :class:`SqliteStore`."""

    data_dir: Path

    def add_image(
        self,
        image_id: str,
        source: str,
        file: str,
        kind: str,
        size_bytes: int,
        info: StudyInfo,
        *,
        batch: str = "",
        wants_results: bool = False,
        unique_instance: bool = False,
    ) -> ImageRecord: ...
    def find_instance(self, sop_instance_uid: str) -> ImageRecord | None: ...
    def claim_next(self) -> ImageRecord | None: ...
    def finish(self, image_id: str, analysis: Analysis) -> None: ...
    def refuse(self, image_id: str, reason: str, status: str = "refused") -> None: ...
    def requeue_interrupted(self) -> tuple[int, int]: ...
    def get_image(self, image_id: str) -> ImageRecord | None: ...
    def heatmap(self, image_id: str) -> np.ndarray | None: ...
    def images_of_study(self, study_key: str) -> list[ImageRecord]: ...
    def studies(
        self, category: str | None = None, region: str | None = None, read: bool | None = None
    ) -> list[dict[str, Any]]: ...
    def mark_read(self, study_key: str, reader: str, read: bool) -> bool: ...
    def add_feedback(self, feedback: Feedback) -> None: ...
    def feedback(self, image_id: str | None = None) -> list[Feedback]: ...
    def counts(self) -> dict[str, int]: ...
    # DICOM batches and results
    def open_batch(self, batch: str, calling_aet: str) -> None: ...
    def close_batch(self, batch: str) -> None: ...
    def close_open_batches(self) -> int: ...
    def results_ready(self, idle_s: float) -> list[tuple[str, str]]: ...
    def images_of_batch(self, study_key: str, batch: str) -> list[ImageRecord]: ...
    def record_results(
        self,
        made: list[str],
        none: list[str],
        sends: list[NewSend],
        failed: Mapping[str, str] | Sequence[str] = (),
    ) -> int: ...
    def retry_failed_results(self) -> int: ...
    # the send queue (fracsight.service.sends.SendQueue)
    def claim_sends(self, limit: int = 16, now: float | None = None) -> list: ...
    def send_succeeded(self, send_id: int, sent_at: str) -> None: ...
    def send_failed(self, send_id: int, error: str, next_try: float) -> None: ...
    def send_rejected(self, send_id: int, error: str) -> None: ...
    def requeue_sending(self, older_than_s: float = 0.0) -> int: ...
    def resend_undelivered(self, now: float | None = None) -> int: ...
    def next_send_due(self) -> float | None: ...
    def sends(self, image_id: str | None = None, status: str | None = None) -> list: ...
    def undelivered_by_image(self) -> dict[str, int]: ...
    def send_counts(self) -> dict[str, int]: ...


class DuplicateInstance(Exception):
    """A DICOM instance (by SOP Instance UID) that the store already keeps."""

    def __init__(self, existing: ImageRecord) -> None:
        super().__init__("instance already kept")
        self.existing = existing


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL,
    source TEXT NOT NULL,
    file TEXT NOT NULL,
    kind TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    {info_columns},
    status TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    analyses INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    probability REAL,
    category TEXT,
    model_id TEXT,
    result TEXT,
    heatmap BLOB,
    heatmap_shape TEXT,
    analysed_at TEXT,
    batch TEXT NOT NULL DEFAULT '',
    results TEXT,
    results_at TEXT
);
CREATE INDEX IF NOT EXISTS images_status ON images (status, received_at);
CREATE INDEX IF NOT EXISTS images_study ON images (study_key);
CREATE INDEX IF NOT EXISTS images_results ON images (results, study_key, batch);
CREATE INDEX IF NOT EXISTS images_instance ON images (sop_instance_uid);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    calling_aet TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    last_at REAL NOT NULL,
    closed_at TEXT
);
CREATE TABLE IF NOT EXISTS study_reads (
    study_key TEXT PRIMARY KEY,
    read_by TEXT NOT NULL,
    read_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id TEXT NOT NULL REFERENCES images (id),
    reader TEXT NOT NULL,
    reader_label INTEGER NOT NULL,
    agrees INTEGER,
    note TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""
_INFO = [f.name for f in fields(StudyInfo)]
_COLUMNS = [
    "id", "received_at", "source", "file", "kind", "size_bytes", *_INFO, "status", "attempts",
    "analyses", "error", "probability", "category", "model_id", "result", "analysed_at", "batch", "results",
    "results_error",
]  # fmt: skip
# Columns added after the first release of the store: an older database gets them at open.
_ADDED_COLUMNS = {"batch": "TEXT NOT NULL DEFAULT ''", "results": "TEXT", "results_at": "TEXT"}


class SqliteStore(SendQueue):
    """The embedded store: ``DIR/fracsight.db`` (SQLite, WAL) and the files under ``DIR``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "fracsight.db"
        self._local = threading.local()
        info_columns = ",\n    ".join(f"{c} TEXT NOT NULL DEFAULT ''" for c in _INFO)
        db = self._connection()
        self._add_missing_columns(db)
        db.executescript(_SCHEMA.format(info_columns=info_columns) + SENDS_SCHEMA)  # commits itself
        self._add_results_error_column(db)

    @staticmethod
    def _add_results_error_column(db: sqlite3.Connection) -> None:
        """``images.results_error`` (why result objects could not be made), on new and older
        databases alike: added where the table lacks it."""
        if "results_error" not in {r["name"] for r in db.execute("PRAGMA table_info(images)")}:
            db.execute("ALTER TABLE images ADD COLUMN results_error TEXT")

    def _add_missing_columns(self, db: sqlite3.Connection) -> None:
        """A database made by an older fracsight gets the columns added since (empty)."""
        present = {r["name"] for r in db.execute("PRAGMA table_info(images)")}
        if not present:  # a new database: the schema makes the table whole
            return
        for name, kind in _ADDED_COLUMNS.items():
            if name not in present:
                db.execute(f"ALTER TABLE images ADD COLUMN {name} {kind}")

    # -- connections -----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it returns
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")  # takes the write lock now: no two claims interleave
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- the queue -----------------------------------------------------------------------

    def add_image(
        self,
        image_id: str,
        source: str,
        file: str,
        kind: str,
        size_bytes: int,
        info: StudyInfo,
        *,
        batch: str = "",
        wants_results: bool = False,
        unique_instance: bool = False,
    ) -> ImageRecord:
        """Record a received image (its file already on disk) as queued; on disk when this returns.

        ``batch``: the DICOM association it came in (opened by :meth:`open_batch`);
        ``wants_results``: result objects are to be made for it once analysed;
        ``unique_instance``: raise :class:`DuplicateInstance` instead when an image with the same
        SOP Instance UID is kept already (and did not fail), so a PACS that sends an instance again
        (its acknowledgement was lost) does not get it analysed twice.
        """
        values = {"id": image_id, "received_at": now(), "source": source, "file": file, "kind": kind,
                  "size_bytes": size_bytes, **asdict(info), "batch": batch,
                  "results": "pending" if wants_results else None}  # fmt: skip
        with self._transaction() as db:
            if unique_instance and info.sop_instance_uid:
                existing = self._instance(db, info.sop_instance_uid)
                if existing is not None:
                    raise DuplicateInstance(existing)
            db.execute(
                f"INSERT INTO images ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                list(values.values()),
            )
            if batch:
                db.execute("UPDATE batches SET last_at = ? WHERE id = ?", (time.time(), batch))
        record = self.get_image(image_id)
        assert record is not None
        return record

    def _instance(self, db: sqlite3.Connection, sop_instance_uid: str) -> ImageRecord | None:
        row = db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM images WHERE sop_instance_uid = ? AND source = 'dicom' "
            "AND status != 'failed' ORDER BY received_at LIMIT 1",
            (sop_instance_uid,),
        ).fetchone()
        return self._record(row) if row else None

    def find_instance(self, sop_instance_uid: str) -> ImageRecord | None:
        """The kept DICOM image with this SOP Instance UID (one that did not fail), if any."""
        return self._instance(self._connection(), sop_instance_uid) if sop_instance_uid else None

    def claim_next(self) -> ImageRecord | None:
        """The oldest queued image not yet tried, now marked ``analysing``; None when the queue is empty.

        Images whose analysis was interrupted (the service killed or restarted while on them) come
        after every image not yet tried: a node killed again and again then does not give up on
        one unlucky image (:data:`MAX_ATTEMPTS`), and an image that does bring the service down
        does not hold up the others.
        """
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM images WHERE status = 'queued' ORDER BY attempts, received_at, rowid LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE images SET status = 'analysing', attempts = attempts + 1 WHERE id = ?", (row["id"],)
            )
        return self.get_image(row["id"])

    def finish(self, image_id: str, analysis: Analysis) -> None:
        heat = np.ascontiguousarray(analysis.heatmap, dtype=np.float32)
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE images SET status = 'done', analyses = analyses + 1, error = NULL, probability = ?, "
                "category = ?, model_id = ?, result = ?, heatmap = ?, heatmap_shape = ?, analysed_at = ? "
                "WHERE id = ? AND status = 'analysing'",
                (
                    analysis.probability,
                    analysis.category,
                    analysis.model_id,
                    json.dumps(analysis.result),
                    heat.tobytes(),
                    json.dumps(list(heat.shape)),
                    now(),
                    image_id,
                ),
            ).rowcount
        if changed != 1:
            raise RuntimeError(f"image {image_id} was not being analysed: result not stored twice")

    def refuse(self, image_id: str, reason: str, status: str = "refused") -> None:
        """End an image without a result: ``refused`` (the input) or ``failed`` (the service)."""
        if status not in ("refused", "failed"):
            raise ValueError(f"status {status!r}: expected refused or failed")
        with self._transaction() as db:
            db.execute(
                "UPDATE images SET status = ?, error = ?, analysed_at = ? WHERE id = ?",
                (status, reason, now(), image_id),
            )

    def requeue_interrupted(self) -> tuple[int, int]:
        """At start: images left ``analysing`` go back to the queue, or fail after MAX_ATTEMPTS.

        Returns (requeued, failed).
        """
        with self._transaction() as db:
            failed = db.execute(
                "UPDATE images SET status = 'failed', error = ?, analysed_at = ? "
                "WHERE status = 'analysing' AND attempts >= ?",
                (
                    f"the service stopped while analysing this image {MAX_ATTEMPTS} times; not tried again",
                    now(),
                    MAX_ATTEMPTS,
                ),
            ).rowcount
            requeued = db.execute("UPDATE images SET status = 'queued' WHERE status = 'analysing'").rowcount
        return requeued, failed

    # -- reading -------------------------------------------------------------------------

    def _record(self, row: sqlite3.Row) -> ImageRecord:
        return ImageRecord(
            id=row["id"],
            received_at=row["received_at"],
            source=row["source"],
            file=row["file"],
            kind=row["kind"],
            size_bytes=row["size_bytes"],
            info=StudyInfo(**{name: row[name] for name in _INFO}),
            status=row["status"],
            attempts=row["attempts"],
            analyses=row["analyses"],
            error=row["error"],
            probability=row["probability"],
            category=row["category"],
            model_id=row["model_id"],
            result=json.loads(row["result"]) if row["result"] else None,
            analysed_at=row["analysed_at"],
            batch=row["batch"],
            results=row["results"],
            results_error=row["results_error"],
        )

    def get_image(self, image_id: str) -> ImageRecord | None:
        row = (
            self._connection()
            .execute(f"SELECT {', '.join(_COLUMNS)} FROM images WHERE id = ?", (image_id,))
            .fetchone()
        )
        return self._record(row) if row else None

    def heatmap(self, image_id: str) -> np.ndarray | None:
        row = (
            self._connection()
            .execute("SELECT heatmap, heatmap_shape FROM images WHERE id = ?", (image_id,))
            .fetchone()
        )
        if row is None or row["heatmap"] is None:
            return None
        return np.frombuffer(row["heatmap"], dtype=np.float32).reshape(json.loads(row["heatmap_shape"]))

    def images_of_study(self, study_key: str) -> list[ImageRecord]:
        rows = (
            self._connection()
            .execute(
                f"SELECT {', '.join(_COLUMNS)} FROM images WHERE study_key = ? ORDER BY received_at, rowid",
                (study_key,),
            )
            .fetchall()
        )
        return [self._record(r) for r in rows]

    def studies(
        self, category: str | None = None, region: str | None = None, read: bool | None = None
    ) -> list[dict[str, Any]]:
        """The worklist: one entry per study, the most suspicious first.

        A study's category and probability are those of its most suspicious analysed image;
        a study still being analysed sorts after the suspected fractures and before the rest.
        ``region`` matches the DICOM body part or the region the model named.
        """
        rows = (
            self._connection()
            .execute(f"SELECT {', '.join(_COLUMNS)} FROM images ORDER BY received_at, rowid")
            .fetchall()
        )
        reads = {
            r["study_key"]: dict(r)
            for r in self._connection().execute("SELECT study_key, read_by, read_at FROM study_reads")
        }
        grouped: dict[str, list[ImageRecord]] = {}
        for row in rows:
            record = self._record(row)
            grouped.setdefault(record.info.study_key, []).append(record)
        undelivered = self.undelivered_by_image()
        out = [_study_entry(key, images, reads.get(key), undelivered) for key, images in grouped.items()]
        if category:
            out = [s for s in out if s["category"] == category]
        if region:
            out = [s for s in out if region.lower() in (s["regions"] or [])]
        if read is not None:
            out = [s for s in out if s["read"] is read]
        out.sort(key=_worklist_key)
        return out

    def mark_read(self, study_key: str, reader: str, read: bool) -> bool:
        """Mark a study read (or unread again); False when there is no such study."""
        with self._transaction() as db:
            exists = db.execute("SELECT 1 FROM images WHERE study_key = ? LIMIT 1", (study_key,)).fetchone()
            if not exists:
                return False
            if read:
                db.execute(
                    "INSERT OR REPLACE INTO study_reads (study_key, read_by, read_at) VALUES (?, ?, ?)",
                    (study_key, reader, now()),
                )
            else:
                db.execute("DELETE FROM study_reads WHERE study_key = ?", (study_key,))
        return True

    def add_feedback(self, feedback: Feedback) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO feedback (image_id, reader, reader_label, agrees, note, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    feedback.image_id,
                    feedback.reader,
                    feedback.reader_label,
                    None if feedback.agrees is None else int(feedback.agrees),
                    feedback.note,
                    feedback.created_at,
                ),
            )

    def feedback(self, image_id: str | None = None) -> list[Feedback]:
        """Every verdict in the order given, or those on one image."""
        query = "SELECT image_id, reader, reader_label, agrees, note, created_at FROM feedback"
        args: tuple = ()
        if image_id is not None:
            query, args = query + " WHERE image_id = ?", (image_id,)
        rows = self._connection().execute(query + " ORDER BY id", args).fetchall()
        return [
            Feedback(
                r["image_id"],
                r["reader"],
                r["reader_label"],
                None if r["agrees"] is None else bool(r["agrees"]),
                r["note"],
                r["created_at"],
            )
            for r in rows
        ]

    def counts(self) -> dict[str, int]:
        rows = self._connection().execute("SELECT status, COUNT(*) AS n FROM images GROUP BY status")
        found = {r["status"]: r["n"] for r in rows}
        return {status: found.get(status, 0) for status in STATUSES}

    # -- DICOM batches and results -------------------------------------------------------

    def open_batch(self, batch: str, calling_aet: str) -> None:
        """A DICOM association began sending images (the calling AE title is kept, nothing else)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO batches (id, calling_aet, opened_at, last_at) VALUES (?, ?, ?, ?)",
                (batch, calling_aet, now(), time.time()),
            )

    def close_batch(self, batch: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE batches SET closed_at = ? WHERE id = ? AND closed_at IS NULL", (now(), batch))

    def close_open_batches(self) -> int:
        """At start: the associations of a stopped node are gone, so their batches are over."""
        with self._transaction() as db:
            return db.execute("UPDATE batches SET closed_at = ? WHERE closed_at IS NULL", (now(),)).rowcount

    def results_ready(self, idle_s: float) -> list[tuple[str, str]]:
        """(study key, batch) of every group whose results can be made now, oldest first: some image
        in it waits for its results, none is still queued or being analysed, and the batch is over
        (closed, or no image arrived in it for ``idle_s`` seconds)."""
        rows = self._connection().execute(
            "SELECT i.study_key, i.batch, MIN(i.received_at) AS first FROM images i "
            "LEFT JOIN batches b ON b.id = i.batch "
            "WHERE i.results = 'pending' AND i.status IN ('done', 'refused', 'failed') "
            "AND (b.id IS NULL OR b.closed_at IS NOT NULL OR b.last_at <= ?) "
            "AND NOT EXISTS (SELECT 1 FROM images j WHERE j.study_key = i.study_key AND j.batch = i.batch "
            "AND j.status IN ('queued', 'analysing')) GROUP BY i.study_key, i.batch ORDER BY first",
            (time.time() - idle_s,),
        )
        return [(r["study_key"], r["batch"]) for r in rows]

    def images_of_batch(self, study_key: str, batch: str) -> list[ImageRecord]:
        rows = (
            self._connection()
            .execute(
                f"SELECT {', '.join(_COLUMNS)} FROM images WHERE study_key = ? AND batch = ? "
                "ORDER BY received_at, rowid",
                (study_key, batch),
            )
            .fetchall()
        )
        return [self._record(r) for r in rows]

    def record_results(
        self,
        made: list[str],
        none: list[str],
        sends: list[NewSend],
        failed: Mapping[str, str] | Sequence[str] = (),
    ) -> int:
        """In one transaction: the images in ``made`` have their result objects (queued as ``sends``),
        those in ``none`` get none (refused analysis), those in ``failed`` (image id -> reason, no
        patient data) could not have some or all made: whatever was made for them is in ``sends``
        too. Only images still ``pending`` change, so a group made twice (a restart between writing
        the files and this commit) is queued once; an object already queued for its destination
        (made again after a failure) is not queued twice. Returns how many images changed."""
        stamp = now()
        reasons = dict(failed) if isinstance(failed, Mapping) else dict.fromkeys(failed, "")
        ids = [*made, *none, *reasons]
        marks = ", ".join("?" * len(ids))
        with self._transaction() as db:
            query = f"SELECT id FROM images WHERE results = 'pending' AND id IN ({marks})"
            pending = {r["id"] for r in db.execute(query, ids)}
            for chosen, state in ((made, "made"), (none, "none")):
                db.executemany(
                    "UPDATE images SET results = ?, results_at = ?, results_error = NULL WHERE id = ?",
                    [(state, stamp, i) for i in chosen if i in pending],
                )
            db.executemany(
                "UPDATE images SET results = 'failed', results_at = ?, results_error = ? WHERE id = ?",
                [(stamp, reason[:500] or "unknown", i) for i, reason in reasons.items() if i in pending],
            )
            queued = {
                (r["image_id"], r["destination"], r["sop_instance_uid"])
                for r in db.execute(
                    f"SELECT image_id, destination, sop_instance_uid FROM sends WHERE image_id IN ({marks})",
                    ids,
                )
            }
            insert_sends(
                db,
                [s for s in sends
                 if s.image_id in pending and (s.image_id, s.destination, s.sop_instance_uid) not in queued],
                stamp,
            )  # fmt: skip
        return len(pending)

    def retry_failed_results(self) -> int:
        """Images whose result objects could not be made wait for them again (after a fix): the
        results stage makes them at its next pass. Returns how many."""
        with self._transaction() as db:
            return db.execute("UPDATE images SET results = 'pending' WHERE results = 'failed'").rowcount


def _study_entry(
    key: str, images: list[ImageRecord], read: dict | None, undelivered: dict[str, int]
) -> dict[str, Any]:
    done = [i for i in images if i.status == "done"]
    worst = min(
        done, key=lambda i: (CATEGORY_RANK.get(i.category or "", 9), -(i.probability or 0.0)), default=None
    )
    first = images[0].info
    regions = sorted(
        {i.info.body_part.lower() for i in images if i.info.body_part}
        | {(i.result or {}).get("region") for i in done if (i.result or {}).get("region")}
    )
    return {
        "study": key,
        "study_instance_uid": first.study_instance_uid or None,
        "patient_name": first.patient_name,
        "patient_id": first.patient_id,
        "patient_birth_date": first.patient_birth_date,
        "patient_sex": first.patient_sex,
        "study_date": first.study_date,
        "study_time": first.study_time,
        "study_description": first.study_description,
        "accession_number": first.accession_number,
        "modality": first.modality,
        "body_part": first.body_part,
        "regions": regions,
        "received_at": images[0].received_at,
        "n_images": len(images),
        "n_pending": sum(i.status in ("queued", "analysing") for i in images),
        "n_refused": sum(i.status in ("refused", "failed") for i in images),
        # result objects made for the PACS and not delivered yet (retrying, or refused by it)
        "n_undelivered": sum(undelivered.get(i.id, 0) for i in images),
        "category": worst.category if worst else None,
        "probability": worst.probability if worst else None,
        "read": read is not None,
        "read_by": read["read_by"] if read else None,
        "read_at": read["read_at"] if read else None,
        "images": [i.id for i in images],
    }


def _worklist_key(study: dict[str, Any]) -> tuple:
    """Suspected fractures first (most probable first), then doubt, then studies still pending,
    then no fracture, then studies with nothing analysable; newest first within a rank."""
    if study["category"] is not None:
        rank = {"fracture": 0, "doubt": 1, "no_fracture": 3}[study["category"]]
    else:
        rank = 2 if study["n_pending"] else 4
    return (rank, -(study["probability"] or 0.0), _descending(study["received_at"]))


def _descending(text: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in text)
