"""Receiving an image: check it is one we analyse, keep it on disk, record it, queue it.

The order is what makes "accepted" mean "kept": the bytes are written to a file the service
names, flushed to disk with its folder, and only then recorded in the store (itself durable on
commit); only after both does the caller acknowledge the sender. An upload that is too large or
not an image type we read is refused before anything is stored. Nothing here decodes pixels:
that happens in the analysis worker, in a decoder process.

The DICOM node keeps what it receives through :func:`receive_dicom`, under the same rule: its
C-STORE success is sent only after this returns.

Reading a header here is the one place the service process parses an uploaded file itself: a
damaged one (a value length stretched over the following elements) makes pydicom warn and log
with the raw bytes quoted, patient name included. Those messages are caught and only counted,
by the same capture the decoder processes use (:func:`_library_messages_withheld`).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fracsight.io.durable import fsync_folder
from fracsight.io.formats import HEAD_BYTES, describe_unknown, detect_format
from fracsight.io.radiograph import UnreadableImage
from fracsight.io.safe_text import is_uid
from fracsight.io.worker import _Capture
from fracsight.service.store import DuplicateInstance, ImageRecord, Store, StudyInfo

# File type by its first bytes, as predict reads it (fracsight.io.formats): an upload's name and
# declared type are not trusted.
_EXTENSIONS = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg", "tiff": ".tif"}
ACCEPTED = "DICOM (Part 10 file or a bare data set), PNG, JPEG or TIFF (BigTIFF too)"


class UploadRefused(ValueError):
    """An upload that is not stored; ``status`` is the HTTP status that says why, ``code`` the
    ``error_code`` that ``fracsight predict`` gives the same file (``unreadable``)."""

    def __init__(self, status: int, reason: str, code: str = UnreadableImage.code) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.code = code


class OutOfSpace(OSError):
    """The data folder's disk cannot take an instance and still keep its reserve free."""

    def __init__(self, needed: int, free: int) -> None:
        super().__init__(errno.ENOSPC, f"{needed} bytes needed with the reserve, {free} free")


@dataclass(frozen=True)
class Received:
    record: ImageRecord
    duplicate: bool = False  # the same DICOM instance was kept already: nothing new stored

    @property
    def id(self) -> str:
        return self.record.id


# What an instance received (over DIMSE or STOW-RS) is to the node
# (:func:`fracsight.service.dicom_node.route`).
OWN_RESULT = "own result"  # one of fracsight's own result objects coming back: acknowledged, dropped
STUDY_OBJECT = "study object"  # a report, presentation state, other image...: kept, not analysed
IMAGE = "image"  # kept and analysed (or refused analysis with the reason)


def new_image_id() -> str:
    return secrets.token_hex(12)


def receive_stream(store: Store, chunks: Iterable[bytes], max_bytes: int, source: str = "upload") -> Received:
    """Store an upload arriving in ``chunks``: refused when over ``max_bytes`` or of another type."""

    def write(fh: BinaryIO) -> int:
        size = 0
        for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise UploadRefused(413, f"upload is larger than the limit of {max_bytes} bytes")
            fh.write(chunk)
        return size

    def keep(temp: Path, size: int) -> Received:
        if size == 0:
            raise UploadRefused(400, "upload is empty")
        with open(temp, "rb") as fh:
            head = fh.read(HEAD_BYTES)
        kind = detect_format(head, size)
        if kind is None:
            raise UploadRefused(415, f"{describe_unknown(head)}; accepted: {ACCEPTED}")
        return _keep(store, temp, kind.value, size, source)

    return _receive(store, "upload-", write, keep)


def receive_dicom(
    store: Store,
    data: bytes,
    header,
    *,
    batch: str,
    wants_results: bool,
    min_free_bytes: int = 0,
) -> Received:
    """Keep one instance received by the DICOM node: ``data`` is the Part 10 file as received
    (preamble, file meta, data set in the transfer syntax it came in), ``header`` its data set
    parsed without pixels. On disk and recorded when this returns.

    An instance kept already (same SOP Instance UID, not failed) is not kept again:
    ``Received.duplicate``. Raises :class:`OutOfSpace` when the disk would keep less than
    ``min_free_bytes`` free, and OSError when writing fails; nothing is recorded then.
    """
    image_id = new_image_id()
    info = study_info(None, image_id, dataset=header)
    existing = store.find_instance(info.sop_instance_uid)
    if existing is not None:
        return Received(existing, duplicate=True)
    free = shutil.disk_usage(_incoming(store)).free
    if free < len(data) + min_free_bytes:
        raise OutOfSpace(len(data) + min_free_bytes, free)

    def write(fh: BinaryIO) -> int:
        fh.write(data)
        return len(data)

    def keep(temp: Path, size: int) -> Received:
        return _keep(
            store,
            temp,
            "dicom",
            size,
            "dicom",
            info=info,
            image_id=image_id,
            batch=batch,
            wants_results=wants_results,
            unique_instance=True,
        )

    return _receive(store, "dicom-", write, keep)


def _incoming(store: Store) -> Path:
    """The store's folder for files still arriving (on the same disk as where they are kept)."""
    incoming = store.data_dir / "incoming"
    incoming.mkdir(exist_ok=True)
    return incoming


def _receive(
    store: Store,
    prefix: str,
    write: Callable[[BinaryIO], int],
    keep: Callable[[Path, int], Received],
) -> Received:
    """Write an arriving file into the incoming folder (``write`` returns its size), make it durable,
    then hand it to ``keep``; the file is removed if anything fails before it is kept and recorded."""
    fd, temp = tempfile.mkstemp(dir=_incoming(store), prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as fh:
            size = write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        return keep(Path(temp), size)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _keep(
    store: Store,
    temp: Path,
    kind: str,
    size: int,
    source: str,
    info: StudyInfo | None = None,
    image_id: str | None = None,
    **options,
) -> Received:
    image_id = image_id or new_image_id()
    if info is None:
        info = study_info(temp, image_id) if kind == "dicom" else StudyInfo(study_key=f"upload-{image_id}")
    if kind == "dicom" and source == "upload":
        # The same instance uploaded again (or received over DICOM before) is acknowledged, not
        # kept twice: it would show twice in its study and be analysed twice.
        existing = store.find_instance(info.sop_instance_uid, dicom_only=False)
        if existing is not None:
            temp.unlink(missing_ok=True)
            return Received(existing, duplicate=True)
        options.setdefault("unique_instance", True)  # and one arriving at the same moment
    relative = Path("images") / image_id[:2] / f"{image_id}{_EXTENSIONS[kind]}"
    target = store.data_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temp, target)
    fsync_folder(target.parent)
    try:
        record = store.add_image(image_id, source, relative.as_posix(), kind, size, info, **options)
    except DuplicateInstance as exc:  # the same instance arrived twice at once: the first one is kept
        target.unlink(missing_ok=True)
        return Received(exc.existing, duplicate=True)
    except BaseException:
        target.unlink(missing_ok=True)  # not recorded: not kept (the sender is told it failed)
        raise
    return Received(record)


_TAGS = {
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
    "patient_name": "PatientName",
    "patient_id": "PatientID",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "study_description": "StudyDescription",
    "accession_number": "AccessionNumber",
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "view_position": "ViewPosition",
}


_UIDS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid")


def study_info(path: Path | None, image_id: str, dataset=None) -> StudyInfo:
    """The worklist facts of a DICOM file (or of ``dataset``, already parsed); a header that cannot
    be read gives an upload-like study of its own (the analysis then says what is wrong)."""
    try:
        with _library_messages_withheld("a received DICOM header"):
            if dataset is None:
                import pydicom

                dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_TAGS.values()))
            values = {name: _text(dataset, tag) for name, tag in _TAGS.items()}
            for name in _UIDS:  # a UID stretched over the next elements would carry them into ids and URLs
                values[name] = values[name].rstrip("\0") if is_uid(values[name].rstrip("\0")) else ""
    except Exception:  # noqa: BLE001 - a damaged header must not stop intake; analysis refuses it
        return StudyInfo(study_key=f"upload-{image_id}")
    study = values["study_instance_uid"]
    return StudyInfo(study_key=study or f"upload-{image_id}", **values)


def _text(dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if value is None:
        return ""
    text = str(value).strip()
    # Person names travel as Family^Given^Middle: shown with spaces.
    return " ".join(p for p in text.split("^") if p) if keyword == "PatientName" else text[:256]


# Python's warning filters are global to the process: one capture at a time (uploads and the
# DICOM node's threads take turns; reading a header takes milliseconds).
_CAPTURE_LOCK = threading.Lock()
_LIBRARY_LOGGER = "pydicom"


@contextmanager
def _library_messages_withheld(name: str) -> Iterator[None]:
    """pydicom's warnings and log records while a header is read: withheld and counted, never shown
    (they quote the header's bytes). The decoder processes' capture (:mod:`fracsight.io.worker`):
    ``catch_warnings(record=True)`` and its handler, here fed by a filter on pydicom's logger since
    this process's own handlers stay; one neutral DEBUG line says how many were withheld."""
    with _CAPTURE_LOCK:
        capture = _Capture(logging.DEBUG)
        capture.start()
        library = logging.getLogger(_LIBRARY_LOGGER)

        def withhold(record: logging.LogRecord) -> bool:
            capture.emit(record)
            return False

        library.addFilter(withhold)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    yield
                finally:
                    notes = capture.notes(name, caught)
        finally:
            library.removeFilter(withhold)
    for logger_name, level, message in notes:
        logging.getLogger(logger_name).log(level, "%s", message)
