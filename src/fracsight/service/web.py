"""The HTTP API and the viewer page (FastAPI): uploads in, worklist, images, overlays, feedback out.

Every ``/api`` call but ``/api/health`` needs ``Authorization: Bearer <token>``. The page
itself (``/`` and ``/static``) holds no data and asks for the token. The web side serves what
the worker wrote and never decodes an uploaded file itself. Errors never carry patient data,
and no request, however malformed, stops the service: each is answered and logged by route.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field

from fracsight.explain import heatmap_layer
from fracsight.preprocess import Letterbox, stretch_contrast
from fracsight.service.auth import token_matches
from fracsight.service.intake import UploadRefused, receive_stream
from fracsight.service.store import Feedback, Store, now
from fracsight.service.worker import AnalysisWorker, display_path, read_display

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
OVERLAY_MAX_SIDE = 1024  # the layer is smooth: the browser scales it to the image
_CATEGORIES = ("fracture", "doubt", "no_fracture")


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
    """A reader's verdict on one image: agree/disagree with the model, or the call itself."""

    reader: str = Field(min_length=1, max_length=120)
    agree: bool | None = None
    fracture: bool | None = None  # needed when the model said "doubt": agreeing means nothing there
    note: str = Field(default="", max_length=4000)


class ReadIn(BaseModel):
    reader: str = Field(min_length=1, max_length=120)
    read: bool = True


def create_app(store: Store, worker: AnalysisWorker | None, token: str, max_upload_bytes: int) -> FastAPI:
    """The service's ASGI app over ``store``; ``worker`` is woken after each upload."""
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
        """Token check for /api (but health), a size cap on uploads, and one log line per request."""
        started = time.perf_counter()
        path = request.url.path
        if path.startswith("/api/") and path != "/api/health":
            if not token_matches(request.headers.get("authorization"), token):
                return _log(request, JSONResponse({"detail": "missing or wrong bearer token"}, 401), started)
        if path == "/api/images" and request.method == "POST":
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > max_upload_bytes + 64 * 1024):
                detail = f"upload is larger than the limit of {max_upload_bytes} bytes"
                return _log(request, JSONResponse({"detail": detail}, 413), started)
        try:
            response = await call_next(request)
        except Exception as exc:  # noqa: BLE001 - one bad request must never stop the service
            log.error("%s %s failed: %s", request.method, _route(request), type(exc).__name__)
            response = JSONResponse({"detail": "internal error; the service goes on"}, 500)
        return _log(request, response, started)

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
    async def upload(request: Request) -> dict[str, str]:
        """Store one image (multipart field ``file``: DICOM, PNG, JPEG, TIFF) and queue it."""
        received = await _receive_upload(request, store, max_upload_bytes)
        if worker is not None:
            worker.wake()
        return {"id": received.id, "study": received.record.info.study_key}

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
        return Response(_overlay_png(heat, record.result["letterbox"]), media_type="image/png")

    @app.post("/api/images/{image_id}/feedback", status_code=201)
    def feedback(image_id: str, body: FeedbackIn) -> dict[str, Any]:
        """Record a reader's verdict with who and when."""
        record = _image(store, image_id)
        if record.status != "done":
            raise HTTPException(409, f"the image is {record.status}: there is no finding to judge")
        label, agrees = _verdict(record.category or "", body)
        entry = Feedback(image_id, body.reader, label, agrees, body.note, now())
        store.add_feedback(entry)
        return {"image": image_id, "fracture": bool(label), "agrees": agrees, "recorded_at": entry.created_at}

    @app.post("/api/sends/resend")
    def resend() -> dict[str, Any]:
        """Results for the PACS not delivered yet (retrying, or refused by it) are sent again now, and
        those that could not be made are made again (by the running results stage)."""
        remade = store.retry_failed_results()
        return {"due_now": store.resend_undelivered(), "remade": remade, "sends": store.send_counts()}

    @app.get("/api/studies")
    def studies(
        category: str | None = None, region: str | None = None, read: bool | None = None
    ) -> list[dict]:
        """The worklist, suspected fractures first; filter by category, region, read status."""
        if category is not None and category not in _CATEGORIES:
            raise HTTPException(422, f"category {category!r}: valid are {', '.join(_CATEGORIES)}")
        return store.studies(category, region, read)

    @app.get("/api/studies/{study_key}")
    def study(study_key: str) -> dict[str, Any]:
        images = store.images_of_study(study_key)
        if not images:
            raise HTTPException(404, "no such study")
        entry = next(s for s in store.studies() if s["study"] == study_key)
        return {**entry, "images": [_detail(store, i) for i in images]}

    @app.post("/api/studies/{study_key}/read")
    def mark_read(study_key: str, body: ReadIn) -> dict[str, Any]:
        if not store.mark_read(study_key, body.reader, body.read):
            raise HTTPException(404, "no such study")
        return {"study": study_key, "read": body.read}

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
        for s in store.studies():
            for image_id in s["images"]:
                r = store.get_image(image_id)
                if r and r.status in ("done", "refused", "failed"):
                    rows.append([r.id, "" if r.probability is None else f"{r.probability:.6f}",
                                 r.category or "", r.error or "", r.model_id or ""])  # fmt: skip
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
            raise HTTPException(413, f"upload is larger than the limit of {max_bytes} bytes") from None
        raise HTTPException(400, "the request body could not be read as multipart form data") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "multipart field 'file' with the image is missing")

        def chunks():
            upload.file.seek(0)
            while chunk := upload.file.read(1 << 20):
                yield chunk

        try:
            return receive_stream(store, chunks(), max_bytes)
        except UploadRefused as exc:
            raise HTTPException(exc.status, exc.reason) from None
    finally:
        await form.close()


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


def _verdict(category: str, body: FeedbackIn) -> tuple[int, bool | None]:
    """(reader's label, agrees with the model) from agree/disagree or the reader's own call."""
    if body.fracture is not None:
        label = int(body.fracture)
        agrees = None if category == "doubt" else (label == int(category == "fracture"))
        if body.agree is not None and agrees is not None and body.agree != agrees:
            raise HTTPException(422, "'agree' contradicts 'fracture' for this finding")
        return label, agrees
    if body.agree is None:
        raise HTTPException(422, "give 'agree' (true/false) or 'fracture' (true/false)")
    if category == "doubt":
        raise HTTPException(422, "the model said 'doubt': give 'fracture' (true/false), not agree/disagree")
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


def _csv(rows: list[list[Any]], name: str) -> Response:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
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
    log.info(
        "%s %s %d %.0f ms",
        request.method,
        _route(request),
        response.status_code,
        (time.perf_counter() - started) * 1e3,
    )
    return response


def _version() -> str:
    from fracsight import __version__

    return __version__
