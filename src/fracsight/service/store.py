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
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

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
        self, image_id: str, source: str, file: str, kind: str, size_bytes: int, info: StudyInfo
    ) -> ImageRecord: ...
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
    analysed_at TEXT
);
CREATE INDEX IF NOT EXISTS images_status ON images (status, received_at);
CREATE INDEX IF NOT EXISTS images_study ON images (study_key);
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
    "analyses", "error", "probability", "category", "model_id", "result", "analysed_at",
]  # fmt: skip


class SqliteStore:
    """The embedded store: ``DIR/fracsight.db`` (SQLite, WAL) and the files under ``DIR``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "fracsight.db"
        self._local = threading.local()
        info_columns = ",\n    ".join(f"{c} TEXT NOT NULL DEFAULT ''" for c in _INFO)
        self._connection().executescript(_SCHEMA.format(info_columns=info_columns))  # commits itself

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
        self, image_id: str, source: str, file: str, kind: str, size_bytes: int, info: StudyInfo
    ) -> ImageRecord:
        """Record a received image (its file already on disk) as queued; on disk when this returns."""
        values = {"id": image_id, "received_at": now(), "source": source, "file": file, "kind": kind,
                  "size_bytes": size_bytes, **asdict(info)}  # fmt: skip
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO images ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                list(values.values()),
            )
        record = self.get_image(image_id)
        assert record is not None
        return record

    def claim_next(self) -> ImageRecord | None:
        """The oldest queued image, now marked ``analysing``; None when the queue is empty."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM images WHERE status = 'queued' ORDER BY received_at, rowid LIMIT 1"
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
        out = [_study_entry(key, images, reads.get(key)) for key, images in grouped.items()]
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


def _study_entry(key: str, images: list[ImageRecord], read: dict | None) -> dict[str, Any]:
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
