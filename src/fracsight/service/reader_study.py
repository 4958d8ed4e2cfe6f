"""Reader studies run in the service: readers read the same cases without and with the AI.

A multi-reader multi-case (MRMC) study, fully crossed (every reader reads every case in both arms,
``unaided`` and ``aided``), collected so that ``fracsight readers`` can analyse the export as is.
Each reader has two sessions, one per arm; which arm comes first alternates across readers in the
order given (counterbalancing), and each session's case order is a permutation drawn from
``numpy.random.default_rng(seed)`` (:func:`session_orders`), the seed recorded with the study. The
second session opens only ``washout_days`` after the first ended; the service refuses it before.

What the reader's page can fetch is decided here, server-side: the current case only; in the
unaided arm no category, probability or heat map (the case answer omits them and the overlay is
refused); never the truth, another reader's reads or the reader's own earlier read. While a reader
still has an unaided session to read, the rest of the API (worklist, images, studies, exports) is
closed to them (:func:`install`'s guard), and a study case's image is never served to its readers
by ``/api/images``. Reads are written once (a unique key per reader, case and arm) and carry who,
when, and which model build (id, version, ONNX SHA-256) was shown.

The tables live in the store's SQLite file, made here with ``CREATE TABLE IF NOT EXISTS`` on this
module's own connections (as :mod:`fracsight.service.users` does), so the store's schema does not
need to know them (only its schema step 4 reads ``reader_study_images``, to move cases kept as
uploads before they had a source of their own). A case's images are kept with source
:data:`~fracsight.service.store.STUDY_SOURCE`: analysed, but in no worklist or site monitoring.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, Field

from fracsight.decide import Category, study_answer
from fracsight.explain import heatmap_layer, heatmap_outline
from fracsight.preprocess import Letterbox
from fracsight.reader_study.data import UNSPECIFIED_REGION
from fracsight.service.connections import close_thread_connection, thread_connection
from fracsight.service.identity import Administrator, SignedIn
from fracsight.service.intake import UploadRefused, receive_stream
from fracsight.service.store import STUDY_SOURCE, Store
from fracsight.service.users import User, UserDirectory
from fracsight.service.worker import display_path

UNAIDED = "unaided"
AIDED = "aided"
ARMS = (UNAIDED, AIDED)
DEFAULT_WASHOUT_DAYS = 28.0  # Guermazi et al., Radiology 2022: a 1-month washout
MAX_CASE_FILE_BYTES = 512 * 1024 * 1024
OVERLAY_MAX_SIDE = 1024
IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ""}
# What a reader with an unaided session still to read may call outside the study's own routes.
_OPEN_TO_READERS = {"/api/me", "/api/health", "/api/categories"}
_IMAGE_PATH = re.compile(r"^/api/images/([A-Za-z0-9]+)(/.*)?$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reader_studies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    seed INTEGER NOT NULL,
    washout_days REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reader_study_cases (
    study_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    case_id TEXT NOT NULL,
    case_key TEXT NOT NULL,
    truth INTEGER NOT NULL CHECK (truth IN (0, 1)),
    region TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (study_id, case_id),
    UNIQUE (study_id, case_key)
);
CREATE TABLE IF NOT EXISTS reader_study_images (
    study_id TEXT NOT NULL,
    case_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    image_id TEXT NOT NULL,
    boxes TEXT NOT NULL DEFAULT '',  -- the fracture boxes on this image, JSON [[x0, y0, x1, y1], ...]
    PRIMARY KEY (study_id, case_id, ordinal)
);
CREATE INDEX IF NOT EXISTS reader_study_images_by_image ON reader_study_images (image_id);
CREATE TABLE IF NOT EXISTS reader_study_sessions (
    study_id TEXT NOT NULL,
    reader TEXT NOT NULL,
    reader_index INTEGER NOT NULL,
    session INTEGER NOT NULL CHECK (session IN (1, 2)),
    arm TEXT NOT NULL CHECK (arm IN ('unaided', 'aided')),
    case_order TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    PRIMARY KEY (study_id, reader, session)
);
-- the guard asks on every reader's API call whether an unaided session is still open
CREATE INDEX IF NOT EXISTS reader_study_sessions_by_reader
    ON reader_study_sessions (reader, arm, finished_at);
CREATE TABLE IF NOT EXISTS reader_study_reads (
    study_id TEXT NOT NULL,
    reader TEXT NOT NULL,
    session INTEGER NOT NULL,
    arm TEXT NOT NULL,
    case_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    fracture INTEGER NOT NULL,
    confidence INTEGER NOT NULL,
    click_image INTEGER,
    click_x REAL,
    click_y REAL,
    time_ms INTEGER NOT NULL,
    read_at TEXT NOT NULL,
    ai_shown INTEGER NOT NULL,
    model_id TEXT NOT NULL DEFAULT '',
    model_version TEXT NOT NULL DEFAULT '',
    model_sha256 TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (study_id, reader, arm, case_id),
    UNIQUE (study_id, reader, session, position)
);
"""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# The clock the washout is measured by; tests replace it (``reader_study.CLOCK = ...``).
CLOCK: Callable[[], dt.datetime] = utcnow


def _now() -> dt.datetime:
    return CLOCK()


def _stamp(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


class StudyError(ValueError):
    """A study that cannot be made as asked (the message says why; no patient data in it)."""


@dataclass(frozen=True)
class CaseSpec:
    """One case of the case list: its images, truth, and where known its region and, per image,
    the fracture boxes (JSON ``[[x0, y0, x1, y1], ...]`` in the image's pixels, '' when unknown)."""

    case_id: str
    paths: tuple[Path, ...]
    truth: int
    region: str = ""
    boxes: tuple[str, ...] = ()

    def boxes_of(self, ordinal: int) -> str:
        return self.boxes[ordinal] if ordinal < len(self.boxes) else ""


def session_orders(seed: int, n_readers: int, n_cases: int) -> list[list[list[int]]]:
    """The case order (indices into the case list) of each reader's session 1 and 2, drawn in
    that order from ``numpy.random.default_rng(seed)``: reproducible from the recorded seed."""
    rng = np.random.default_rng(seed)
    return [[rng.permutation(n_cases).tolist() for _ in (1, 2)] for _ in range(n_readers)]


def first_arm(reader_index: int) -> str:
    """Counterbalancing: readers take the unaided arm first and second in turn."""
    return ARMS[reader_index % 2]


def read_case_list(source: Path) -> list[CaseSpec]:
    """The cases of a CSV (case, path, truth 0/1 [, region, box]; several rows per case for a case
    of several images; paths relative to the CSV's folder) or of a folder holding ``fractured/``
    and ``not_fractured/`` (or ``non_fractured/``) subfolders of images, one image per case."""
    source = Path(source)
    if source.is_dir():
        return _folder_cases(source)
    if not source.is_file():
        raise StudyError("the case list is neither a CSV file nor a folder on the server")
    from fracsight.reader_study.table import find_column, read_rows

    header, rows = read_rows(source)
    case_col = find_column(header, ("case_id", "case", "caseid", "case id"), source, required=True)
    path_col = find_column(header, ("path", "file", "image"), source, required=True)
    truth_col = find_column(header, ("truth", "fractured", "fracture", "label"), source, required=True)
    region_col = find_column(header, ("region", "body_region", "site"), source, required=False)
    box_col = find_column(header, ("box", "fracture_box", "bbox"), source, required=False)
    cases: dict[str, dict[str, Any]] = {}
    for line, row in enumerate(rows, start=2):
        case = row[case_col].strip()
        truth = row[truth_col].strip()
        if not case or truth not in ("0", "1"):
            raise StudyError(f"line {line}: a case id and a truth of 0 or 1 are needed")
        entry = cases.setdefault(case, {"paths": [], "truth": int(truth), "region": "", "boxes": []})
        if entry["truth"] != int(truth):
            raise StudyError(f"line {line}: the case's truth differs from an earlier row's")
        path = Path(row[path_col].strip())
        entry["paths"].append(path if path.is_absolute() else source.parent / path)
        if region_col and row[region_col].strip():
            entry["region"] = row[region_col].strip()
        entry["boxes"].append(_check_boxes(row[box_col] if box_col else "", line))
    return [CaseSpec(c, tuple(e["paths"]), e["truth"], e["region"], tuple(e["boxes"]))
            for c, e in cases.items()]


def _check_boxes(text: str, line: int) -> str:
    """A case-list ``box`` cell as stored: '' or the JSON list of boxes (StudyError when malformed)."""
    from fracsight.data.boxes import parse_boxes

    try:
        boxes = parse_boxes(text.strip())
    except ValueError:
        raise StudyError(f"line {line}: the box is not a JSON list of [x0, y0, x1, y1]") from None
    return json.dumps([list(b) for b in boxes]) if boxes else ""


def _folder_cases(folder: Path) -> list[CaseSpec]:
    truths = {"fractured": 1, "not_fractured": 0, "non_fractured": 0, "normal": 0}
    cases = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        truth = truths.get(sub.name.lower())
        if truth is None:
            continue
        for file in sorted(sub.iterdir()):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                cases.append(CaseSpec(file.stem, (file,), truth))
    if not cases:
        raise StudyError("the folder has no fractured/ and not_fractured/ subfolders of images")
    return cases


class StudyBook:
    """The reader-study tables in the store's SQLite file, one connection per thread."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(db_path)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        return thread_connection(self._local, self.path)

    def close(self) -> None:
        close_thread_connection(self._local)

    def create(
        self, store: Store, name: str, cases: list[CaseSpec], readers: list[str], *, by: str,
        washout_days: float, seed: int | None = None,
    ) -> str:  # fmt: skip
        """Make the study: its cases' images go through the upload intake (the worker analyses
        them), and each reader's two sessions with their arms and case orders are fixed now."""
        if len(set(readers)) != len(readers) or len(readers) < 2:
            raise StudyError("give at least two readers, each once")
        if len({c.case_id for c in cases}) != len(cases) or len(cases) < 2:
            raise StudyError("give at least two cases, each case id once")
        if len({c.truth for c in cases}) < 2:
            raise StudyError("the cases need both truths (fractured and not) for ROC analysis")
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        study_id = secrets.token_hex(8)
        images: list[tuple[str, int, str, str]] = []
        for number, case in enumerate(cases, start=1):
            for ordinal, path in enumerate(case.paths):
                images.append((case.case_id, ordinal, _ingest(store, path, number), case.boxes_of(ordinal)))
        orders = session_orders(seed, len(readers), len(cases))
        created = _stamp(_now())
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO reader_studies VALUES (?, ?, ?, ?, ?, ?)",
                (study_id, name, created, by, seed, float(washout_days)),
            )
            db.executemany(
                "INSERT INTO reader_study_cases VALUES (?, ?, ?, ?, ?, ?)",
                [(study_id, i, c.case_id, secrets.token_hex(6), c.truth, c.region)
                 for i, c in enumerate(cases)],
            )  # fmt: skip
            db.executemany(
                "INSERT INTO reader_study_images VALUES (?, ?, ?, ?, ?)",
                [(study_id, *image) for image in images],
            )
            for index, reader in enumerate(readers):
                arms = (first_arm(index), ARMS[1 - ARMS.index(first_arm(index))])
                for session in (1, 2):
                    ids = [cases[i].case_id for i in orders[index][session - 1]]
                    db.execute(
                        "INSERT INTO reader_study_sessions (study_id, reader, reader_index, session, arm, "
                        "case_order) VALUES (?, ?, ?, ?, ?, ?)",
                        (study_id, reader, index, session, arms[session - 1], json.dumps(ids)),
                    )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return study_id

    def study(self, study_id: str) -> sqlite3.Row | None:
        return self._db().execute("SELECT * FROM reader_studies WHERE id = ?", (study_id,)).fetchone()

    def studies(self) -> list[sqlite3.Row]:
        return self._db().execute("SELECT * FROM reader_studies ORDER BY created_at").fetchall()

    def cases(self, study_id: str) -> list[sqlite3.Row]:
        return self._db().execute(
            "SELECT * FROM reader_study_cases WHERE study_id = ? ORDER BY position", (study_id,)
        ).fetchall()

    def case_images(self, study_id: str, case_id: str) -> list[str]:
        rows = self._db().execute(
            "SELECT image_id FROM reader_study_images WHERE study_id = ? AND case_id = ? ORDER BY ordinal",
            (study_id, case_id),
        )
        return [r["image_id"] for r in rows]

    def sessions(self, study_id: str, reader: str | None = None) -> list[sqlite3.Row]:
        if reader is None:
            return self._db().execute(
                "SELECT * FROM reader_study_sessions WHERE study_id = ? ORDER BY reader_index, session",
                (study_id,),
            ).fetchall()
        return self._db().execute(
            "SELECT * FROM reader_study_sessions WHERE study_id = ? AND reader = ? ORDER BY session",
            (study_id, reader),
        ).fetchall()

    def reads(self, study_id: str) -> list[sqlite3.Row]:
        return self._db().execute(
            "SELECT r.*, c.truth, c.region, i.boxes FROM reader_study_reads r JOIN reader_study_cases c "
            "ON c.study_id = r.study_id AND c.case_id = r.case_id LEFT JOIN reader_study_images i "
            "ON i.study_id = r.study_id AND i.case_id = r.case_id AND i.ordinal = r.click_image "
            "WHERE r.study_id = ? "
            "ORDER BY r.reader, r.session, r.position",
            (study_id,),
        ).fetchall()

    def read_count(self, study_id: str, reader: str, session: int) -> int:
        return self._db().execute(
            "SELECT COUNT(*) FROM reader_study_reads WHERE study_id = ? AND reader = ? AND session = ?",
            (study_id, reader, session),
        ).fetchone()[0]

    def mark_started(self, study_id: str, reader: str, session: int) -> None:
        self._db().execute(
            "UPDATE reader_study_sessions SET started_at = ? WHERE study_id = ? AND reader = ? "
            "AND session = ? AND started_at IS NULL",
            (_stamp(_now()), study_id, reader, session),
        )

    def record(self, values: dict[str, Any], last: bool) -> None:
        """Write one read (once: a second read of the same case and arm is refused by the key)
        and, after the session's last case, the session's end."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            columns = ", ".join(values)
            db.execute(
                f"INSERT INTO reader_study_reads ({columns}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )
            if last:
                db.execute(
                    "UPDATE reader_study_sessions SET finished_at = ? WHERE study_id = ? AND reader = ? "
                    "AND session = ?",
                    (values["read_at"], values["study_id"], values["reader"], values["session"]),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def unaided_pending(self, reader: str) -> bool:
        """Whether ``reader`` has an unaided session still to read in some study."""
        return (
            self._db().execute(
                "SELECT 1 FROM reader_study_sessions WHERE reader = ? AND arm = 'unaided' "
                "AND finished_at IS NULL LIMIT 1",
                (reader,),
            ).fetchone()
            is not None
        )

    def reads_image(self, reader: str, image_id: str) -> bool:
        """Whether ``image_id`` belongs to a case of a study ``reader`` reads in."""
        return (
            self._db().execute(
                "SELECT 1 FROM reader_study_images i JOIN reader_study_sessions s "
                "ON s.study_id = i.study_id WHERE i.image_id = ? AND s.reader = ? LIMIT 1",
                (image_id, reader),
            ).fetchone()
            is not None
        )


def _ingest(store: Store, path: Path, number: int) -> str:
    """One case image through the upload intake as a study case (the worker analyses it, no
    worklist shows it); its image id."""
    try:
        with open(path, "rb") as fh:
            chunks = iter(lambda: fh.read(1 << 20), b"")
            received = receive_stream(store, chunks, MAX_CASE_FILE_BYTES, STUDY_SOURCE)
    except OSError:
        raise StudyError(f"case {number}: an image file could not be read") from None
    except UploadRefused as exc:
        raise StudyError(f"case {number}: an image was refused: {exc.reason}") from None
    return received.id


# ---- the API ------------------------------------------------------------------------------------


class CaseIn(BaseModel):
    case: str = Field(min_length=1, max_length=200)
    path: list[str] = Field(min_length=1)
    truth: int = Field(ge=0, le=1)
    region: str = Field(default="", max_length=100)
    boxes: list[str] = Field(default_factory=list)  # per image: '' or JSON [[x0, y0, x1, y1], ...]


class StudyIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    readers: list[str] = Field(min_length=2, max_length=200)
    washout_days: float = Field(default=DEFAULT_WASHOUT_DAYS, ge=0, le=3650)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    case_list: str | None = Field(default=None, max_length=4000)  # a CSV or folder on the server
    cases: list[CaseIn] | None = None


class ClickIn(BaseModel):
    image: int = Field(ge=0, le=64)
    x: float = Field(ge=0)  # in the image's pixels
    y: float = Field(ge=0)


class ReadIn(BaseModel):
    case: str = Field(min_length=1, max_length=64)  # the case key the page was given
    fracture: bool
    confidence: int = Field(ge=0, le=100)  # how likely a fracture is, 0 (surely not) to 100 (surely)
    click: ClickIn | None = None
    time_ms: int = Field(ge=0, le=24 * 3600 * 1000)




def install(app: FastAPI, store: Store, users: UserDirectory) -> StudyBook:
    """Add the reader-study routes and the guard that keeps the AI and study images from readers
    (call before the service's own guard middleware is added, so that guard signs the user in
    first); returns the study tables."""
    book = StudyBook(Path(store.data_dir) / "fracsight.db")

    @app.middleware("http")
    async def study_guard(request: Request, call_next):
        user = getattr(request.state, "user", None)
        path = request.url.path
        if (
            user is not None
            and not user.is_admin
            and path.startswith("/api/")
            and not path.startswith("/api/reader-studies")
            and path not in _OPEN_TO_READERS
        ):
            if book.unaided_pending(user.name):
                return JSONResponse(
                    {"detail": "you read a reader study without the AI: the rest of the service opens "
                     "again when your unaided session is done"}, 403)  # fmt: skip
            match = _IMAGE_PATH.match(path)
            if match and book.reads_image(user.name, match.group(1)):
                return JSONResponse({"detail": "a reader-study case: read it on the study page"}, 403)
        return await call_next(request)

    app.include_router(_router(book, store, users))
    return book


def _router(book: StudyBook, store: Store, users: UserDirectory) -> APIRouter:
    router = APIRouter(prefix="/api/reader-studies")

    def a_study(study_id: str) -> sqlite3.Row:
        row = book.study(study_id) if study_id.isalnum() and len(study_id) <= 32 else None
        if row is None:
            raise HTTPException(404, "no such reader study")
        return row

    def where(study: sqlite3.Row, reader: str) -> tuple[sqlite3.Row | None, Any]:
        """The reader's current session, or (None, answer): all done, or refused for the washout."""
        sessions = book.sessions(study["id"], reader)
        if not sessions:
            raise HTTPException(403, "you are not a reader of this study")
        first, second = sessions
        if first["finished_at"] is None:
            return first, None
        if second["finished_at"] is not None:
            return None, {"done": True, "detail": "you have read every case of both sessions: thank you"}
        opens = _opens(first["finished_at"], study["washout_days"])
        if _now() < opens:
            return None, JSONResponse(
                {"detail": f"washout: your second session opens on {opens.date().isoformat()} "
                 f"({_stamp(opens)} UTC)", "opens_at": _stamp(opens)}, 409)  # fmt: skip
        return second, None

    @router.get("")
    def list_studies(_: Administrator) -> list[dict[str, Any]]:
        return [_summary(s) for s in book.studies()]

    @router.get("/mine")
    def mine(user: SignedIn) -> list[dict[str, Any]]:
        """The studies the signed-in user reads in (id and name only)."""
        ids = {s["study_id"] for s in book._db().execute(
            "SELECT DISTINCT study_id FROM reader_study_sessions WHERE reader = ?", (user.name,))}
        return [{"id": s["id"], "name": s["name"]} for s in book.studies() if s["id"] in ids]

    @router.post("", status_code=201)
    def create(body: StudyIn, user: Administrator) -> dict[str, Any]:
        """Make a study from a case list (a CSV or folder on the server, or ``cases``)."""
        for reader in body.readers:
            account = users.get(reader)
            if account is None or account.revoked_at is not None:
                raise HTTPException(422, f"no active user named {reader!r}: make the readers' accounts first")
            if account.is_admin:  # administrators are never kept from the AI: they cannot read blind
                raise HTTPException(422, f"{reader!r} is an administrator: readers need reader accounts")
        try:
            if body.cases:
                cases = [CaseSpec(c.case, tuple(Path(p) for p in c.path), c.truth, c.region,
                                  tuple(_check_boxes(b, n) for b in c.boxes))
                         for n, c in enumerate(body.cases, start=1)]  # fmt: skip
            elif body.case_list:
                cases = read_case_list(Path(body.case_list))
            else:
                raise StudyError("give the case list (a CSV or a folder on the server) or the cases")
            study_id = book.create(store, body.name, cases, body.readers, by=user.name,
                                   washout_days=body.washout_days, seed=body.seed)  # fmt: skip
        except (StudyError, ValueError) as exc:
            raise HTTPException(422, str(exc)) from None
        return progress(study_id, user)

    @router.get("/{study_id}")
    def progress(study_id: str, _: Administrator) -> dict[str, Any]:
        """The study, each reader's sessions (arm, read/total, dates, when the second opens), and
        how far the worker has analysed the cases' images."""
        study = a_study(study_id)
        cases = book.cases(study_id)
        statuses: dict[str, int] = {}
        for case in cases:
            for image_id in book.case_images(study_id, case["case_id"]):
                record = store.get_image(image_id)
                status = record.status if record else "missing"
                statuses[status] = statuses.get(status, 0) + 1
        readers: dict[str, dict[str, Any]] = {}
        for s in book.sessions(study_id):
            entry = readers.setdefault(s["reader"], {"reader": s["reader"], "sessions": []})
            opens = None
            if s["session"] == 2:
                finished = entry["sessions"][0]["finished_at"]
                opens = _stamp(_opens(finished, study["washout_days"])) if finished else None
            entry["sessions"].append({
                "session": s["session"], "arm": s["arm"], "total": len(cases),
                "read": book.read_count(study_id, s["reader"], s["session"]),
                "started_at": s["started_at"], "finished_at": s["finished_at"], "opens_at": opens,
            })  # fmt: skip
        n_readers = len(readers)
        return {
            **_summary(study),
            "cases": len(cases),
            "fractured": sum(c["truth"] for c in cases),
            "images": statuses,
            "readers": list(readers.values()),
            "plan_command": f"fracsight readers --plan --readers {n_readers}-{max(n_readers, 15)} "
            "--effect 0.05",
            "analyse_command": "fracsight readers reads.csv --ai ai.csv --clicks clicks.csv "
            "--compare aided:unaided --report report/",
        }

    @router.get("/{study_id}/plan")
    def plan(study_id: str, _: Administrator, effect: float = 0.05) -> dict[str, Any]:
        """``fracsight readers --plan`` for this study's size: its power for ``effect`` (the
        default pilot of the readers command), and the cases needed per reader count."""
        from fracsight.reader_study.power import VAN_DYKE_PILOT, plan_study, power

        if not 0 < effect < 1:
            raise HTTPException(422, "the effect is an AUC difference in (0, 1)")
        a_study(study_id)
        n_readers = len(book.sessions(study_id)) // 2
        n_cases = len(book.cases(study_id))
        here = power(VAN_DYKE_PILOT, effect, n_readers, n_cases)
        rows = plan_study(VAN_DYKE_PILOT, effect, readers=range(max(2, n_readers), max(n_readers, 15) + 1))
        return {
            "pilot": VAN_DYKE_PILOT.source, "effect": effect, "readers": n_readers, "cases": n_cases,
            "power": here.power,
            "plan": [{"readers": r.readers, "cases": r.cases, "power": r.power} for r in rows],
            "command": f"fracsight readers --plan --effect {effect:g} --readers {max(2, n_readers)}-"
                       f"{max(n_readers, 15)}",
        }  # fmt: skip

    @router.get("/{study_id}/next")
    def next_case(study_id: str, user: SignedIn) -> Any:
        """The reader's current case (resumes where they left off): the case key, its images and,
        in the aided arm only, the AI's answer as the product shows it."""
        study = a_study(study_id)
        session, answer = where(study, user.name)
        if session is None:
            return answer
        book.mark_started(study_id, user.name, session["session"])
        order = json.loads(session["case_order"])
        done = book.read_count(study_id, user.name, session["session"])
        case_id = order[done]
        key = _case_key(book, study_id, case_id)
        images = []
        for index, image_id in enumerate(book.case_images(study_id, case_id)):
            record = store.get_image(image_id)
            ready = record is not None and record.status not in ("queued", "analysing")
            shown: dict[str, Any] = {"index": index, "ready": ready, "size": None}
            if ready and record.status == "done":
                shown["size"] = (record.result or {}).get("display")
            if session["arm"] == AIDED and ready:
                shown["ai"] = _ai_shown(record, store.heatmap(image_id))
            images.append(shown)
        out: dict[str, Any] = {
            "study": study_id, "name": study["name"], "session": session["session"], "arm": session["arm"],
            "position": done + 1, "total": len(order), "case": key, "images": images,
            "ready": all(i["ready"] for i in images),
        }  # fmt: skip
        if session["arm"] == AIDED:
            records = [store.get_image(i) for i in book.case_images(study_id, case_id)]
            answer_ = study_answer((r.category, r.probability) for r in records if r is not None)
            out["ai"] = None if answer_ is None else {
                "category": answer_.category.value, "probability": answer_.probability}  # fmt: skip
        return out

    def current(study_id: str, user: User, k: int) -> tuple[sqlite3.Row, str]:
        """(session, image id) of image ``k`` of the reader's current case, or refused."""
        session, answer = where(a_study(study_id), user.name)
        if session is None:
            raise HTTPException(409, "no case is open for you in this study")
        order = json.loads(session["case_order"])
        case_id = order[book.read_count(study_id, user.name, session["session"])]
        ids = book.case_images(study_id, case_id)
        if not 0 <= k < len(ids):
            raise HTTPException(404, "no such image in the current case")
        return session, ids[k]

    @router.get("/{study_id}/images/{k}/pixels", response_class=Response)
    def pixels(study_id: str, k: int, user: SignedIn) -> Response:
        """The current case's image ``k`` for window/level (the format of ``/api/images/{id}/pixels``)."""
        _, image_id = current(study_id, user, k)
        path = display_path(store, image_id)
        if not path.exists():
            raise HTTPException(404, "no pixels for this image yet")
        return FileResponse(path, media_type="application/octet-stream")

    @router.get("/{study_id}/images/{k}/overlay.png", response_class=Response)
    def overlay(study_id: str, k: int, user: SignedIn) -> Response:
        """The heat map of the current case's image ``k``: in the aided arm only."""
        session, image_id = current(study_id, user, k)
        if session["arm"] != AIDED:
            raise HTTPException(403, "no AI in the unaided arm")
        record = store.get_image(image_id)
        heat = store.heatmap(image_id)
        if record is None or record.status != "done" or heat is None or not record.result:
            raise HTTPException(404, "no heat map for this image")
        if record.category == Category.OUT_OF_SCOPE.value:
            raise HTTPException(404, "no heat map: the image is outside what the model knows")
        return Response(_overlay_png(heat, record.result["letterbox"]), media_type="image/png")

    @router.post("/{study_id}/reads", status_code=201)
    def submit(study_id: str, body: ReadIn, user: SignedIn) -> Any:
        """Record the reader's read of their current case; once written it is never changed."""
        study = a_study(study_id)
        session, answer = where(study, user.name)
        if session is None:
            if isinstance(answer, Response):
                return answer
            raise HTTPException(409, "every case of both sessions is read already")
        order = json.loads(session["case_order"])
        done = book.read_count(study_id, user.name, session["session"])
        case_id = order[done]
        if body.case != _case_key(book, study_id, case_id):
            raise HTTPException(409, "not your current case (read already, or not yet): reload the page")
        image_ids = book.case_images(study_id, case_id)
        if body.click is not None and body.click.image >= len(image_ids):
            raise HTTPException(422, "the click names no image of this case")
        model = {"id": "", "version": "", "onnx_sha256": ""}
        if session["arm"] == AIDED:
            for image_id in image_ids:
                record = store.get_image(image_id)
                if record is not None and record.status == "done":
                    model = {**model, **{k: v or "" for k, v in
                                         ((record.result or {}).get("model") or {}).items()}}  # fmt: skip
                    break
        values = {
            "study_id": study_id, "reader": user.name, "session": session["session"], "arm": session["arm"],
            "case_id": case_id, "position": done + 1, "fracture": int(body.fracture),
            "confidence": body.confidence,
            "click_image": body.click.image if body.click else None,
            "click_x": body.click.x if body.click else None, "click_y": body.click.y if body.click else None,
            "time_ms": body.time_ms, "read_at": _stamp(_now()), "ai_shown": int(session["arm"] == AIDED),
            "model_id": str(model["id"]), "model_version": str(model["version"]),
            "model_sha256": str(model["onnx_sha256"]),
        }  # fmt: skip
        try:
            book.record(values, last=done + 1 == len(order))
        except sqlite3.IntegrityError:
            raise HTTPException(409, "this case is read already: a read is never changed") from None
        return {"recorded": True, "position": done + 1, "total": len(order),
                "session_done": done + 1 == len(order), "read_at": values["read_at"]}  # fmt: skip

    @router.get("/{study_id}/reads.csv", response_class=Response)
    def reads_csv(study_id: str, _: Administrator) -> Response:
        """Every read in the ``fracsight readers`` format (case, truth, reader, modality, rating,
        call, region); the rating is the reader's 0-100 confidence that a fracture is present."""
        a_study(study_id)
        rows: list[list[Any]] = [["case", "truth", "reader", "modality", "rating", "call", "region"]]
        for r in book.reads(study_id):
            rows.append([r["case_id"], r["truth"], r["reader"], r["arm"], r["confidence"], r["fracture"],
                         r["region"] or UNSPECIFIED_REGION])  # fmt: skip
        return _csv(rows, "reads.csv")

    @router.get("/{study_id}/ai.csv", response_class=Response)
    def ai_csv(study_id: str, _: Administrator) -> Response:
        """The AI alone per case for ``--ai``: the case's answer (its most suspicious image)."""
        a_study(study_id)
        rows: list[list[Any]] = [["case_id", "probability", "category", "error", "model"]]
        for case in book.cases(study_id):
            records = [store.get_image(i) for i in book.case_images(study_id, case["case_id"])]
            done = [r for r in records if r is not None and r.status == "done"]
            answer = study_answer((r.category, r.probability) for r in done)
            if answer is None:
                rows.append([case["case_id"], "", "", "not analysed", ""])
            else:
                rows.append([case["case_id"], f"{answer.probability:.6f}", answer.category.value, "",
                             done[0].model_id or ""])  # fmt: skip
        return _csv(rows, "ai.csv")

    @router.get("/{study_id}/clicks.csv", response_class=Response)
    def clicks_csv(study_id: str, _: Administrator) -> Response:
        """Per read: the click on the suspected site (image index, x, y in its pixels), the time
        spent, when, and the model build shown (empty in the unaided arm: none was shown)."""
        a_study(study_id)
        rows: list[list[Any]] = [["case", "truth", "reader", "modality", "session", "position", "call",
                                  "image", "x", "y", "boxes", "hit", "time_ms", "read_at", "model_id",
                                  "model_version", "model_sha256"]]
        for r in book.reads(study_id):
            rows.append([r["case_id"], r["truth"], r["reader"], r["arm"], r["session"], r["position"],
                         r["fracture"], "" if r["click_image"] is None else r["click_image"],
                         "" if r["click_x"] is None else f"{r['click_x']:.1f}",
                         "" if r["click_y"] is None else f"{r['click_y']:.1f}",
                         r["boxes"] or "", _hit(r), r["time_ms"], r["read_at"], r["model_id"],
                         r["model_version"], r["model_sha256"]])
        return _csv(rows, "clicks.csv")  # fmt: skip

    return router


def _hit(read: sqlite3.Row) -> int | str:
    """1 when the click lies in a fracture box of the clicked image, 0 when not; '' when there is
    no click or the image has no box to score it against."""
    if read["click_x"] is None or not read["boxes"]:
        return ""
    x, y = read["click_x"], read["click_y"]
    return int(any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in json.loads(read["boxes"])))


def _case_key(book: StudyBook, study_id: str, case_id: str) -> str:
    row = book._db().execute(
        "SELECT case_key FROM reader_study_cases WHERE study_id = ? AND case_id = ?", (study_id, case_id)
    ).fetchone()
    return row["case_key"]


def _opens(finished_at: str, washout_days: float) -> dt.datetime:
    return dt.datetime.fromisoformat(finished_at) + dt.timedelta(days=float(washout_days))


def _summary(study: sqlite3.Row) -> dict[str, Any]:
    return {"id": study["id"], "name": study["name"], "created_at": study["created_at"],
            "created_by": study["created_by"], "seed": study["seed"], "washout_days": study["washout_days"],
            "design": "fully crossed: readers x cases x {unaided, aided}"}  # fmt: skip


def _ai_shown(record, heat: np.ndarray | None) -> dict[str, Any]:
    """The AI's answer on one image as the viewer shows it (aided arm only): with the hot region's
    outline in the original image's pixels, as the viewer's ``/api/images/{id}`` gives it (one
    :func:`heatmap_outline`, the polygon the DICOM presentation state draws)."""
    if record.status != "done":
        return {"category": None, "probability": None, "error": record.error}
    scored = record.category != Category.OUT_OF_SCOPE.value
    out = {"category": record.category, "probability": record.probability, "heatmap": scored,
           "model": (record.result or {}).get("model", {"id": record.model_id})}  # fmt: skip
    if scored and heat is not None and "letterbox" in (record.result or {}):
        polygon = heatmap_outline(heat, Letterbox(**record.result["letterbox"]))
        out["outline"] = [[round(x, 1), round(y, 1)] for x, y in polygon]
    return out


def _overlay_png(heat: np.ndarray, letterbox: dict[str, Any]) -> bytes:
    box = Letterbox(**letterbox)
    scale = min(1.0, OVERLAY_MAX_SIDE / max(box.width, box.height))
    size = (max(1, round(box.width * scale)), max(1, round(box.height * scale)))
    buffer = io.BytesIO()
    layer: Image.Image = heatmap_layer(heat, box, size)
    layer.save(buffer, "PNG", compress_level=3)
    return buffer.getvalue()


_FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")


def _csv(rows: list[list[Any]], name: str) -> Response:
    """A CSV download; text cells a spreadsheet would run as a formula get a quote first."""
    buffer = io.StringIO()
    safe = [["'" + c if isinstance(c, str) and c.startswith(_FORMULA_LEAD) else c for c in row]
            for row in rows]
    csv.writer(buffer).writerows(safe)
    return Response(buffer.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip
