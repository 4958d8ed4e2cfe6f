"""Load on `fracsight dicom-node` over loopback: N associations send radiographs for a fixed time.

    python benchmarks/dicom_load.py [--clients 3] [--seconds 30] [--interval 0] [FILE.dcm ...]

The node runs as its own process (as in production) on a fresh data folder with the shipped
model, forwarding its results to a PACS in this process (a pynetdicom storage SCP that notes when
each object arrives). Each client opens an association, sends one radiograph (a copy with new
UIDs, a study of its own), releases it, waits ``--interval`` seconds and starts again. Reported:
instances acknowledged and analysed per second; C-STORE acknowledgement time; time from receipt
by the node to the last of the image's results stored at the PACS (median, p95); and whether every
acknowledged instance was analysed exactly once and got its results. ``--clients 1 --interval 1``
measures an unsaturated node, ``--clients 4 --interval 0`` a saturated one.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import io
import itertools
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src" / "fracsight" / "samples"
SHARED = ROOT.parent / "shared" / "data" / "dicom"
# The bundled DX sample, and two 2000-px CRs of the shared set (JPEG lossless, JPEG 2000) when present.
DEFAULT_IMAGES = [*sorted(SAMPLES.glob("*.dcm")), SHARED / "pljd_RG2_JPLL.dcm", SHARED / "pljd_RG3_J2KR.dcm"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pacs:
    """Notes the arrival time of each result object, by the source image it refers to."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self.ae = AE(ae_title="PACS")
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(
                context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
            )
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        self.port = self.server.server_address[1]

    def _on_store(self, event) -> int:
        ds = pydicom.dcmread(io.BytesIO(event.encoded_dataset()), stop_before_pixels=True)
        source = _source_of(ds)
        with self._lock:
            self.arrivals.setdefault(source, []).append(time.time())
        return 0x0000


def _source_of(ds: pydicom.Dataset) -> str:
    if "SourceImageSequence" in ds:  # Secondary Capture
        return ds.SourceImageSequence[0].ReferencedSOPInstanceUID
    if "CurrentRequestedProcedureEvidenceSequence" in ds:  # SR
        return (
            ds.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[0]
            .ReferencedSOPSequence[0]
            .ReferencedSOPInstanceUID
        )
    return ds.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID  # GSPS


def _start(data: Path, port: int, pacs_port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "fracsight", "dicom-node", "--data", str(data), "--port", str(port),
         "--allow", "MODALITY", "--forward", f"PACS@127.0.0.1:{pacs_port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    for _ in range(600):
        assoc = ae.associate("127.0.0.1", port, ae_title="FRACSIGHT")
        if assoc.is_established:
            assoc.release()
            return process
        time.sleep(0.1)
    raise RuntimeError("the node did not start")


def _client(
    port: int, images: list[pydicom.Dataset], stop: float, interval: float, acks: list, sent: list
) -> None:
    ae = AE(ae_title="MODALITY")
    for ds in images:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    for source in itertools.cycle(images):
        if time.monotonic() >= stop:
            return
        ds = copy.deepcopy(source)  # a shallow copy would share its elements with the other clients
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
        assoc = ae.associate("127.0.0.1", port, ae_title="FRACSIGHT")
        if assoc.is_established:
            started = time.perf_counter()
            status = assoc.send_c_store(ds)
            if status and status.Status == 0x0000:
                acks.append(time.perf_counter() - started)
                sent.append(ds.SOPInstanceUID)
            assoc.release()
        time.sleep(interval)


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def _drained(data: Path) -> bool:
    with sqlite3.connect(data / "fracsight.db", timeout=10) as db:
        return not db.execute(
            "SELECT (SELECT COUNT(*) FROM images WHERE status IN ('queued', 'analysing') "
            "OR results = 'pending') + (SELECT COUNT(*) FROM sends WHERE status != 'sent')"
        ).fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=0.0, help="pause of each client between sends (s)")
    parser.add_argument("images", nargs="*", type=Path, help="DICOM radiographs to send (default: samples)")
    args = parser.parse_args()
    paths = args.images or [p for p in DEFAULT_IMAGES if p.exists()]
    images = [pydicom.dcmread(p) for p in paths]
    pacs = Pacs()
    with tempfile.TemporaryDirectory() as folder:
        data, port = Path(folder) / "data", _free_port()
        node = _start(data, port, pacs.port)
        try:
            acks: list[float] = []
            sent: list[str] = []
            started = time.monotonic()
            stop = started + args.seconds
            # each client starts at another image of the list
            orders = [images[i % len(images) :] + images[: i % len(images)] for i in range(args.clients)]
            threads = [
                threading.Thread(target=_client, args=(port, order, stop, args.interval, acks, sent))
                for order in orders
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - started
            deadline = time.monotonic() + 300
            while not _drained(data) and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            node.terminate()
            node.wait(60)
            pacs.server.shutdown()
        with sqlite3.connect(data / "fracsight.db") as db:
            rows = {
                r[0]: r[1:]
                for r in db.execute(
                    "SELECT i.sop_instance_uid, i.analyses, i.received_at, i.analysed_at, (SELECT COUNT(*) "
                    "FROM sends s WHERE s.image_id = i.id AND s.status = 'sent') FROM images i"
                )
            }
    # rows: SOP Instance UID -> (analyses, received_at, analysed_at, results delivered)
    first = min(_epoch(r[1]) for r in rows.values())
    analysed_in_window = sum(1 for r in rows.values() if r[2] and _epoch(r[2]) - first <= elapsed)
    latencies = [
        max(pacs.arrivals[uid]) - _epoch(rows[uid][1])
        for uid in sent
        if uid in rows and rows[uid][3] and len(pacs.arrivals.get(uid, [])) >= rows[uid][3]
    ]
    complete = sum(1 for uid in sent if uid in rows and rows[uid][0] == 1 and rows[uid][3] >= 2)
    names = ", ".join(p.name for p in paths)
    print(
        f"# fracsight dicom-node under load: {platform.machine()}, {os.cpu_count()} cores, {args.clients} "
        f"associations in parallel, {args.seconds:.0f} s, pause {args.interval:g} s; images: {names}"
        "; loopback"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| instances acknowledged per second | {len(sent) / elapsed:.2f} |")
    print(f"| instances analysed per second | {analysed_in_window / elapsed:.2f} |")
    for name, values in (
        ("C-STORE acknowledged", acks),
        ("receipt to results stored in the PACS", latencies),
    ):
        if values:
            p50, p95 = np.percentile(np.array(values) * 1e3, [50, 95])
            print(f"| {name}: median / p95 ms | {p50:.0f} / {p95:.0f} |")
    print(f"| acknowledged instances analysed once, with results delivered | {complete} of {len(sent)} |")


if __name__ == "__main__":
    main()
