"""The HTTP API and the viewer page (FastAPI): uploads in, worklist, images, overlays, feedback out.

Every ``/api`` call but ``/api/health`` needs ``Authorization: Bearer <token>``: a user's own
token (:mod:`fracsight.service.users`) or the site token (the built-in administrator
``site-token``); verdicts and "read" marks carry the signed-in user's name. The page itself
(``/`` and ``/static``) holds no data and asks for the token. The web side serves what the
worker wrote and never decodes an uploaded file itself. Errors never carry patient data, every
response carries the security headers of :data:`SECURITY_HEADERS` (and ``/api`` ones
``Cache-Control: no-store``), and no request, however malformed, stops the service: each is
answered and logged by route.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field

from fracsight.decide import Category, vocabulary
from fracsight.explain import OVERLAY_FLOOR, heatmap_layer, heatmap_outline
from fracsight.preprocess import Letterbox, stretch_contrast
from fracsight.service import dicomweb
from fracsight.service.auth import identify
from fracsight.service.identity import Administrator, SignedIn
from fracsight.service.intake import UploadRefused, receive_stream
from fracsight.service.monitoring import site_performance
from fracsight.service.reader_study import install as install_reader_studies
from fracsight.service.store import SORTS, Feedback, Store, WorklistQuery, now
from fracsight.service.users import ROLES, SITE_TOKEN_USER, User, UserDirectory, UserError, UserExists
from fracsight.service.worker import AnalysisWorker, display_path, read_display

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
OVERLAY_MAX_SIDE = 1024  # the layer is smooth: the browser scales it to the image
_CATEGORIES = tuple(c.value for c in Category)
# On every response. The page loads its script and style from /static only (no inline code), so
# the policy allows nothing else; images are drawn from fetched bytes (blob:) on canvases.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
# Cells a spreadsheet would run as a formula (OWASP, CSV injection): written with a quote first.
_FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")
_DATE = r"^\d{4}-\d{2}-\d{2}$"
MAX_PAGE = 1000  # studies in one worklist page


class _TooLarge(Exception):
    """The request body passed the upload limit while it was being read."""


class _BodyLimit:
    """ASGI middleware: an upload's body is counted as it arrives (chunked uploads carry no
    Content-Length) and reading stops past the limit, before it reaches a disk."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/api/images":
            await self.app(scope, receive, send)
            return
        total = 0

        async def counted():
            nonlocal total
            message = await receive()
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                raise _TooLarge
            return message

        await self.app(scope, counted, send)


class FeedbackIn(BaseModel):
    """A reader's verdict on one image: agree/disagree with the model, or the call itself.

    The verdict carries the signed-in user's name; ``reader``, when given, must be that name."""

    reader: str | None = Field(default=None, max_length=120)
    agree: bool | None = None
    fracture: bool | None = None  # needed when the model said "doubt": agreeing means nothing there
    note: str = Field(default="", max_length=4000)


class ReadIn(BaseModel):
    reader: str | None = Field(default=None, max_length=120)  # the signed-in user's name, if given
    read: bool = True


def worklist_query(
    category: str | None = None,
    read: bool | None = None,
    q: str | None = Query(None, max_length=200, description="part of a patient name or ID, or accession"),
    date_from: str | None = Query(None, pattern=_DATE, description="YYYY-MM-DD, the study date"),
    date_to: str | None = Query(None, pattern=_DATE),
    sort: str = Query("priority", description="priority (the default), or a worklist column"),
    order: str = Query("asc", pattern="^(asc|desc)$"),
    limit: int | None = Query(None, ge=1, le=MAX_PAGE),
    offset: int = Query(0, ge=0),
) -> WorklistQuery:
    """The worklist parameters of a request (filters, sort, page) as a store query."""
    if category is not None and category not in _CATEGORIES:
        raise HTTPException(422, f"category {category!r}: valid are {', '.join(_CATEGORIES)}")
    if sort not in SORTS:
        raise HTTPException(422, f"sort {sort!r}: valid are {', '.join(SORTS)}")
    return WorklistQuery(category, read, q, date_from, date_to, sort, order == "desc", limit, offset)


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: str = Field(pattern="^(" + "|".join(ROLES) + ")$")




def _as_signed_in(user: User, given: str | None) -> str:
    """The name a verdict or read mark is recorded under: always the signed-in user's."""
    if given is not None and given.strip() != user.name:
        raise HTTPException(403, f"signed in as {user.name!r}: you cannot act for another reader")
    return user.name


def create_app(
    store: Store,
    worker: AnalysisWorker | None,
    token: str,
    max_upload_bytes: int,
    users: UserDirectory | None = None,
) -> FastAPI:
    """The service's ASGI app over ``store``; ``worker`` is woken after each upload. ``token`` is the
    site token; ``users`` the accounts (default: those kept in the store's data folder)."""
    users = users if users is not None else UserDirectory.of_data_dir(store.data_dir)
    app = FastAPI(
        title="fracsight",
        summary="Fracture detection on radiographs: an aid to the clinician, not a diagnosis.",
        version=_version(),
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    install_reader_studies(app, store, users)  # before the guard below, which signs the user in first

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Who signs in for /api (but health), a size cap on uploads, the security headers, and one
        log line per request."""
        started = time.perf_counter()
        path = request.url.path
        if path.startswith("/api/") and path != "/api/health":
            user = identify(request.headers.get("authorization"), token, users)
            if user is None:
                refused = JSONResponse({"detail": "missing, unknown or revoked bearer token"}, 401)
                return _log(request, refused, started)
            request.state.user = user
        if path == "/api/images" and request.method == "POST":
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > max_upload_bytes + 64 * 1024):
                refused = UploadRefused(413, f"upload is larger than the limit of {max_upload_bytes} bytes")
                return _log(request, _refusal(refused), started)
        try:
            response = await call_next(request)
        except Exception as exc:  # noqa: BLE001 - one bad request must never stop the service
            log.error("%s %s failed: %s", request.method, _route(request), type(exc).__name__)
            response = JSONResponse({"detail": "internal error; the service goes on"}, 500)
        return _log(request, response, started)

    app.include_router(dicomweb.router(store, worker, token, users, max_upload_bytes))  # STOW-RS

    @app.exception_handler(UploadRefused)
    async def refused_upload(request: Request, exc: UploadRefused) -> JSONResponse:
        return _refusal(exc)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Whether the service runs and its analysis worker is alive; no token needed."""
        return {
            "status": "ok",
            "worker": "running" if worker is None or worker.alive else "stopped",
            "queue": store.counts(),
            "sends": store.send_counts(),  # results for a PACS: pending, sending, sent, rejected
        }

    @app.post("/api/images", status_code=202)
    async def upload(request: Request) -> Any:
        """Store one image (multipart field ``file``: DICOM, PNG, JPEG, TIFF) and queue it (202).
        A DICOM instance kept already (same SOP Instance UID) is not kept twice: 200, with the
        kept image's id and ``"duplicate": true``."""
        received, name = await _receive_upload(request, store, max_upload_bytes)
        if not received.duplicate and name and received.record.kind != "dicom":
            store.name_upload(received.id, name)  # the only name such an upload has
        ack = {"id": received.id, "study": received.record.info.study_key}
        if received.duplicate:
            return JSONResponse({**ack, "duplicate": True}, 200)
        if worker is not None:
            worker.wake()
        return {**ack, "duplicate": False}

    @app.get("/api/images/{image_id}")
    def image(image_id: str) -> dict[str, Any]:
        """The image's status and, once analysed, its finding and the readers' verdicts on it."""
        return _detail(store, _image(store, image_id))

    @app.get("/api/images/{image_id}/image.png", response_class=Response)
    def image_png(image_id: str) -> Response:
        """The radiograph as displayed (windowed to its own intensity percentiles, as the model sees it)."""
        _image(store, image_id)
        path = display_path(store, image_id)
        if not path.exists():
            raise HTTPException(404, "no picture of this image: it could not be read")
        return Response(_display_png(path, path.stat().st_mtime_ns), media_type="image/png")

    @app.get("/api/images/{image_id}/pixels", response_class=Response)
    def pixels(image_id: str) -> Response:
        """The radiograph's pixels for window/level: two little-endian uint32 (height, width), then
        height x width little-endian uint16 (0 = black, 65535 = white as displayed)."""
        _image(store, image_id)
        path = display_path(store, image_id)
        if not path.exists():
            raise HTTPException(404, "no pixels for this image: it could not be read")
        return FileResponse(path, media_type="application/octet-stream")

    @app.get("/api/images/{image_id}/overlay.png", response_class=Response)
    def overlay(image_id: str) -> Response:
        """The heat-map layer alone (RGBA, the image's aspect ratio), for the viewer to lay over it."""
        record = _image(store, image_id)
        heat = store.heatmap(image_id)
        if record.status != "done" or heat is None or not record.result:
            raise HTTPException(404, f"no heat map: the image is {record.status}")
        if record.category == Category.OUT_OF_SCOPE.value:
            raise HTTPException(404, "no heat map: the image is outside what the model knows (not scored)")
        return Response(_overlay_png(heat, record.result["letterbox"]), media_type="image/png")

    @app.post("/api/images/{image_id}/feedback", status_code=201)
    def feedback(image_id: str, body: FeedbackIn, user: SignedIn) -> dict[str, Any]:
        """Record the signed-in reader's verdict with when."""
        reader = _as_signed_in(user, body.reader)
        record = _image(store, image_id)
        if record.status != "done":
            raise HTTPException(409, f"the image is {record.status}: there is no finding to judge")
        label, agrees = _verdict(record.category or "", body)
        entry = Feedback(image_id, reader, label, agrees, body.note, now())
        store.add_feedback(entry)
        return {"image": image_id, "reader": reader, "fracture": bool(label), "agrees": agrees,
                "recorded_at": entry.created_at}  # fmt: skip

    @app.post("/api/sends/resend")
    def resend(_: Administrator) -> dict[str, Any]:
        """Results for the PACS not delivered yet (retrying, or refused by it) are sent again now, and
        those that could not be made are made again (by the running results stage)."""
        remade = store.retry_failed_results()
        return {"due_now": store.resend_undelivered(), "remade": remade, "sends": store.send_counts()}

    @app.get("/api/worklist")
    def worklist(query: Annotated[WorklistQuery, Depends(worklist_query)]) -> Response:
        """A worklist page, suspected fractures first unless sorted otherwise: the studies, the
        total matching the filters, and the cursor to poll ``/api/changes`` from."""
        if query.limit is None:
            query = replace(query, limit=100)
        page = store.study_page(query)
        # Plain JSON types already: a JSONResponse skips FastAPI's encoder (10 ms a page).
        return JSONResponse({"studies": page.studies, "total": page.total, "cursor": page.cursor,
                             "limit": query.limit, "offset": query.offset})  # fmt: skip

    @app.get("/api/studies")
    def studies(query: Annotated[WorklistQuery, Depends(worklist_query)]) -> Response:
        """The worklist as a list (every study, or a page with ``limit``/``offset``), suspected
        fractures first; the total matching is in the ``X-Total-Count`` header."""
        page = store.study_page(query)
        return JSONResponse(
            page.studies, headers={"X-Total-Count": str(page.total), "X-Changes-Cursor": str(page.cursor)}
        )

    @app.get("/api/changes")
    def changes(
        since: int = Query(0, ge=0), limit: int = Query(500, ge=1, le=MAX_PAGE)
    ) -> Response:
        """Studies changed since the cursor (new images, results, read marks), oldest change first,
        and the cursor to ask from next; ``more``: ask again at once. ``reset``: the cursor is from
        another store (the page reloads its list)."""
        latest = store.change_cursor()
        if since > latest:
            return JSONResponse({"studies": [], "cursor": latest, "more": False, "reset": True})
        changed, cursor, more = store.changes(since, limit)
        return JSONResponse({"studies": changed, "cursor": cursor, "more": more, "reset": False})

    @app.get("/api/studies/{study_key}")
    def study(study_key: str) -> Response:
        """One study's worklist entry with every image's detail; the worklist itself is not read."""
        entry = store.study(study_key)
        if entry is None:
            raise HTTPException(404, "no such study")
        images = [_detail(store, i) for i in store.images_of_study(study_key)]
        return JSONResponse({**entry, "images": images})

    @app.post("/api/studies/{study_key}/read")
    def mark_read(study_key: str, body: ReadIn, user: SignedIn) -> dict[str, Any]:
        reader = _as_signed_in(user, body.reader)
        if not store.mark_read(study_key, reader, body.read):
            raise HTTPException(404, "no such study")
        return {"study": study_key, "read": body.read, "reader": reader}

    @app.get("/api/categories")
    def categories(_: SignedIn) -> dict[str, Any]:
        """What each answer means, its rank and colour (fracsight.decide): the page shows these
        words and colours rather than keeping its own."""
        return {"categories": vocabulary(), "heatmap_scale": heatmap_scale()}

    @app.get("/api/performance")
    def performance_report(_: SignedIn) -> Response:
        """The AI's sensitivity and specificity at this site (readers' verdicts, 95% Wilson
        intervals, with their counts) per month and region, and drift alerts; see
        :mod:`fracsight.service.monitoring` for the tests, minimums and false-alarm rate."""
        return JSONResponse(site_performance(store))

    @app.get("/api/me")
    def me(user: SignedIn) -> dict[str, Any]:
        """Who the token signed in as (the page shows it)."""
        return {"name": user.name, "role": user.role}

    @app.get("/api/users")
    def list_users(_: Administrator) -> list[dict[str, Any]]:
        """Every account, revoked ones too (their verdicts keep their names); never a token."""
        return [u.to_api() for u in users.list()]

    @app.post("/api/users", status_code=201)
    def add_user(body: UserIn, _: Administrator) -> dict[str, Any]:
        """Make an account; its token is in this answer only (kept hashed)."""
        try:
            made, secret = users.add(body.name, body.role)
        except UserError as exc:
            raise HTTPException(409 if isinstance(exc, UserExists) else 422, str(exc)) from None
        return {**made.to_api(), "token": secret}

    @app.delete("/api/users/{name}")
    def revoke_user(name: str, _: Administrator) -> dict[str, Any]:
        """Revoke an account: its token is refused from now on; its verdicts stay."""
        revoked = users.revoke(name) if name != SITE_TOKEN_USER else None
        if revoked is None:
            raise HTTPException(404, "no such user")
        return revoked.to_api()

    @app.get("/api/feedback.csv", response_class=Response)
    def feedback_csv() -> Response:
        """Readers' verdicts in the ``fracsight evaluate --labels`` format (id, fractured, ...)."""
        rows = [["id", "fractured", "agrees_with_model", "model_category", "model_probability", "reader",
                 "note", "recorded_at"]]  # fmt: skip
        for f in store.feedback():
            record = store.get_image(f.image_id)
            rows.append([f.image_id, f.reader_label, "" if f.agrees is None else int(f.agrees),
                         record.category if record else "", record.probability if record else "",
                         f.reader, f.note, f.created_at])  # fmt: skip
        return _csv(rows, "feedback.csv")

    @app.get("/api/predictions.csv", response_class=Response)
    def predictions_csv() -> Response:
        """Every finished image in the ``fracsight evaluate --predictions`` format."""
        rows = [["id", "probability", "category", "error", "model"]]
        for r in store.finished_images():
            rows.append([r["id"], "" if r["probability"] is None else f"{r['probability']:.6f}",
                         r["category"] or "", r["error"] or "", r["model_id"] or ""])  # fmt: skip
        return _csv(rows, "predictions.csv")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/performance", include_in_schema=False)
    def performance_page() -> FileResponse:
        return FileResponse(STATIC / "performance.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # Multipart framing adds a little to the file itself.
    app.add_middleware(_BodyLimit, max_bytes=max_upload_bytes + 64 * 1024)
    return app


async def _receive_upload(request: Request, store: Store, max_bytes: int):
    """Stream the multipart field ``file`` into the store, counting bytes as they come."""
    from starlette.formparsers import MultiPartException

    try:
        form = await request.form(max_files=1, max_fields=4, max_part_size=max_bytes)
    except MultiPartException as exc:
        raise HTTPException(400, f"not a multipart upload: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - a malformed body is the sender's error
        if _caused_by(exc, _TooLarge):
            raise UploadRefused(413, f"upload is larger than the limit of {max_bytes} bytes") from None
        raise HTTPException(400, "the request body could not be read as multipart form data") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "multipart field 'file' with the image is missing")

        def chunks():
            upload.file.seek(0)
            while chunk := upload.file.read(1 << 20):
                yield chunk

        # UploadRefused: answered with its error_code
        return receive_stream(store, chunks(), max_bytes), upload_name(upload.filename)
    finally:
        await form.close()


def upload_name(given: str | None) -> str:
    """The file name as the uploader gave it, without any folder part or control characters, and
    at most 200 characters: shown in the worklist, never logged."""
    if not given:
        return ""
    base = given.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in base if c.isprintable()).strip()[:200]


def _refusal(exc: UploadRefused) -> JSONResponse:
    """An upload refused, with the ``error_code`` that ``fracsight predict`` gives such a file."""
    return JSONResponse({"detail": exc.reason, "error_code": exc.code}, exc.status)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """``exc`` is ``kind`` or holds one (task groups wrap what a receive raised in a group)."""
    if isinstance(exc, kind):
        return True
    return any(_caused_by(inner, kind) for inner in getattr(exc, "exceptions", ()))


def _image(store: Store, image_id: str):
    record = store.get_image(image_id) if image_id.isalnum() and len(image_id) <= 64 else None
    if record is None:
        raise HTTPException(404, "no such image")
    return record


def _detail(store: Store, record) -> dict[str, Any]:
    verdicts = [
        {"reader": f.reader, "fracture": bool(f.reader_label), "agrees": f.agrees, "note": f.note,
         "recorded_at": f.created_at}
        for f in store.feedback(record.id)
    ]  # fmt: skip
    out = {**record.to_api(), "feedback": verdicts}
    out.update(_finding_shape(store, record))
    if record.kind == "dicom" and record.status == "done":
        shown = display_header(store.data_dir / record.file)
        if shown:
            out["display"] = shown
    if record.results is not None:  # received over DICOM: what was sent back to the PACS
        out["deliveries"] = [s.to_api() for s in store.sends(image_id=record.id)]
    return out


_EDGES = ("LeftVerticalEdge", "RightVerticalEdge", "UpperHorizontalEdge", "LowerHorizontalEdge")
_HEADER_TAGS = ["Rows", "Columns", "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation",
                "VOILUTSequence", "VOILUTFunction", "PhotometricInterpretation", "PixelSpacing",
                "ImagerPixelSpacing", "ImageLaterality", "Laterality", "ViewPosition", "StudyDate",
                "AcquisitionDate", "ContentDate", "BodyPartExamined", "ShutterShape",
                *(f"Shutter{e}" for e in _EDGES), "CenterOfCircularShutter", "RadiusOfCircularShutter",
                "VerticesOfThePolygonalShutter"]  # fmt: skip


def _many(value: Any) -> list[Any]:
    """A header value of one or many items as a list (none: [])."""
    from pydicom.multival import MultiValue

    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]


def _numbers(value: Any) -> list[float]:
    """A DS value (one or many) as floats; [] when missing or malformed."""
    try:
        return [float(v) for v in _many(value)]
    except (TypeError, ValueError):
        return []


@lru_cache(maxsize=256)
def display_header(path: Path) -> dict[str, Any] | None:
    """What a PACS viewer shows of a DICOM image beside its pixels, from its header (no pixels are
    read): the window presets on the viewer's display scale, pixel spacing, laterality, view, date.

    The display pixels are the header's first window mapped to [0, 1] (io.dicom_display), so a
    preset (centre c, width w) is placed on that scale by the standard's LINEAR formula: the first
    preset is the whole scale, others where their edges fall on it (clipped there). With a VOI LUT
    table or no window the display scale is not a window: no presets then.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except Exception:  # noqa: BLE001 - a header the reader refused: nothing more to show
        return None

    def text(keyword: str) -> str:
        value = ds.get(keyword)
        return str(value).strip() if value is not None else ""

    out: dict[str, Any] = {
        "rows": int(ds.get("Rows") or 0),
        "columns": int(ds.get("Columns") or 0),
        "laterality": text("ImageLaterality") or text("Laterality"),
        "view": text("ViewPosition"),
        "date": text("StudyDate") or text("AcquisitionDate") or text("ContentDate"),
        "body_part": text("BodyPartExamined"),
        "pixel_spacing_mm": None,
        "spacing_source": None,
        "presets": [],
    }
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):  # as dicom_reader reads them
        spacing = _numbers(ds.get(keyword))
        if len(spacing) == 2 and all(v > 0 for v in spacing):
            out["pixel_spacing_mm"], out["spacing_source"] = spacing, keyword
            break
    out["shutters"] = _shutters(ds)
    centres, widths = _numbers(ds.get("WindowCenter")), _numbers(ds.get("WindowWidth"))
    if ds.get("VOILUTSequence") or not centres or not widths or widths[0] <= 1:
        return out
    names = [str(n) for n in _many(ds.get("WindowCenterWidthExplanation"))]
    inverted = text("PhotometricInterpretation") == "MONOCHROME1"
    c1, w1 = centres[0], widths[0]
    top = 65535.0
    out["window"] = {"center": c1, "width": w1, "inverted": inverted}
    # a SIGMOID window is not a straight line: only the first (the whole scale) is placed exactly
    count = 1 if text("VOILUTFunction").upper() == "SIGMOID" else len(centres)
    for i, (c, w) in enumerate(zip(centres[:count], widths[:count], strict=False)):
        if w <= 1:
            continue
        level = ((c - c1) / (w1 - 1) + 0.5) * top
        width = (w - 1) / (w1 - 1) * top
        if inverted:
            level = top - level
        name = names[i] if i < len(names) and names[i].strip() else f"header window {i + 1}"
        out["presets"].append({"name": name, "center": c, "width": w, "display_level": round(level, 2),
                               "display_width": round(max(1.0, width), 2)})  # fmt: skip
    return out


def _shutters(ds) -> list[dict[str, Any]]:
    """The Display Shutter module's shapes in 0-based pixel coordinates (x = column, y = row): what
    lies outside any of them is shown dark, as the modality meant (collimated borders)."""
    shapes = {str(s).strip().upper() for s in _many(ds.get("ShutterShape"))}
    out: list[dict[str, Any]] = []
    if "RECTANGULAR" in shapes:
        edges = [_numbers(ds.get(f"Shutter{e}")) for e in _EDGES]
        if all(len(e) == 1 for e in edges):
            (left,), (right,), (upper,), (lower,) = edges
            if right >= left and lower >= upper:  # edges are 1-based and inclusive
                out.append({"shape": "rectangle", "x0": left - 1, "y0": upper - 1, "x1": right, "y1": lower})
    if "CIRCULAR" in shapes:
        centre = _numbers(ds.get("CenterOfCircularShutter"))
        radius = _numbers(ds.get("RadiusOfCircularShutter"))
        if len(centre) == 2 and len(radius) == 1 and radius[0] > 0:
            out.append({"shape": "circle", "x": centre[1] - 0.5, "y": centre[0] - 0.5, "r": radius[0]})
    if "POLYGONAL" in shapes:
        vertices = _numbers(ds.get("VerticesOfThePolygonalShutter"))
        if len(vertices) >= 6 and len(vertices) % 2 == 0:
            points = [[vertices[i + 1] - 0.5, vertices[i] - 0.5] for i in range(0, len(vertices), 2)]
            out.append({"shape": "polygon", "points": points})
    return out


def _finding_shape(store: Store, record) -> dict[str, Any]:
    """What the viewer draws of a scored finding: the hot region's outline (the polygon the DICOM
    presentation state draws, in original image pixels) and the measured rates of the operating
    point that gave the answer (so "doubt at 0.18" comes with what doubt means in numbers)."""
    if record.status != "done" or not record.result or record.category == Category.OUT_OF_SCOPE.value:
        return {}
    out: dict[str, Any] = {}
    heat = store.heatmap(record.id)
    if heat is not None and "letterbox" in record.result:
        polygon = heatmap_outline(heat, Letterbox(**record.result["letterbox"]))
        out["outline"] = [[round(x, 1), round(y, 1)] for x, y in polygon]
    point = operating_point(record.category or "", (record.result.get("model") or {}).get("id"))
    if point is not None:
        out["operating_point"] = point
    return out


# The operating point whose measured rates explain each answer: "no fracture" is below the
# doubt threshold, so the doubt point's sensitivity is how often a fracture is not called that.
_POINT_OF = {Category.FRACTURE.value: "fracture", Category.DOUBT.value: "doubt",
             Category.NO_FRACTURE.value: "doubt"}  # fmt: skip


@lru_cache(maxsize=1)
def _card_choice() -> tuple[str, dict[str, Any], str] | None:
    """(model id, the card's threshold_choice, what the rates were measured on) of the shipped
    model's card; None for a card without measured operating points."""
    from fracsight.model_card import ModelCard

    try:
        card = ModelCard.for_model()
        choice = card["threshold_choice"]
    except (OSError, KeyError, ValueError):
        return None
    return card.model_id, choice, card.threshold_source


def operating_point(category: str, model_id: str | None) -> dict[str, Any] | None:
    """The measured sensitivity and specificity (with 95% intervals) at the operating point behind
    ``category``, naming the data they were measured on; None when the card has none for the model."""
    known = _card_choice()
    name = _POINT_OF.get(category)
    if known is None or name is None or (model_id is not None and model_id != known[0]):
        return None
    card_model, choice, source = known
    rates = (choice.get(name) or {}).get("rates")
    if not rates:
        return None

    def rate(key: str) -> dict[str, Any]:
        r = rates[key]
        return {"value": r["value"], "lower": r["lower"], "upper": r["upper"], "k": r["k"], "n": r["n"]}

    return {"name": name, "threshold": rates["threshold"], "sensitivity": rate("sensitivity"),
            "specificity": rate("specificity"), "measured_on": source}  # fmt: skip


@lru_cache(maxsize=1)
def heatmap_scale(steps: int = 9) -> dict[str, Any]:
    """The heat-map layer's fixed colour scale, made by :func:`heatmap_layer` itself from maps of
    one value each, so the viewer's legend shows exactly the colours the overlay uses (the map is
    a probability per cell: the same value is the same colour on every image)."""
    stops = []
    for i in range(steps):  # from the floor (below it nothing is drawn) to the top
        value = OVERLAY_FLOOR + (1.0 - OVERLAY_FLOOR) * i / (steps - 1)
        one = Letterbox(size=4, scale=1.0, pad_x=0, pad_y=0, height=4, width=4)
        r, g, b, a = heatmap_layer(np.full((4, 4), value, np.float32), one, (1, 1)).getpixel((0, 0))
        stops.append({"value": round(value, 4), "rgba": [r, g, b, a]})
    return {"floor": OVERLAY_FLOOR, "stops": stops}


# Answers a reader cannot agree or disagree with: they give their own call (fracture yes or no).
_OWN_CALL = (Category.DOUBT.value, Category.OUT_OF_SCOPE.value)


def _verdict(category: str, body: FeedbackIn) -> tuple[int, bool | None]:
    """(reader's label, agrees with the model) from agree/disagree or the reader's own call."""
    if body.fracture is not None:
        label = int(body.fracture)
        agrees = None if category in _OWN_CALL else (label == int(category == "fracture"))
        if body.agree is not None and agrees is not None and body.agree != agrees:
            raise HTTPException(422, "'agree' contradicts 'fracture' for this finding")
        return label, agrees
    if body.agree is None:
        raise HTTPException(422, "give 'agree' (true/false) or 'fracture' (true/false)")
    if category in _OWN_CALL:
        raise HTTPException(
            422, f"the model said {category!r}: give 'fracture' (true/false), not agree/disagree"
        )
    model_says = int(category == "fracture")
    return (model_says if body.agree else 1 - model_says), body.agree


@lru_cache(maxsize=32)
def _display_png(path: Path, _version: int) -> bytes:
    shown = stretch_contrast(read_display(path))
    buffer = io.BytesIO()
    Image.fromarray((shown * 255.0 + 0.5).astype(np.uint8), mode="L").save(buffer, "PNG", compress_level=3)
    return buffer.getvalue()


def _overlay_png(heat: np.ndarray, letterbox: dict[str, Any]) -> bytes:
    box = Letterbox(**letterbox)
    scale = min(1.0, OVERLAY_MAX_SIDE / max(box.width, box.height))
    size = (max(1, round(box.width * scale)), max(1, round(box.height * scale)))
    buffer = io.BytesIO()
    heatmap_layer(heat, box, size).save(buffer, "PNG", compress_level=3)
    return buffer.getvalue()


def neutralise(cell: Any) -> Any:
    """A text cell a spreadsheet would take for a formula (``=1+1``, ``@SUM``...) with a quote first."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_LEAD):
        return "'" + cell
    return cell


def _csv(rows: list[list[Any]], name: str) -> Response:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([[neutralise(c) for c in row] for row in rows])
    return Response(
        buffer.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _route(request: Request) -> str:
    """The route's template (``/api/images/{image_id}``), so logs carry no ids or UIDs."""
    route = request.scope.get("route")
    return getattr(route, "path", None) or (
        request.url.path if not request.url.path.startswith("/api/") else "/api/?"
    )


def _log(request: Request, response: Response, started: float) -> Response:
    """The response with the security headers; one log line naming the route, never an id."""
    response.headers.update(SECURITY_HEADERS)
    if request.url.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"  # patient data: not kept by browsers or proxies
    log.info(
        "%s %s %d %.0f ms",
        request.method,
        _route(request),
        response.status_code,
        (time.perf_counter() - started) * 1e3,
    )
    return response


def _version() -> str:
    from fracsight._version import __version__

    return __version__
