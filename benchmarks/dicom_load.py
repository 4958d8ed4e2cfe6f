"""Load on `fracsight dicom-node` over loopback, bounded: N parallel associations of M images each.

    python benchmarks/dicom_load.py [--clients 3] [--images 20] [FILE.dcm ...]

The node runs as its own process (as in production) on a fresh data folder with the shipped
model, forwarding its results to a PACS in this process (a pynetdicom storage SCP that notes when
each object arrives). Each of ``--clients`` clients opens one association at the same moment,
sends ``--images`` radiographs in it (copies with new UIDs, each a study of its own), and
releases it; then the node is given up to 300 s to analyse everything and deliver the results.
Reported: instances acknowledged and analysed per second; C-STORE acknowledgement time; time from
receipt by the node to the last of the image's results stored at the PACS (median, p95, against
the targets of 5 s and 10 s); and whether every acknowledged instance was analysed exactly once
and got its results.
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
    port: int, images: list[pydicom.Dataset], count: int, go: threading.Barrier, acks: list, sent: list
) -> None:
    """One association carrying ``count`` images (cycling through ``images``), each a new study."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    for ds in images:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    copies = []
    for source in itertools.islice(itertools.cycle(images), count):
        ds = copy.deepcopy(source)  # a shallow copy would share its elements with the other clients
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
        copies.append(ds)
    go.wait(timeout=600)
    assoc = ae.associate("127.0.0.1", port, ae_title="FRACSIGHT")
    if not assoc.is_established:
        return
    for ds in copies:
        started = time.perf_counter()
        status = assoc.send_c_store(ds)
        if status and status.Status == 0x0000:
            acks.append(time.perf_counter() - started)
            sent.append(ds.SOPInstanceUID)
    assoc.release()


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
    parser.add_argument("--clients", type=int, default=3, help="associations in parallel (default 3)")
    parser.add_argument(
        "--images", dest="count", type=int, default=20, help="images sent in each association (default 20)"
    )
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
            # each client starts at another image of the list
            orders = [images[i % len(images) :] + images[: i % len(images)] for i in range(args.clients)]
            go = threading.Barrier(args.clients + 1)
            threads = [
                threading.Thread(target=_client, args=(port, order, args.count, go, acks, sent))
                for order in orders
            ]
            for t in threads:
                t.start()
            go.wait(timeout=600)
            started = time.monotonic()
            for t in threads:
                t.join()
            sending = time.monotonic() - started
            deadline = time.monotonic() + 300
            while not _drained(data) and time.monotonic() < deadline:
                time.sleep(0.2)
            elapsed = time.monotonic() - started
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
    analysed = [_epoch(r[2]) for r in rows.values() if r[2]]
    analysing = max(analysed) - first if analysed else elapsed
    latencies = [
        max(pacs.arrivals[uid]) - _epoch(rows[uid][1])
        for uid in sent
        if uid in rows and rows[uid][3] and len(pacs.arrivals.get(uid, [])) >= rows[uid][3]
    ]
    # the sender's part: from the image's analysis to the last of its results at the PACS
    delivery = [
        max(pacs.arrivals[uid]) - _epoch(rows[uid][2])
        for uid in sent
        if uid in rows and rows[uid][2] and rows[uid][3] and len(pacs.arrivals.get(uid, [])) >= rows[uid][3]
    ]
    complete = sum(1 for uid in sent if uid in rows and rows[uid][0] == 1 and rows[uid][3] >= 2)
    names = ", ".join(p.name for p in paths)
    print(
        f"# fracsight dicom-node under load, {dt.date.today()}: {platform.machine()}, {os.cpu_count()} cores "
        f"(load average {os.getloadavg()[0]:.1f}), {args.clients} associations in parallel x {args.count} "
        f"images; images: {names}; loopback"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| instances acknowledged per second | {len(sent) / sending:.2f} |")
    print(f"| instances analysed per second | {len(analysed) / max(analysing, 1e-3):.2f} |")
    for name, values, target in (
        ("C-STORE acknowledged", acks, ""),
        ("receipt to results stored in the PACS", latencies, " (target 5000 / 10000)"),
        ("of which analysed to results stored in the PACS", delivery, ""),
    ):
        if values:
            p50, p95 = np.percentile(np.array(values) * 1e3, [50, 95])
            print(f"| {name}: median / p95 ms{target} | {p50:.0f} / {p95:.0f} |")
    print(f"| acknowledged instances analysed once, with results delivered | {complete} of {len(sent)} |")


if __name__ == "__main__":
    main()
