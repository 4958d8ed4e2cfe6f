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
from fracsight.explain import heatmap_layer
from fracsight.preprocess import Letterbox, stretch_contrast
from fracsight.service import dicomweb
from fracsight.service.auth import identify
from fracsight.service.intake import UploadRefused, receive_stream
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


def signed_in(request: Request) -> User:
    """The user the request's token signed in as (the guard refused the request otherwise)."""
    return request.state.user


SignedIn = Annotated[User, Depends(signed_in)]


def administrator(user: SignedIn) -> User:
    if not user.is_admin:
        raise HTTPException(403, "administrators only")
    return user


Administrator = Annotated[User, Depends(administrator)]


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
        received = await _receive_upload(request, store, max_upload_bytes)
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
        return {"categories": vocabulary()}

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

        return receive_stream(store, chunks(), max_bytes)  # UploadRefused: answered with its error_code
    finally:
        await form.close()


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
    if record.results is not None:  # received over DICOM: what was sent back to the PACS
        out["deliveries"] = [s.to_api() for s in store.sends(image_id=record.id)]
    return out


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
