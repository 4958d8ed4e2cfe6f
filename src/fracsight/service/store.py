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
sending (``made``; ``none`` for an image refused analysis). An analysed image's own objects (its
Secondary Capture and presentation state) are made as soon as it is analysed (``objects_at``);
the study's structured report waits until every image of the study is finished and none has
arrived for a quiet time (however many associations brought them), so it carries the study's
answer once; an image arriving later gets its own objects and the study's report is made anew. The
outgoing sends live in :mod:`fracsight.service.sends`.

The worklist reads the ``studies`` table: one row per study (its display fields, image counts by
status, its most suspicious answer, read state, a change counter), written in the same
transaction as every image insert, result, refusal and read mark, so filtering, sorting, paging
and "what changed since" are single indexed queries however many images the store keeps. The
schema's version is ``PRAGMA user_version``; :data:`_STEPS` upgrade an older store when opened.

Images uploaded as a reader study's cases have source :data:`STUDY_SOURCE`: the worker analyses
them like any other (after the clinical images waiting), but they are no patient's care, so the
worklist and its change feed, a study's images, instance matching, site monitoring and the
refusal metrics leave them out; the reader-study pages read them by image id.
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

from fracsight.decide import CATEGORIES, Category
from fracsight.service.auth import owner_only
from fracsight.service.connections import close_thread_connection, thread_connection
from fracsight.service.sends import SENDS_SCHEMA, NewSend, SendQueue, insert_sends

MAX_ATTEMPTS = 3
# The source of a reader study's case images (others: "upload", "dicom"); see the module's description.
STUDY_SOURCE = "study"
STATUSES = ("queued", "analysing", "done", "refused", "failed")
# The study-level answer: a study's category is that of its most suspicious analysed image, by
# fracsight.decide's rank (lowest first), then by probability; here as the SQL needs it.
CATEGORY_RANK = {category.value: entry.rank for category, entry in CATEGORIES.items()}
# The worklist's order of study states: its answer (in fracsight.decide's rank), or where it stands
# without one. A study still in the queue sits before "no fracture" (it may yet be a fracture); one
# with nothing analysable last. A change here needs a schema step (ranks are kept in the studies table).
_ANSWERS = tuple(c.value for c in sorted(CATEGORIES, key=lambda c: CATEGORIES[c].rank))
_NO_FRACTURE = _ANSWERS.index(Category.NO_FRACTURE.value)
WORKLIST_ORDER = (*_ANSWERS[:_NO_FRACTURE], "pending", *_ANSWERS[_NO_FRACTURE:], "refused")
PENDING = ("queued", "analysing")
UNANALYSABLE = ("refused", "failed")


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
    source: str  # "upload", "dicom" or STUDY_SOURCE (a reader study's case)
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
    # when the image's own objects (SC, presentation state) were made; the study's SR comes later
    objects_at: str | None = None

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
                scope=(self.result or {}).get("scope"),  # the out-of-scope check (fracsight.safety)
                analysed_at=self.analysed_at,
            )
        elif self.status in ("refused", "failed"):
            out["error"] = self.error
            out["error_code"] = (self.result or {}).get("error_code")
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
        received_at: str | None = None,
    ) -> ImageRecord: ...
    def find_instance(self, sop_instance_uid: str, dicom_only: bool = True) -> ImageRecord | None: ...
    def claim_next(self) -> ImageRecord | None: ...
    def finish(self, image_id: str, analysis: Analysis) -> None: ...
    def refuse(
        self, image_id: str, reason: str, status: str = "refused", code: str | None = None
    ) -> None: ...
    def requeue_interrupted(self) -> tuple[int, int]: ...
    def get_image(self, image_id: str) -> ImageRecord | None: ...
    def heatmap(self, image_id: str) -> np.ndarray | None: ...
    def name_upload(self, image_id: str, name: str) -> None: ...
    def images_of_study(self, study_key: str) -> list[ImageRecord]: ...
    def studies(self, query: WorklistQuery | None = None) -> list[dict[str, Any]]: ...
    def study_page(self, query: WorklistQuery) -> StudyPage: ...
    def study(self, study_key: str) -> dict[str, Any] | None: ...
    def changes(self, since: int, limit: int = 500) -> tuple[list[dict[str, Any]], int, bool]: ...
    def change_cursor(self) -> int: ...
    def finished_images(self) -> list[dict[str, Any]]: ...
    def mark_read(self, study_key: str, reader: str, read: bool) -> bool: ...
    def add_feedback(self, feedback: Feedback) -> None: ...
    def feedback(self, image_id: str | None = None) -> list[Feedback]: ...
    def monitored_images(self) -> list[dict[str, Any]]: ...
    def counts(self) -> dict[str, int]: ...
    # DICOM batches and results
    def open_batch(self, batch: str, calling_aet: str) -> None: ...
    def close_batch(self, batch: str) -> None: ...
    def close_open_batches(self) -> int: ...
    def results_ready(self, quiet_s: float) -> list[str]: ...
    def objects_ready(self) -> list[str]: ...
    def analysis_waiting(self) -> bool: ...
    def record_objects(self, image_id: str, sends: list[NewSend], error: str | None = None) -> bool: ...
    def study_reports(self, study_key: str, destination: str) -> list[str]: ...
    def sent_instance(self, sop_instance_uid: str) -> bool: ...
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


# Worklist columns one can sort by -> the SQL terms (ascending); ties go by study key.
SORTS: dict[str, tuple[str, ...]] = {
    "priority": ("rank", "probability DESC", "received_at DESC"),
    "probability": ("probability",),
    "patient_name": ("patient_name",),
    "patient_id": ("patient_id",),
    "accession_number": ("accession_number",),
    "study": ("study_description",),
    "date": ("day",),
    "regions": ("regions",),
    "images": ("n_images",),
    "received_at": ("received_at",),
    "changed_at": ("change",),
    "read": ("read_at",),
}


@dataclass(frozen=True)
class WorklistQuery:
    """A worklist page: filters (all optional), sort column and direction, paging."""

    category: str | None = None  # fracture, doubt, no_fracture
    read: bool | None = None
    search: str | None = None  # part of the patient's name or ID or the accession number
    date_from: str | None = None  # YYYY-MM-DD: the study date, or the day first received
    date_to: str | None = None
    sort: str = "priority"
    descending: bool = False  # "priority" ascending is the most suspicious first
    limit: int | None = None
    offset: int = 0


@dataclass(frozen=True)
class StudyPage:
    studies: list[dict[str, Any]]
    total: int  # studies matching the filters, over all pages
    cursor: int  # the change counter when read: poll changes since it


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
    results_at TEXT,
    results_error TEXT,
    objects_at TEXT
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
CREATE INDEX IF NOT EXISTS feedback_image ON feedback (image_id, id);
"""
# The study fields shown in the worklist, from the study's first image.
_STUDY_INFO = [
    "study_instance_uid", "patient_name", "patient_id", "patient_birth_date", "patient_sex", "study_date",
    "study_time", "study_description", "accession_number", "modality", "body_part",
]  # fmt: skip
_STUDY_COLUMNS = [
    "study_key", *_STUDY_INFO, "regions", "day", "search", "received_at", "n_images", "n_pending",
    "n_refused", "n_done", "category", "probability", "rank", "read_by", "read_at", "changed_at", "change",
]  # fmt: skip
# Schema version 2: the worklist's studies table (see the module's description). Every sort has an
# index ending in the study key (the tie-break); the default order has one for all, unread and read
# studies, carrying the search text so a text search reads the index, not the rows.
_STUDIES_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_key TEXT PRIMARY KEY,
    {info_columns},
    regions TEXT NOT NULL DEFAULT '',
    day TEXT NOT NULL DEFAULT '',
    search TEXT NOT NULL DEFAULT '',
    received_at TEXT NOT NULL,
    n_images INTEGER NOT NULL,
    n_pending INTEGER NOT NULL,
    n_refused INTEGER NOT NULL,
    n_done INTEGER NOT NULL,
    category TEXT,
    probability REAL,
    rank INTEGER NOT NULL,
    read_by TEXT,
    read_at TEXT,
    changed_at TEXT NOT NULL,
    change INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_priority
    ON studies (rank, probability DESC, received_at DESC, study_key, search);
CREATE INDEX IF NOT EXISTS studies_unread
    ON studies (rank, probability DESC, received_at DESC, study_key, search) WHERE read_at IS NULL;
CREATE INDEX IF NOT EXISTS studies_read
    ON studies (rank, probability DESC, received_at DESC, study_key, search) WHERE read_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS studies_search ON studies (search, read_at, rank);
CREATE INDEX IF NOT EXISTS studies_change ON studies (change);
CREATE INDEX IF NOT EXISTS studies_received ON studies (received_at, study_key);
CREATE INDEX IF NOT EXISTS studies_day ON studies (day, study_key);
CREATE INDEX IF NOT EXISTS studies_patient_name ON studies (patient_name, study_key);
CREATE INDEX IF NOT EXISTS studies_patient_id ON studies (patient_id, study_key);
CREATE INDEX IF NOT EXISTS studies_accession ON studies (accession_number, study_key);
CREATE INDEX IF NOT EXISTS studies_read_at ON studies (read_at, study_key);
CREATE INDEX IF NOT EXISTS studies_probability ON studies (probability, study_key);
CREATE INDEX IF NOT EXISTS studies_description ON studies (study_description, study_key);
CREATE INDEX IF NOT EXISTS studies_regions ON studies (regions, study_key);
CREATE INDEX IF NOT EXISTS studies_images ON studies (n_images, study_key);
""".format(info_columns=",\n    ".join(f"{c} TEXT NOT NULL DEFAULT ''" for c in _STUDY_INFO))
SCHEMA_VERSION = 4
_INFO = [f.name for f in fields(StudyInfo)]
_COLUMNS = [
    "id", "received_at", "source", "file", "kind", "size_bytes", *_INFO, "status", "attempts",
    "analyses", "error", "probability", "category", "model_id", "result", "analysed_at", "batch", "results",
    "results_error", "objects_at",
]  # fmt: skip
# Columns added after the first release of the store: an older database gets them at open.
_ADDED_COLUMNS = {
    "batch": "TEXT NOT NULL DEFAULT ''",
    "results": "TEXT",
    "results_at": "TEXT",
    "results_error": "TEXT",  # why result objects could not be made
    "objects_at": "TEXT",  # when the image's own result objects were made (the SR may wait)
}


class SqliteStore(SendQueue):
    """The embedded store: ``DIR/fracsight.db`` (SQLite, WAL) and the files under ``DIR``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        owner_only(self.data_dir)  # patient data: 0600 files, 0700 folders, also those of older runs
        self.path = self.data_dir / "fracsight.db"
        self._local = threading.local()
        self._upgrade(self._connection())

    def _upgrade(self, db: sqlite3.Connection) -> None:
        """Bring the database to :data:`SCHEMA_VERSION`, one ``user_version`` step at a time.

        Version 1 is the store as first released (a database without a version is one); each later
        step runs in its own transaction with the version it reaches, so an upgrade interrupted
        part-way resumes at the step it stopped in."""
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"the store is schema version {version}; this fracsight reads up to {SCHEMA_VERSION}"
            )
        # Step 1 is idempotent (CREATE ... IF NOT EXISTS, missing columns added): always run.
        info_columns = ",\n    ".join(f"{c} TEXT NOT NULL DEFAULT ''" for c in _INFO)
        self._add_missing_columns(db)
        db.executescript(_SCHEMA.format(info_columns=info_columns) + SENDS_SCHEMA)  # commits itself
        for target, step in _STEPS.items():
            with self._transaction() as tx:
                if tx.execute("PRAGMA user_version").fetchone()[0] >= target:
                    continue  # another process took this step meanwhile
                step(self, tx)
                tx.execute(f"PRAGMA user_version = {int(target)}")

    def _step_studies_table(self, db: sqlite3.Connection) -> None:
        """Version 2: the studies table, filled from the images already kept."""
        for statement in _STUDIES_SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        self._refresh_studies(db, None)

    def _step_study_source(self, db: sqlite3.Connection) -> None:
        """Version 4: reader-study cases uploaded before they had a source of their own (kept as
        uploads, listed in :mod:`fracsight.service.reader_study`'s ``reader_study_images``) become
        :data:`STUDY_SOURCE`, and leave the worklist."""
        exists = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reader_study_images'"
        ).fetchone()
        if not exists:
            return
        moved = db.execute(
            "UPDATE images SET source = ? WHERE source = 'upload' "
            "AND id IN (SELECT image_id FROM reader_study_images)",
            (STUDY_SOURCE,),
        ).rowcount
        if moved:
            self._refresh_studies(db, None)

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
        return thread_connection(self._local, self.path, foreign_keys=True)

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
        close_thread_connection(self._local)

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
        received_at: str | None = None,
    ) -> ImageRecord:
        """Record a received image (its file already on disk) as queued; on disk when this returns.

        ``batch``: the DICOM association it came in (opened by :meth:`open_batch`);
        ``wants_results``: result objects are to be made for it once analysed;
        ``unique_instance``: raise :class:`DuplicateInstance` instead when an image with the same
        SOP Instance UID is kept already (and did not fail), so a PACS that sends an instance again
        (its acknowledgement was lost) does not get it analysed twice; an upload is matched against
        every kept instance, one received over DICOM only against others received so.
        The image's study is updated in the same transaction (a study read is unread again).
        ``received_at`` (ISO 8601, UTC): when it came, for replaying past cases; now by default.
        """
        values = {"id": image_id, "received_at": received_at or now(), "source": source, "file": file,
                  "kind": kind, "size_bytes": size_bytes, **asdict(info), "batch": batch,
                  "results": "pending" if wants_results else None}  # fmt: skip
        with self._transaction() as db:
            if unique_instance and info.sop_instance_uid:
                existing = self._instance(db, info.sop_instance_uid, dicom_only=source == "dicom")
                if existing is not None:
                    raise DuplicateInstance(existing)
            db.execute(
                f"INSERT INTO images ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                list(values.values()),
            )
            if batch:
                db.execute("UPDATE batches SET last_at = ? WHERE id = ?", (time.time(), batch))
            if source != STUDY_SOURCE:  # a study case is in no worklist study
                # A new image reopens a study already read: it has not been seen.
                db.execute("DELETE FROM study_reads WHERE study_key = ?", (info.study_key,))
                self._refresh_studies(db, [info.study_key])
        record = self.get_image(image_id)
        assert record is not None
        return record

    def _instance(
        self, db: sqlite3.Connection, sop_instance_uid: str, dicom_only: bool = True
    ) -> ImageRecord | None:
        source = "AND source = 'dicom' " if dicom_only else f"AND source != '{STUDY_SOURCE}' "
        row = db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM images WHERE sop_instance_uid = ? {source}"
            "AND status != 'failed' ORDER BY received_at LIMIT 1",
            (sop_instance_uid,),
        ).fetchone()
        return self._record(row) if row else None

    def find_instance(self, sop_instance_uid: str, dicom_only: bool = True) -> ImageRecord | None:
        """The kept image with this SOP Instance UID (one that did not fail), if any: received over
        DICOM, or (``dicom_only=False``) uploaded too; never a reader study's case (a patient's
        image that is also a study case stays in the worklist)."""
        if not sop_instance_uid:
            return None
        return self._instance(self._connection(), sop_instance_uid, dicom_only)

    def claim_next(self) -> ImageRecord | None:
        """The oldest queued image not yet tried, now marked ``analysing``; None when the queue is empty.

        Images whose analysis was interrupted (the service killed or restarted while on them) come
        after every image not yet tried: a node killed again and again then does not give up on
        one unlucky image (:data:`MAX_ATTEMPTS`), and an image that does bring the service down
        does not hold up the others.
        """
        with self._transaction() as db:
            # a reader study's cases wait for the clinical images: a patient's image is not held up
            row = db.execute(
                f"SELECT id FROM images WHERE status = 'queued' ORDER BY source = '{STUDY_SOURCE}', "
                "attempts, received_at, rowid LIMIT 1"
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
            if changed == 1:
                self._refresh_studies(db, self._study_keys(db, [image_id]))
        if changed != 1:
            raise RuntimeError(f"image {image_id} was not being analysed: result not stored twice")

    def refuse(self, image_id: str, reason: str, status: str = "refused", code: str | None = None) -> None:
        """End an image without a result: ``refused`` (the input) or ``failed`` (the service);
        ``code`` is the refusal's ``error_code`` (as ``fracsight predict`` gives it), kept in ``result``."""
        if status not in ("refused", "failed"):
            raise ValueError(f"status {status!r}: expected refused or failed")
        result = json.dumps({"error_code": code}) if code else None
        with self._transaction() as db:
            db.execute(
                "UPDATE images SET status = ?, error = ?, result = ?, analysed_at = ? WHERE id = ?",
                (status, reason, result, now(), image_id),
            )
            self._refresh_studies(db, self._study_keys(db, [image_id]))

    def requeue_interrupted(self) -> tuple[int, int]:
        """At start: images left ``analysing`` go back to the queue, or fail after MAX_ATTEMPTS.

        Returns (requeued, failed).
        """
        with self._transaction() as db:
            given_up = [
                r["study_key"]
                for r in db.execute(
                    "SELECT DISTINCT study_key FROM images WHERE status = 'analysing' AND attempts >= ?",
                    (MAX_ATTEMPTS,),
                )
            ]
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
            self._refresh_studies(db, given_up)  # requeued ones stay pending: their studies are unchanged
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
            objects_at=row["objects_at"],
        )

    def get_image(self, image_id: str) -> ImageRecord | None:
        row = (
            self._connection()
            .execute(f"SELECT {', '.join(_COLUMNS)} FROM images WHERE id = ?", (image_id,))
            .fetchone()
        )
        return self._record(row) if row else None

    def name_upload(self, image_id: str, name: str) -> None:
        """Keep the file name an uploader gave an image without a DICOM header as its study
        description, so the worklist tells such uploads apart and finds them by name (a name is
        patient data as much as a header is: shown, searched, never logged)."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE images SET study_description = ? "
                "WHERE id = ? AND kind != 'dicom' AND study_description = ''",
                (name, image_id),
            ).rowcount
            if changed:
                self._refresh_studies(db, self._study_keys(db, [image_id]))

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
        """The study's images, oldest first; a reader study's cases (of the same DICOM study) are
        not among them."""
        rows = (
            self._connection()
            .execute(
                f"SELECT {', '.join(_COLUMNS)} FROM images WHERE study_key = ? AND source != ? "
                "ORDER BY received_at, rowid",
                (study_key, STUDY_SOURCE),
            )
            .fetchall()
        )
        return [self._record(r) for r in rows]

    # -- the worklist ----------------------------------------------------------------------

    def _refresh_studies(self, db: sqlite3.Connection, keys: Sequence[str] | None) -> None:
        """Rewrite the studies rows of ``keys`` (None: every study) from their images, inside the
        caller's transaction, each with a change number of its own after every one given before.
        A reader study's cases count in no study: a key left without other images has no row."""
        if keys is not None and not keys:
            return
        where, args = f"WHERE source != '{STUDY_SOURCE}'", ()
        if keys is not None:
            where, args = f"{where} AND study_key IN ({', '.join('?' * len(keys))})", tuple(keys)
        change = db.execute("SELECT COALESCE(MAX(change), 0) + 1 FROM studies").fetchone()[0]
        stamp = now()
        rows = []
        for r in db.execute(_REFRESH.format(where=where), args):
            n_pending = r["n_pending"]
            rows.append(
                {
                    "study_key": r["study_key"],
                    **{c: r[c] for c in _STUDY_INFO},
                    "regions": ",".join(sorted(set((r["regions"] or "").split(",")) - {""})),
                    "day": _day(r["study_date"], r["received_at"]),
                    "search": " ".join((r["patient_name"], r["patient_id"], r["accession_number"],
                                        r["study_description"], r["regions"] or "")).lower(),  # fmt: skip
                    "received_at": r["received_at"],
                    "n_images": r["n_images"],
                    "n_pending": n_pending,
                    "n_refused": r["n_refused"],
                    "n_done": r["n_done"],
                    "category": r["category"],
                    "probability": r["probability"],
                    "rank": worklist_rank(r["category"], n_pending),
                    "read_by": r["read_by"],
                    "read_at": r["read_at"],
                    "changed_at": stamp,
                    "change": change + len(rows),
                }
            )
        if rows:
            db.executemany(
                f"INSERT OR REPLACE INTO studies ({', '.join(_STUDY_COLUMNS)}) "
                f"VALUES ({', '.join(':' + c for c in _STUDY_COLUMNS)})",
                rows,
            )
        kept = {r["study_key"] for r in rows}
        if keys is not None:
            gone = [k for k in keys if k not in kept]
            if gone:
                db.execute(f"DELETE FROM studies WHERE study_key IN ({', '.join('?' * len(gone))})", gone)
        else:
            db.execute(
                "DELETE FROM studies WHERE study_key NOT IN "
                f"(SELECT study_key FROM images WHERE source != '{STUDY_SOURCE}')"
            )

    def rebuild_studies(self) -> None:
        """Rewrite every studies row from the images: after images were loaded in bulk (benchmarks,
        a migration from another system) rather than through :meth:`add_image`."""
        with self._transaction() as db:
            self._refresh_studies(db, None)

    @staticmethod
    def _study_keys(db: sqlite3.Connection, image_ids: Sequence[str]) -> list[str]:
        marks = ", ".join("?" * len(image_ids))
        query = f"SELECT DISTINCT study_key FROM images WHERE id IN ({marks})"
        return [r[0] for r in db.execute(query, image_ids)]

    def studies(self, query: WorklistQuery | None = None) -> list[dict[str, Any]]:
        """The worklist's studies matching ``query`` (default: all, the most suspicious first)."""
        return self.study_page(query or WorklistQuery()).studies

    def study_page(self, query: WorklistQuery) -> StudyPage:
        """One page of the worklist, filtered, sorted and paged in SQL, with the total matching."""
        if query.sort not in SORTS:
            raise ValueError(f"sort {query.sort!r}: valid are {', '.join(SORTS)}")
        where, args = _filters(query)
        order = [_flip(term) if query.descending else term for term in SORTS[query.sort]]
        order.append("study_key DESC" if query.descending else "study_key")
        db = self._connection()
        db.execute("BEGIN")  # one snapshot: the page, its total and the cursor agree
        try:
            cursor = db.execute("SELECT COALESCE(MAX(change), 0) FROM studies").fetchone()[0]
            total = db.execute(f"SELECT COUNT(*) FROM studies {where}", args).fetchone()[0]
            page = f" LIMIT {int(query.limit)} OFFSET {max(0, int(query.offset))}" if query.limit else ""
            rows = db.execute(
                f"SELECT {', '.join(_STUDY_COLUMNS)} FROM studies {where} ORDER BY {', '.join(order)}{page}",
                args,
            ).fetchall()
            entries = self._entries(db, rows)
        finally:
            db.execute("COMMIT")
        return StudyPage(entries, total, cursor)

    def study(self, study_key: str) -> dict[str, Any] | None:
        """One study's worklist entry, or None."""
        db = self._connection()
        row = db.execute(
            f"SELECT {', '.join(_STUDY_COLUMNS)} FROM studies WHERE study_key = ?", (study_key,)
        ).fetchone()
        return self._entries(db, [row])[0] if row else None

    def change_cursor(self) -> int:
        """The change counter now: every later change to a study has a larger number."""
        return self._connection().execute("SELECT COALESCE(MAX(change), 0) FROM studies").fetchone()[0]

    def changes(self, since: int, limit: int = 500) -> tuple[list[dict[str, Any]], int, bool]:
        """Studies changed after change number ``since``, oldest change first: (entries, the cursor
        to ask from next, whether more are left). Each study's row has a number of its own, so a
        long feed split into parts loses nothing."""
        db = self._connection()
        rows = db.execute(
            f"SELECT {', '.join(_STUDY_COLUMNS)} FROM studies WHERE change > ? ORDER BY change LIMIT ?",
            (since, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        if not rows:
            return [], max(since, 0), False
        return self._entries(db, rows), rows[-1]["change"], more

    def _entries(self, db: sqlite3.Connection, rows: Sequence[sqlite3.Row]) -> list[dict[str, Any]]:
        """Studies rows as the API shows them, with their image ids and undelivered results."""
        keys = [r["study_key"] for r in rows]
        images: dict[str, list[str]] = {k: [] for k in keys}
        undelivered: dict[str, int] = {}
        for chunk in (keys[i : i + 500] for i in range(0, len(keys), 500)):
            marks = ", ".join("?" * len(chunk))
            for r in db.execute(
                f"SELECT study_key, id FROM images WHERE study_key IN ({marks}) AND source != ? "
                "ORDER BY received_at, rowid",
                [*chunk, STUDY_SOURCE],
            ):
                images[r["study_key"]].append(r["id"])
            for r in db.execute(
                f"SELECT i.study_key, COUNT(*) AS n FROM sends s JOIN images i ON i.id = s.image_id "
                f"WHERE i.study_key IN ({marks}) AND s.status != 'sent' GROUP BY i.study_key",
                chunk,
            ):
                undelivered[r["study_key"]] = r["n"]
        return [_study_entry(r, images[r["study_key"]], undelivered.get(r["study_key"], 0)) for r in rows]

    def finished_images(self) -> list[dict[str, Any]]:
        """Every finished image (analysed, refused, failed) in worklist order, in one query."""
        order = ", ".join(f"s.{t}" for t in SORTS["priority"])
        rows = self._connection().execute(
            "SELECT i.id, i.probability, i.category, i.error, i.model_id FROM images i "
            "JOIN studies s ON s.study_key = i.study_key WHERE i.status IN ('done', 'refused', 'failed') "
            f"AND i.source != '{STUDY_SOURCE}' "
            f"ORDER BY {order}, s.study_key, i.received_at, i.rowid"
        )
        return [dict(r) for r in rows]

    def mark_read(self, study_key: str, reader: str, read: bool) -> bool:
        """Mark a study read (or unread again); False when there is no such study."""
        with self._transaction() as db:
            exists = db.execute(
                "SELECT 1 FROM images WHERE study_key = ? AND source != ? LIMIT 1", (study_key, STUDY_SOURCE)
            ).fetchone()
            if not exists:
                return False
            if read:
                db.execute(
                    "INSERT OR REPLACE INTO study_reads (study_key, read_by, read_at) VALUES (?, ?, ?)",
                    (study_key, reader, now()),
                )
            else:
                db.execute("DELETE FROM study_reads WHERE study_key = ?", (study_key,))
            self._refresh_studies(db, [study_key])
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

    def monitored_images(self) -> list[dict[str, Any]]:
        """Every analysed image with what site monitoring needs, oldest first: when it came, the
        model's answer, the DICOM body part and modality, the region head's answer kept in the
        result (``region``, None without one), and the latest reader's verdict on it
        (``reader_label``, None where no reader gave one); a reader study's cases are no site
        traffic and are left out; in one query (results are not parsed
        in Python: a year's images stay quick)."""
        rows = self._connection().execute(
            "SELECT i.id, i.received_at, i.source, i.probability, i.category, i.body_part, i.modality, "
            "json_extract(i.result, '$.scope.region') AS region, "
            "json_extract(i.result, '$.inputs.manufacturer') AS manufacturer, "
            "json_extract(i.result, '$.inputs.brightness') AS brightness, "
            "(SELECT f.reader_label FROM feedback f "
            "WHERE f.image_id = i.id ORDER BY f.id DESC LIMIT 1) AS reader_label "
            f"FROM images i WHERE i.status = 'done' AND i.source != '{STUDY_SOURCE}' "
            "ORDER BY i.received_at, i.rowid"
        )
        return [dict(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Clinical images by analysis state (a reader study's cases, analysed after them, are no
        site traffic: its progress page counts them)."""
        rows = self._connection().execute(
            "SELECT status, COUNT(*) AS n FROM images WHERE source != ? GROUP BY status", (STUDY_SOURCE,)
        )
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

    def results_ready(self, quiet_s: float) -> list[str]:
        """The study keys whose results can be made now, oldest first: some image of the study
        waits for its results, none is still queued or being analysed, and no image of the study
        arrived in the last ``quiet_s`` seconds (the study is complete, whichever associations
        brought it)."""
        quiet_since = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=quiet_s)).isoformat(
            timespec="milliseconds"
        )
        rows = self._connection().execute(
            "SELECT i.study_key, MIN(i.received_at) AS first FROM images i "
            "WHERE i.results = 'pending' AND i.status IN ('done', 'refused', 'failed') "
            "AND NOT EXISTS (SELECT 1 FROM images j WHERE j.study_key = i.study_key "
            "AND (j.status IN ('queued', 'analysing') OR j.received_at > ?)) "
            "GROUP BY i.study_key ORDER BY first",
            (quiet_since,),
        )
        return [r["study_key"] for r in rows]

    def objects_ready(self) -> list[str]:
        """The analysed images whose own result objects (SC, presentation state) are to be made
        now, oldest analysis first: their results wait, and none were made for this analysis."""
        rows = self._connection().execute(
            "SELECT id FROM images WHERE results = 'pending' AND status = 'done' AND objects_at IS NULL "
            "ORDER BY analysed_at, rowid"
        )
        return [r["id"] for r in rows]

    def analysis_waiting(self) -> bool:
        """Whether some patient's image is queued or being analysed (reader-study cases wait behind
        patients' images and do not count)."""
        row = self._connection().execute(
            "SELECT 1 FROM images WHERE status IN ('queued', 'analysing') AND source != ? LIMIT 1",
            (STUDY_SOURCE,),
        ).fetchone()
        return row is not None

    def record_objects(self, image_id: str, sends: list[NewSend], error: str | None = None) -> bool:
        """In one transaction: the image's own objects are made, queued as ``sends`` (an object
        already queued for its destination is not queued again), and ``error`` says which could
        not be (kept until its study's report settles the image's results). Only an image still
        waiting for them changes; returns whether it did."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE images SET objects_at = ?, results_error = ? "
                "WHERE id = ? AND results = 'pending' AND objects_at IS NULL",
                (now(), error[:500] if error else None, image_id),
            ).rowcount
            if changed:
                queued = {
                    (r["destination"], r["sop_instance_uid"])
                    for r in db.execute(
                        "SELECT destination, sop_instance_uid FROM sends WHERE image_id = ?", (image_id,)
                    )
                }
                insert_sends(
                    db, [s for s in sends if (s.destination, s.sop_instance_uid) not in queued], now()
                )
        return bool(changed)

    def study_reports(self, study_key: str, destination: str) -> list[str]:
        """The SOP Instance UIDs of the study's structured reports queued for ``destination`` so far,
        oldest first: the versions a new one replaces."""
        rows = self._connection().execute(
            "SELECT s.sop_instance_uid, MIN(s.id) AS first FROM sends s JOIN images i ON i.id = s.image_id "
            "WHERE i.study_key = ? AND s.destination = ? AND s.kind = 'sr' "
            "GROUP BY s.sop_instance_uid ORDER BY first",
            (study_key, destination),
        )
        return [r["sop_instance_uid"] for r in rows]

    def sent_instance(self, sop_instance_uid: str) -> bool:
        """Whether fracsight made and queued an object with this SOP Instance UID (one of its own
        results, routed back)."""
        row = self._connection().execute(
            "SELECT 1 FROM sends WHERE sop_instance_uid = ? LIMIT 1", (sop_instance_uid,)
        ).fetchone()
        return row is not None

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
            return db.execute(
                "UPDATE images SET results = 'pending', objects_at = NULL WHERE results = 'failed'"
            ).rowcount


_STEPS = {
    1: lambda store, db: None,  # the store as first released: the idempotent schema above
    2: SqliteStore._step_studies_table,
    3: lambda store, db: store._refresh_studies(db, None),  # "out_of_scope" joined the worklist order
    4: SqliteStore._step_study_source,
}


def worklist_rank(category: str | None, n_pending: int) -> int:
    """A study's place in :data:`WORKLIST_ORDER`: its answer, else pending, else nothing analysable."""
    state = category or ("pending" if n_pending else "refused")
    return WORKLIST_ORDER.index(state) if state in WORKLIST_ORDER else len(WORKLIST_ORDER)


def _rank_sql(column: str) -> str:
    """:data:`CATEGORY_RANK` as an SQL expression over ``column``."""
    cases = " ".join(f"WHEN '{name}' THEN {rank}" for name, rank in CATEGORY_RANK.items())
    return f"CASE {column} {cases} ELSE {len(CATEGORY_RANK)} END"


# A study's row from its images: counts by status, the first image's fields, the most suspicious
# analysed image's answer (by CATEGORY_RANK, then probability), its read state.
_REFRESH = (
    """
WITH imgs AS (SELECT rowid AS rid, * FROM images {where}),
first AS (
    SELECT * FROM (
        SELECT *, ROW_NUMBER() OVER (PARTITION BY study_key ORDER BY received_at, rid) AS n FROM imgs
    ) WHERE n = 1
),
worst AS (
    SELECT * FROM (
        SELECT study_key, category, probability, ROW_NUMBER() OVER (
            PARTITION BY study_key ORDER BY """
    + _rank_sql("category")
    + """, probability DESC, received_at, rid) AS n
        FROM imgs WHERE status = 'done'
    ) WHERE n = 1
),
counts AS (
    SELECT study_key, COUNT(*) AS n_images,
        SUM(status IN ('queued', 'analysing')) AS n_pending,
        SUM(status IN ('refused', 'failed')) AS n_refused,
        SUM(status = 'done') AS n_done,
        -- the header's body part, else the region head's answer (images without a header)
        GROUP_CONCAT(DISTINCT LOWER(NULLIF(COALESCE(NULLIF(body_part, ''),
            CASE WHEN json_valid(result) THEN json_extract(result, '$.scope.region') END), ''))) AS regions
    FROM imgs GROUP BY study_key
)
SELECT c.*, """
    + ", ".join(f"f.{c}" for c in _STUDY_INFO)
    + """, f.received_at, w.category, w.probability, r.read_by, r.read_at
FROM counts c JOIN first f ON f.study_key = c.study_key
LEFT JOIN worst w ON w.study_key = c.study_key
LEFT JOIN study_reads r ON r.study_key = c.study_key
"""
)


def _day(study_date: str, received_at: str) -> str:
    """YYYY-MM-DD: the DICOM study date where there is a valid one, else the day first received."""
    if len(study_date) == 8 and study_date.isdigit():
        return f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:]}"
    return received_at[:10]


def _filters(query: WorklistQuery) -> tuple[str, tuple]:
    terms: list[str] = []
    args: list[Any] = []
    if query.category:
        # A category is one worklist rank: the filter reads the priority indexes in their order.
        terms.append("rank = ?")
        args.append(worklist_rank(query.category, 0))
    if query.read is not None:  # spelled as the partial indexes' conditions, so they are used
        terms.append("read_at IS NOT NULL" if query.read else "read_at IS NULL")
    if query.search and query.search.strip():
        escaped = query.search.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        terms.append("search LIKE ? ESCAPE '\\'")
        args.append(f"%{escaped}%")
    if query.date_from:
        terms.append("day >= ?")
        args.append(query.date_from)
    if query.date_to:
        terms.append("day <= ?")
        args.append(query.date_to)
    return ("WHERE " + " AND ".join(terms) if terms else ""), tuple(args)


def _flip(term: str) -> str:
    return term[: -len(" DESC")] if term.endswith(" DESC") else term + " DESC"


def _study_entry(row: sqlite3.Row, images: list[str], undelivered: int) -> dict[str, Any]:
    """A studies row as the API shows it."""
    return {
        "study": row["study_key"],
        "study_instance_uid": row["study_instance_uid"] or None,
        **{c: row[c] for c in _STUDY_INFO if c != "study_instance_uid"},
        "regions": row["regions"].split(",") if row["regions"] else [],
        "received_at": row["received_at"],
        "n_images": row["n_images"],
        "n_pending": row["n_pending"],
        "n_refused": row["n_refused"],
        # result objects made for the PACS and not delivered yet (retrying, or refused by it)
        "n_undelivered": undelivered,
        "category": row["category"],
        "probability": row["probability"],
        "read": row["read_at"] is not None,
        "read_by": row["read_by"],
        "read_at": row["read_at"],
        "changed_at": row["changed_at"],
        "change": row["change"],
        "images": images,
    }
