"""The DICOM node: a Storage SCP (pynetdicom) that feeds the store, plus the stages that send
results back.

**Who may send.** Only calling AE titles in :attr:`DicomSettings.allow` (each optionally bound
to one host address) get an association; any other is rejected at association time (A-ASSOCIATE-RJ
"calling AE title not recognised"), and every C-STORE checks the peer again. The node binds to
loopback unless told otherwise.

**What it takes.** C-ECHO, and C-STORE of every storage SOP class pynetdicom knows
(``AllStoragePresentationContexts``), in the common transfer syntaxes (uncompressed, deflated,
RLE, JPEG baseline, extended and lossless, JPEG-LS, JPEG 2000), so a PACS that routes a whole
study ("send study") never sees a failure. What happens to an instance depends on its class:

* radiographs (Computed Radiography, Digital X-Ray for presentation and for processing, and
  intra-oral; Secondary Capture) are kept and analysed;
* CT, MR, ultrasound, nuclear medicine, PET, angiography and fluoroscopy images are kept and
  refused analysis with the reason (the study's SR says "not analysed: <reason>"), as are
  multi-frame objects and files that cannot be decoded;
* every other object of the study (structured reports, presentation states, Key Object
  Selection, encapsulated documents, mammography, ...) is kept with the study's files
  (``objects/`` in the data folder) and not analysed: it is not an image of the worklist and gets
  no results;
* fracsight's own results routed back (Manufacturer "fracsight" and a series fracsight made for
  that study, or a SOP Instance UID it sent) are acknowledged and dropped; an object another
  fracsight made is kept as an object, never analysed.

**Durability.** A C-STORE is answered Success only after the instance is on disk and recorded
(:func:`fracsight.service.intake.receive_dicom`); a disk that cannot take it (with the reserve
the database needs) gets 0xA700 Out of Resources; any other failure 0x0110 Processing Failure.
An instance received again (same SOP Instance UID) is acknowledged and not kept twice. Nothing a handler
meets escapes into the server: every exception becomes a status and a log line without patient
data.

:class:`DicomNode` runs the SCP with the results stage and the sender over a store and an
analysis worker; the web service runs the same node when given a DICOM port.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path

import pydicom
from pydicom.uid import (
    JPEG2000,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalIntraOralXRayImageStorageForPresentation,
    DigitalIntraOralXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    XRayAngiographicImageStorage,
    XRayRadiofluoroscopicImageStorage,
)
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, Status

from fracsight.io.durable import fsync_folder
from fracsight.service.dicom_results import MANUFACTURER, result_series_uids
from fracsight.service.intake import IMAGE, OWN_RESULT, STUDY_OBJECT, OutOfSpace, receive_dicom, study_info
from fracsight.service.results_stage import ResultsStage
from fracsight.service.sender import Sender
from fracsight.service.settings import DicomSettings
from fracsight.service.store import Store
from fracsight.service.worker import AnalysisWorker, RecentPixels

log = logging.getLogger(__name__)

RADIOGRAPH_CLASSES = {
    ComputedRadiographyImageStorage: "Computed Radiography",
    DigitalXRayImageStorageForPresentation: "Digital X-Ray, for presentation",
    DigitalXRayImageStorageForProcessing: "Digital X-Ray, for processing",
    DigitalIntraOralXRayImageStorageForPresentation: "Digital Intra-Oral X-Ray, for presentation",
    DigitalIntraOralXRayImageStorageForProcessing: "Digital Intra-Oral X-Ray, for processing",
    SecondaryCaptureImageStorage: "Secondary Capture",
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage: "Multi-frame Grayscale Byte Secondary Capture",
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage: "Multi-frame Grayscale Word Secondary Capture",
    MultiFrameTrueColorSecondaryCaptureImageStorage: "Multi-frame True Color Secondary Capture",
}
# Taken and kept, then refused analysis with the reason (not radiographs fracsight reads).
OTHER_IMAGE_CLASSES = {
    CTImageStorage: "CT",
    EnhancedCTImageStorage: "Enhanced CT",
    MRImageStorage: "MR",
    EnhancedMRImageStorage: "Enhanced MR",
    UltrasoundImageStorage: "Ultrasound",
    UltrasoundMultiFrameImageStorage: "Ultrasound Multi-frame",
    NuclearMedicineImageStorage: "Nuclear Medicine",
    PositronEmissionTomographyImageStorage: "PET",
    XRayAngiographicImageStorage: "X-Ray Angiographic",
    XRayRadiofluoroscopicImageStorage: "X-Ray Radiofluoroscopic",
}
# In this order of preference: when a sender offers several in one presentation context, the node
# takes the first here that it offers, so a compressed file travels as it is (a sender often
# cannot convert it) and an uncompressed one is never compressed with loss on the way.
TRANSFER_SYNTAXES = [
    JPEGLSLossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEG2000Lossless,
    RLELossless,
    JPEGLSNearLossless,
    JPEG2000,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
# Images: kept in the worklist and analysed (radiographs) or refused analysis with the reason.
IMAGE_CLASSES = frozenset({*RADIOGRAPH_CLASSES, *OTHER_IMAGE_CLASSES})
# Every storage class a PACS may send in a study; those not in IMAGE_CLASSES are kept as objects.
STORAGE_CLASSES = tuple(
    dict.fromkeys([*IMAGE_CLASSES, *(str(c.abstract_syntax) for c in AllStoragePresentationContexts)])
)


def _storage_status(meaning: str) -> int:
    """The Storage Service status code of ``meaning`` as pynetdicom's table words it (the first code
    of a range such as A7xx), so no code is typed here by hand (PS3.4 B.2.3, PS3.7 C)."""
    codes = [code for code, (_, words) in STORAGE_SERVICE_CLASS_STATUS.items() if words == meaning]
    if not codes:
        raise LookupError(f"pynetdicom names no Storage status {meaning!r}")
    return min(codes)


SUCCESS = int(Status.SUCCESS)
OUT_OF_RESOURCES = _storage_status("Refused: Out of Resources")  # A700
NOT_AUTHORISED = _storage_status("Refused: Not Authorised")  # 0124
PROCESSING_FAILURE = _storage_status("Processing Failure")  # 0110


class StorageSCP:
    """The listening side: associations, C-ECHO and C-STORE into the store.

    ``on_received`` is called after each new instance is kept (wakes the analysis worker),
    ``on_batch_over`` when an association that brought images ends (wakes the results stage).
    """

    def __init__(self, store: Store, settings: DicomSettings, on_received=None, on_batch_over=None) -> None:
        self.store = store
        self.settings = settings
        self.on_received = on_received
        self.on_batch_over = on_batch_over
        self._batches: dict[int, str] = {}
        self._lock = threading.Lock()
        self._server = None
        self.ae = self._make_ae()

    def _make_ae(self):
        from pynetdicom import AE

        ae = AE(ae_title=self.settings.aet)
        ae.require_calling_aet = sorted({peer.aet for peer in self.settings.allow})
        ae.maximum_associations = self.settings.max_associations
        ae.maximum_pdu_size = self.settings.max_pdu_bytes
        ae.acse_timeout = self.settings.acse_timeout_s
        ae.dimse_timeout = self.settings.dimse_timeout_s
        ae.network_timeout = self.settings.network_timeout_s
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        return ae

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose when the settings said 0)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self.settings.port

    def start(self) -> None:
        from pynetdicom import evt

        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        tls = self.settings.tls
        self._server = self.ae.start_server(
            (self.settings.host, self.settings.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=tls.server_context() if tls is not None else None,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # -- handlers: each turns every exception into a status and a log line ------------------

    def _on_requested(self, event) -> None:
        """Reject an association to another called AE title, or whose calling AE title (and host)
        is not allowed, each with the standard reason (PS3.8 9.3.4)."""
        try:
            called = _aet(event.assoc.requestor.primitive.called_ae_title)
            if called != self.settings.aet:
                log.warning("association rejected: called AE title %r is not this node's", called)
                event.assoc.acse.send_reject(0x01, 0x01, 0x07)  # permanent, called AE not recognised
                event.assoc.kill()
                return
            aet = _aet(event.assoc.requestor.primitive.calling_ae_title)
            address = str(event.assoc.requestor.address)
            if self.settings.admits(aet, address):
                return
            log.warning("association from %r at %s rejected: calling AE title not allowed", aet, address)
        except Exception as exc:  # noqa: BLE001 - when in doubt, reject
            log.error("association rejected: the request could not be checked (%s)", type(exc).__name__)
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected permanent, calling AE not recognised
        event.assoc.kill()  # waits until the rejection has gone out, then ends the association

    def _on_echo(self, event) -> int:
        return SUCCESS

    def _on_store(self, event) -> int:
        try:
            aet, address = _aet(event.assoc.requestor.ae_title), str(event.assoc.requestor.address)
            if not self.settings.admits(aet, address):
                log.warning("C-STORE from %r at %s refused: not allowed", aet, address)
                return NOT_AUTHORISED
            data = event.encoded_dataset()
            header = _header(data)
            kind = route(self.store, header, str(event.request.AffectedSOPClassUID))
            if kind == OWN_RESULT:
                log.info("an object fracsight made came back from %r: acknowledged, not kept", aet)
                return SUCCESS
            if kind == STUDY_OBJECT:
                keep_object(self.store, data, header, self.settings.min_free_bytes)
                log.info("an object of the study received from %r: kept, not analysed", aet)
                return SUCCESS
            received = receive_dicom(
                self.store,
                data,
                header,
                batch=self._batch(event.assoc, aet),
                wants_results=self.settings.forward is not None,
                min_free_bytes=self.settings.min_free_bytes,
            )
            if received.duplicate:
                log.info("an instance received again from %r: already kept", aet)
            else:
                log.info("an image received from %r", aet)
                if self.on_received is not None:
                    self.on_received()
            return SUCCESS
        except OutOfSpace:
            log.error("instance refused with Out of Resources: the data folder's disk is full")
            return OUT_OF_RESOURCES
        except OSError as exc:
            log.error("instance refused with Out of Resources: it could not be written (%s)", exc.strerror)
            return OUT_OF_RESOURCES
        except Exception as exc:  # noqa: BLE001 - one bad instance must never stop the node
            log.error("instance refused with Processing Failure (%s)", type(exc).__name__)
            return PROCESSING_FAILURE

    def _batch(self, assoc, aet: str) -> str:
        with self._lock:
            batch = self._batches.get(id(assoc))
            if batch is None:
                batch = uuid.uuid4().hex
                self.store.open_batch(batch, aet)
                self._batches[id(assoc)] = batch
        return batch

    def _on_closed(self, event) -> None:
        try:
            with self._lock:
                batch = self._batches.pop(id(event.assoc), None)
            if batch is not None:
                self.store.close_batch(batch)
                if self.on_batch_over is not None:
                    self.on_batch_over()
        except Exception as exc:  # noqa: BLE001 - the batch then closes at the idle timeout
            log.error("end of an association could not be recorded (%s)", type(exc).__name__)


def _aet(value) -> str:
    return (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)).strip()


def _header(data: bytes):
    """The data set without pixels, or None when even that cannot be parsed (analysis then refuses it)."""
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - a damaged header is kept and refused by analysis
        return None


def _made_by_fracsight(header) -> bool:
    return str(header.get("Manufacturer", "")) == MANUFACTURER




def route(store: Store, header, sop_class: str) -> str:
    """Where an instance goes: :data:`OWN_RESULT` when fracsight made it (its Manufacturer) and it is
    in a result series fracsight makes for that study or was sent by this node; :data:`STUDY_OBJECT`
    for a class the node does not analyse or another fracsight's object; else :data:`IMAGE` (a
    header that cannot be read is an image, refused on analysis with its reason)."""
    if header is None:
        return IMAGE
    if _made_by_fracsight(header):
        study_key = study_info(None, "own", dataset=header).study_key
        if str(header.get("SeriesInstanceUID", "")) in result_series_uids(study_key):
            return OWN_RESULT
        if store.sent_instance(str(header.get("SOPInstanceUID", ""))):
            return OWN_RESULT
        return STUDY_OBJECT
    return IMAGE if sop_class in IMAGE_CLASSES else STUDY_OBJECT


def keep_object(store: Store, data: bytes, header, min_free_bytes: int) -> Path:
    """Keep an object of a study that is not analysed (a report, a presentation state, a key
    object selection...) as received, under ``objects/`` in the data folder, one file per SOP
    Instance UID (received again, it is written again), on disk when this returns. Raises
    :class:`OutOfSpace` when the disk would keep less than ``min_free_bytes`` free."""
    study = study_info(None, "object", dataset=header).study_key
    instance = str(header.get("SOPInstanceUID", "")) or uuid.uuid4().hex
    folder = store.data_dir / "objects" / hashlib.sha256(study.encode()).hexdigest()[:32]
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    free = shutil.disk_usage(folder).free
    if free < len(data) + min_free_bytes:
        raise OutOfSpace(len(data) + min_free_bytes, free)
    target = folder / f"{hashlib.sha256(instance.encode()).hexdigest()[:32]}.dcm"
    partial = target.with_suffix(f".{uuid.uuid4().hex}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    fsync_folder(folder)
    return target


def quiet_network_logs() -> None:
    """pynetdicom logs data sets (patient data) at debug level and every message at info, highdicom
    the UIDs it copies: the node logs what matters itself, without patient data. A level the site
    set (fracsight.service.logs, ``network_level``) is kept."""
    for name in ("pynetdicom", "highdicom"):
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)


class DicomNode:
    """The DICOM node over a store and an analysis worker: SCP, results stage and sender.

    The results stage and the sender run only with a destination (``settings.forward``); without
    one the node receives, and the images are analysed and shown in the worklist.
    """

    def __init__(self, store: Store, worker: AnalysisWorker, analyser, settings: DicomSettings) -> None:
        self.store = store
        self.worker = worker
        self.settings = settings
        self.sender = Sender(store, settings) if settings.forward is not None else None
        self.results = None
        if settings.forward is not None:
            worker.recent = RecentPixels()  # the SCs are made from the pixels just analysed
            self.results = ResultsStage(
                store,
                analyser,
                settings,
                on_queued=self.sender.wake if self.sender else None,
                recent=worker.recent,
            )
        self.scp = StorageSCP(
            store,
            settings,
            on_received=worker.wake,
            on_batch_over=self.results.wake if self.results else None,
        )
        if self.results is not None:
            worker.listeners.append(self.results.wake)

    @property
    def port(self) -> int:
        return self.scp.port

    def start(self) -> None:
        """Close the batches of a stopped node, resume unsent work, then listen."""
        quiet_network_logs()
        closed = self.store.close_open_batches()
        if closed:
            log.info("resuming: %d associations of the previous run closed", closed)
        if self.results is not None:
            self.results.start()
        if self.sender is not None:
            self.sender.start()
        self.scp.start()

    def stop(self) -> None:
        self.scp.stop()
        if self.results is not None:
            self.results.stop()
        if self.sender is not None:
            self.sender.stop()
