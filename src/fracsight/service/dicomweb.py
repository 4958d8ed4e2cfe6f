"""DICOMweb: STOW-RS uploads (DICOM PS3.18 10.5), for archives and modalities that speak HTTP.

``POST /dicomweb/studies`` (and ``/dicomweb/studies/{study}``) takes a ``multipart/related;
type="application/dicom"`` body, one Part 10 instance per part, and answers with the STOW-RS
response: a DICOM JSON data set listing each instance in ReferencedSOPSequence (kept) or
FailedSOPSequence (with its Failure Reason), and 200 (all kept), 202 (some failed), 409 (none
could be kept), 400 (no instance in the body, or a body that is not multipart), 413 (over the
upload limit) or 415 (not ``application/dicom`` parts). Each instance goes through the DICOM node's
intake (:func:`fracsight.service.intake.receive_dicom`: kept durably before the answer, one copy
per SOP Instance UID) and is analysed; the instances of one request are one batch, as those of
one association are, so a node that forwards results makes them once the request's studies are
analysed. The same bearer tokens as ``/api`` sign in. Errors and logs carry no patient data.
"""

from __future__ import annotations

import io
import logging
import re
import uuid

import pydicom
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool

from fracsight.io.safe_text import is_uid
from fracsight.service.auth import identify
from fracsight.service.intake import (
    IMAGE,
    OWN_RESULT,
    STUDY_OBJECT,
    OutOfSpace,
    _library_messages_withheld,
    receive_dicom,
)
from fracsight.service.store import Store
from fracsight.service.users import User, UserDirectory
from fracsight.service.worker import AnalysisWorker

log = logging.getLogger(__name__)
DICOM_JSON = "application/dicom+json"
CALLING = "STOW-RS"  # the batch's "calling AE title": who sent it, for the store's batches
# Failure Reasons of a STOW-RS response (PS3.18 10.5.3, storage statuses of PS3.4 B.2.3).
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900  # the instance's Study Instance UID is not the one in the URL
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_TYPE = re.compile(r'type="?([^";]+)"?', re.IGNORECASE)


def router(
    store: Store,
    worker: AnalysisWorker | None,
    token: str,
    users: UserDirectory | None,
    max_upload_bytes: int,
) -> APIRouter:
    """The STOW-RS routes over ``store``; ``worker`` is woken after new instances are kept. Results
    are made for them when the app's ``state.forward_results`` is true (set by the service when its
    DICOM node forwards results)."""

    def signed_in(request: Request) -> User:
        user = identify(request.headers.get("authorization"), token, users)
        if user is None:
            challenge = {"WWW-Authenticate": "Bearer"}
            raise HTTPException(401, "missing, unknown or revoked bearer token", challenge)
        request.state.user = user
        return user

    api = APIRouter(prefix="/dicomweb", dependencies=[Depends(signed_in)])

    async def stow(request: Request, study: str | None) -> JSONResponse:
        if study is not None and not is_uid(study):
            raise HTTPException(400, "the study in the URL is not a UID")
        boundary = _multipart_dicom(request.headers.get("content-type", ""))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_upload_bytes:
                raise HTTPException(413, f"upload is larger than the limit of {max_upload_bytes} bytes")
        parts = _parts(bytes(body), boundary)
        del body
        if not parts:
            raise HTTPException(400, "no instance in the multipart body")
        wants_results = bool(getattr(request.app.state, "forward_results", False))
        answer, kept, new = await run_in_threadpool(_keep_all, store, parts, study, wants_results)
        if new and worker is not None:
            worker.wake()
        failed = len(parts) - kept
        log.info("STOW-RS: %d instance(s) kept (%d new), %d failed", kept, new, failed)
        status = 200 if not failed else (202 if kept else 409)
        # UIDs of patients' studies: not kept by browsers or proxies (as the /api answers)
        return JSONResponse(answer.to_json_dict(), status, {"Cache-Control": "no-store"}, DICOM_JSON)

    @api.post("/studies", response_class=JSONResponse)
    async def stow_studies(request: Request) -> JSONResponse:
        """Store instances of any studies (STOW-RS)."""
        return await stow(request, None)

    @api.post("/studies/{study}", response_class=JSONResponse)
    async def stow_study(study: str, request: Request) -> JSONResponse:
        """Store instances of one study (STOW-RS); an instance of another study fails (0xA900)."""
        return await stow(request, study)

    return api


def _multipart_dicom(content_type: str) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` body, or 415/400."""
    media = content_type.split(";", 1)[0].strip().lower()
    kind = _TYPE.search(content_type)
    if media != "multipart/related" or kind is None or kind.group(1).strip().lower() != "application/dicom":
        raise HTTPException(415, 'STOW-RS takes multipart/related; type="application/dicom" only')
    boundary = _BOUNDARY.search(content_type)
    if boundary is None:
        raise HTTPException(400, "the multipart body has no boundary")
    return boundary.group(1).strip()


def _parts(body: bytes, boundary: str) -> list[bytes | None]:
    """The parts' contents (RFC 2046 5.1); None for a part that is not ``application/dicom``."""
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    pieces = (b"\r\n" + body).split(delimiter)
    if len(pieces) < 2:
        raise HTTPException(400, "the body is not multipart with the boundary it declares")
    parts: list[bytes | None] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):  # the close delimiter
            break
        head, separator, content = piece.partition(b"\r\n\r\n")
        if not separator:
            raise HTTPException(400, "a multipart part has no header end")
        declared = re.search(r"^content-type:\s*([^;\r\n]+)", head.decode("latin-1").lower(), re.MULTILINE)
        dicom = declared is None or declared.group(1).strip() == "application/dicom"
        parts.append(content if dicom else None)
    return parts


def _keep_all(
    store: Store, parts: list[bytes | None], study: str | None, wants_results: bool
) -> tuple[Dataset, int, int]:
    """Each part through the intake; the STOW-RS response, how many were kept and how many were new."""
    batch = uuid.uuid4().hex
    store.open_batch(batch, CALLING)
    referenced, failures = [], []
    kept = new = 0
    try:
        for data in parts:
            header = _header(data) if data is not None else None
            sop_class = str(header.get("SOPClassUID", "")) if header is not None else ""
            sop_instance = str(header.get("SOPInstanceUID", "")) if header is not None else ""
            item = Dataset()
            if sop_class:
                item.ReferencedSOPClassUID = sop_class
            if sop_instance:
                item.ReferencedSOPInstanceUID = sop_instance
            reason = None
            if header is None or not (is_uid(sop_class) and is_uid(sop_instance)):
                reason = CANNOT_UNDERSTAND
            elif study is not None and str(header.get("StudyInstanceUID", "")) != study:
                reason = DOES_NOT_MATCH
            elif (kind := _route(store, header, sop_class)) == OWN_RESULT:
                log.info("STOW-RS: an object fracsight made came back: acknowledged, not kept")
                kept += 1
            else:
                try:
                    if kind == STUDY_OBJECT:
                        _keep_object(store, data, header)
                        log.info("STOW-RS: an object of the study received: kept, not analysed")
                    else:
                        received = receive_dicom(
                            store, data, header, batch=batch, wants_results=wants_results
                        )
                        new += not received.duplicate
                    kept += 1
                except OutOfSpace:
                    log.error("STOW-RS: an instance refused: the data folder's disk is full")
                    reason = OUT_OF_RESOURCES
                except Exception as exc:  # noqa: BLE001 - one bad instance fails alone
                    log.error("STOW-RS: an instance could not be kept (%s)", type(exc).__name__)
                    reason = PROCESSING_FAILURE
            if reason is None:
                referenced.append(item)
            else:
                item.FailureReason = reason
                failures.append(item)
    finally:
        store.close_batch(batch)
    answer = Dataset()
    if referenced:
        answer.ReferencedSOPSequence = referenced
    if failures:
        answer.FailedSOPSequence = failures
    return answer, kept, new


def _route(store: Store, header: Dataset, sop_class: str) -> str:
    """The DICOM node's routing (:func:`fracsight.service.dicom_node.route`): own results dropped,
    study objects kept, images analysed. Without the 'dicom' extra there is no node: every instance
    is an image."""
    try:
        from fracsight.service.dicom_node import route
    except ImportError:
        return IMAGE
    return route(store, header, sop_class)


def _keep_object(store: Store, data: bytes, header: Dataset) -> None:
    from fracsight.service.dicom_node import keep_object

    keep_object(store, data, header, 0)


def _header(data: bytes) -> Dataset | None:
    """A Part 10 file's data set without pixels; None when it is not one (STOW-RS sends Part 10)."""
    try:
        with _library_messages_withheld("a STOW-RS instance's header"):  # they quote its bytes
            return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not a DICOM file: failed, "cannot understand"
        return None
