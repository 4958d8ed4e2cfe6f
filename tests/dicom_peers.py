"""The other side of the DICOM node in tests: a modality that sends (pynetdicom SCU) and a PACS that
receives results (pynetdicom SCP keeping what it gets in memory), and the node itself in-process
(:class:`Node`). Loopback only."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pydicom
from conftest import REPO_ROOT, SHARED_DATA
from pydicom.uid import generate_uid

DICOM = SHARED_DATA / "dicom"
# The shared set's hd_dx_image.dcm, bundled as a sample (the same bytes): for tests that need one
# real DX and must run without ../shared.
SAMPLE_DX = REPO_ROOT / "src" / "fracsight" / "samples" / "hd_dx_image.dcm"
# Radiographs of the shared set in several transfer syntaxes and both monochrome conventions.
RADIOGRAPHS = {
    "hd_dx_image.dcm": "explicit VR LE, DX, MONOCHROME1",
    "drv_hd_dx_image_jpeg_baseline.dcm": "JPEG baseline, DX, MONOCHROME1",
    "pljd_RG2_JPLL.dcm": "JPEG lossless, CR, MONOCHROME2",
    "pljd_RG2_JLSL.dcm": "JPEG-LS lossless, CR, MONOCHROME2",
    "pljd_RG3_J2KR.dcm": "JPEG 2000 lossless, CR, MONOCHROME1",
    "pljd_RG1_J2KI.dcm": "JPEG 2000, CR, MONOCHROME1",
}
REFUSED = {
    "pyd_CT_small.dcm": "computed tomography",
    "pyd_MR_small.dcm": "magnetic resonance",
    "pljd_966.dcm": "could not be decoded",
    "fod_HasFragmentSequence.dcm": "X-ray angiography",
}


class FakePacs:
    """A storage SCP that keeps every data set it receives, with the time it arrived.

    ``status`` maps a SOP Class UID to the status to answer instead of Success.
    """

    def __init__(self, aet: str = "PACS", accept_from: str = "FRACSIGHT") -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.aet = aet
        self.received: list[tuple[float, pydicom.Dataset]] = []
        self.status: dict[str, int] = {}
        self._lock = threading.Lock()
        self.ae = AE(ae_title=aet)
        self.ae.require_calling_aet = [accept_from]
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(
                context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
            )
        self._handlers = [(evt.EVT_C_STORE, self._on_store)]
        self.server = None
        self.port = 0

    def start(self, port: int = 0, ssl_context=None) -> FakePacs:
        self.server = self.ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=self._handlers, ssl_context=ssl_context
        )
        self.port = self.server.server_address[1]
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _on_store(self, event) -> int:
        data = event.encoded_dataset()
        dataset = pydicom.dcmread(io.BytesIO(data))
        status = self.status.get(str(dataset.SOPClassUID), 0x0000)
        if status == 0x0000:
            with self._lock:
                self.received.append((time.time(), dataset))
        return status

    def of_class(self, sop_class: str) -> list[pydicom.Dataset]:
        with self._lock:
            return [d for _, d in self.received if d.SOPClassUID == sop_class]

    def wait_for(self, count: int, sop_class: str, timeout: float = 60.0) -> list[pydicom.Dataset]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of_class(sop_class)
            if len({d.SOPInstanceUID for d in found}) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"{len(self.of_class(sop_class))} of {count} objects of {sop_class} arrived")


def renamed(path: Path, study: str | None = None, **changes) -> pydicom.Dataset:
    """The file's data set with new SOP Instance, series and study UIDs (the study ``study`` when
    given): a new instance of a study of its own, for the node."""
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    for key, value in changes.items():
        setattr(ds, key, value)
    return ds


def rle_copy(path: Path) -> pydicom.Dataset:
    """A renamed copy of an uncompressed file, RLE Lossless (none of the shared files is RLE)."""
    from pydicom.uid import RLELossless

    ds = renamed(path)
    ds.compress(RLELossless, encoding_plugin="pydicom")  # gdcm's RLE encoder aborts on odd widths
    return ds


def send(
    port: int, items: list, aet: str = "MODALITY", called: str = "FRACSIGHT", **kwargs
) -> list[int | None]:
    """C-STORE each item (a path or a data set) in one association; the status of each (None when
    no answer came). Raises when the association is not accepted."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    datasets = [pydicom.dcmread(i) if isinstance(i, (str, Path)) else i for i in items]
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, **kwargs)
    if not assoc.is_established:
        raise ConnectionRefusedError(f"association not accepted (rejected: {assoc.is_rejected})")
    try:
        out = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            out.append(int(status.Status) if status and "Status" in status else None)
        return out
    finally:
        if assoc.is_established:
            assoc.release()


def associate(port: int, aet: str, **kwargs):
    """An association for C-ECHO only; the caller checks ``is_established`` / ``is_rejected``."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae.associate("127.0.0.1", port, ae_title="FRACSIGHT", **kwargs)


def referencing(objects: list[pydicom.Dataset], sop_instance_uid: str) -> list[pydicom.Dataset]:
    """The objects among ``objects`` that reference the instance ``sop_instance_uid`` (as their
    source image, evidence or presented image)."""

    def refs(ds: pydicom.Dataset) -> set[str]:
        found = {r.ReferencedSOPInstanceUID for r in ds.get("SourceImageSequence", [])}
        for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
            for series in study.ReferencedSeriesSequence:
                found |= {r.ReferencedSOPInstanceUID for r in series.ReferencedSOPSequence}
        for series in ds.get("ReferencedSeriesSequence", []):
            found |= {r.ReferencedSOPInstanceUID for r in series.ReferencedImageSequence}
        return found

    return [o for o in objects if sop_instance_uid in refs(o)]


def wait_until(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Node:
    """A node over its own store, with the shared analyser; stopped by the test's fixture."""

    def __init__(self, data: Path, analyser, pacs: FakePacs | None, **settings) -> None:
        from fracsight.service.dicom_node import DicomNode
        from fracsight.service.settings import Destination, DicomSettings, Peer
        from fracsight.service.store import SqliteStore
        from fracsight.service.worker import AnalysisWorker

        options = dict(
            port=0,
            allow=(Peer("MODALITY"), Peer("BOUND", "127.0.0.2"), Peer("PACS")),
            forward=Destination("PACS", "127.0.0.1", pacs.port) if pacs else None,
            retry_base_s=0.2,
            retry_max_s=0.5,
            batch_idle_s=2.0,
            study_quiet_s=1.0,
            min_free_bytes=0,
        )
        options.update(settings)
        self.settings = DicomSettings(**options)
        self.store = SqliteStore(data)
        self.worker = AnalysisWorker(self.store, analyser, poll_s=0.2)
        self.node = DicomNode(self.store, self.worker, analyser, self.settings)
        self.worker.start()
        self.node.start()
        self.port = self.node.port

    def stop(self) -> None:
        self.node.stop()
        self.worker.stop()

    def record(self, sop_instance_uid: str):
        return self.store.find_instance(sop_instance_uid)

    def wait_finished(self, uids: list[str], timeout: float = 90.0) -> list:
        """The records of these instances once analysed (or refused) and their results made."""

        def finished() -> bool:
            records = [self.record(u) for u in uids]
            return all(
                r is not None and r.results != "pending" and r.status not in ("queued", "analysing")
                for r in records
            )

        wait_until(finished, timeout, "analysis and results")
        return [self.record(u) for u in uids]
