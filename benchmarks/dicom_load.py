"""Load on `fracsight dicom-node` over loopback, bounded: N parallel associations of M images each.

    python benchmarks/dicom_load.py [--clients 3] [--images 20] [--one-study] [--quiet S]
        [--model M.onnx] [--precision both|float32|int8] [--rounds 3] [FILE.dcm ...]

The node runs as its own process (as in production) on a fresh data folder with the shipped
model (or ``--model``) and its default settings (``--quiet`` sets the study quiet time),
forwarding its results to a PACS in this process (a pynetdicom storage SCP that notes when each
object arrives). Each of ``--clients`` clients opens one association at the same moment, sends
``--images`` radiographs in it (copies with new UIDs, each a study of its own, or with
``--one-study`` one study per association, as a modality sends an examination), and releases it;
then the node is given up to 300 s to analyse everything and deliver the results.

Reported: instances acknowledged and analysed per second; C-STORE acknowledgement time; time from
receipt by the node to the image's own results (its Secondary Capture and, for fracture and doubt,
its presentation state) stored at the PACS (median, p95, against the targets of 5 s and 10 s);
time from receipt to the study's structured report at the PACS (made once the study has been
quiet for the quiet time, so never sooner); and whether every acknowledged instance was analysed
exactly once and got all its results.

float32 and 8-bit side by side (``--precision both``, the default): each round runs a fresh node
with ``--precision float32`` and one with ``--precision int8``, the order reversed every other
round, so a shared machine's changing load hits both alike; the table gives each precision's median
over the rounds and the ratio int8 / float32. The 8-bit model is NAME.int8.onnx (with its card)
beside ``--model``; without it only float32 is measured. The shipped model has none (it does not
meet the agreement bar, training/README.md); to measure one, make a site copy and quantise it::

    mkdir /tmp/q && cp src/fracsight/models/default.onnx src/fracsight/models/default.card.json /tmp/q/
    fracsight quantise /tmp/q/default.onnx --data /work/shared/data/fracatlas \
        --split-file training/default-run/split.csv --calibration-images 60 --evaluate-images 40
    python benchmarks/dicom_load.py --model /tmp/q/default.onnx

(``fracsight quantise`` needs the ``train`` extra; fewer calibration and evaluation images make it
quicker, not the 8-bit model any faster.) Each node's results name the model that made them; the
header line gives the model ids the rounds' records carry.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import io
import itertools
import os
import platform
import resource
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
from precision_choice import add_precision_option  # beside this script
from precision_choice import precisions as precisions_to_measure
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


SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34"}


class Pacs:
    """Notes the arrival time of each result object by its SOP Instance UID, and which images each
    report refers to."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
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
        arrived = time.time()
        ds = pydicom.dcmread(io.BytesIO(event.encoded_dataset()), stop_before_pixels=True)
        with self._lock:
            self.arrivals[str(ds.SOPInstanceUID)] = arrived
        return 0x0000


def _start(
    data: Path, port: int, pacs_port: int, quiet_s: float | None, model: str | None, precision: str
) -> subprocess.Popen:
    config = ["--precision", precision, *(["--model", model] if model else [])]
    if quiet_s is not None:
        data.mkdir(parents=True, exist_ok=True)
        (data.parent / "node.toml").write_text(f"[dicom]\nstudy_quiet_s = {quiet_s}\n")
        config += ["--config", str(data.parent / "node.toml")]
    with (data.parent / "node.err").open("wb") as err:  # read back when the node stops at start
        process = subprocess.Popen(
            [sys.executable, "-m", "fracsight", "dicom-node", "--data", str(data), "--port", str(port),
             "--allow", "MODALITY", "--forward", f"PACS@127.0.0.1:{pacs_port}", *config],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    for _ in range(600):
        if process.poll() is not None:
            said = (data.parent / "node.err").read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"the node stopped at start: {said[-1] if said else process.returncode}")
        assoc = ae.associate("127.0.0.1", port, ae_title="FRACSIGHT")
        if assoc.is_established:
            assoc.release()
            return process
        time.sleep(0.1)
    raise RuntimeError("the node did not start")


def _client(
    port: int,
    images: list[pydicom.Dataset],
    count: int,
    one_study: bool,
    go: threading.Barrier,
    acks: list,
    sent: list,
) -> None:
    """One association carrying ``count`` images (cycling through ``images``), each a new study or
    all one study."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    for ds in images:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    copies = []
    study, series = generate_uid(), generate_uid()
    for number, source in enumerate(itertools.islice(itertools.cycle(images), count), start=1):
        ds = copy.deepcopy(source)  # a shallow copy would share its elements with the other clients
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if one_study:
            ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.InstanceNumber = series, study, number
        else:
            ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
        copies.append(ds)
    go.wait(timeout=600)
    assoc = ae.associate("127.0.0.1", port, ae_title="FRACSIGHT")
    if not assoc.is_established:
        return
    for ds in copies:
        if not assoc.is_established:  # aborted by the node (or the machine's load): the rest are unsent
            break
        started = time.perf_counter()
        status = assoc.send_c_store(ds)
        if status and status.Status == 0x0000:
            acks.append(time.perf_counter() - started)
            sent.append(ds.SOPInstanceUID)
    if assoc.is_established:
        assoc.release()


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def _drained(data: Path) -> bool:
    with sqlite3.connect(data / "fracsight.db", timeout=10) as db:
        return not db.execute(
            "SELECT (SELECT COUNT(*) FROM images WHERE status IN ('queued', 'analysing') "
            "OR results = 'pending') + (SELECT COUNT(*) FROM sends WHERE status != 'sent')"
        ).fetchone()[0]


def _round(
    args: argparse.Namespace, images: list[pydicom.Dataset], precision: str, models: set[str]
) -> dict[str, float]:
    """One burst on a freshly started node running ``precision``: its measures, by name (times in
    ms); the model ids its records carry are added to ``models``."""
    pacs = Pacs()
    with tempfile.TemporaryDirectory() as folder:
        data, port = Path(folder) / "data", _free_port()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        node = _start(data, port, pacs.port, args.quiet, args.model, precision)
        try:
            acks: list[float] = []
            sent: list[str] = []
            # each client starts at another image of the list
            orders = [images[i % len(images) :] + images[: i % len(images)] for i in range(args.clients)]
            go = threading.Barrier(args.clients + 1)
            threads = [
                threading.Thread(
                    target=_client, args=(port, order, args.count, args.one_study, go, acks, sent)
                )
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
        finally:
            node.terminate()
            node.wait(60)
            pacs.server.shutdown()
        # CPU of the node (with its decoder processes; its start included) and of this process (the
        # modality clients and the PACS, which in a hospital run on other machines)
        after, own_after = (
            resource.getrusage(resource.RUSAGE_CHILDREN),
            resource.getrusage(resource.RUSAGE_SELF),
        )
        node_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        bench_cpu = own_after.ru_utime + own_after.ru_stime - own_before.ru_utime - own_before.ru_stime
        with sqlite3.connect(data / "fracsight.db") as db:
            rows = {
                r[0]: (r[1], r[2], _epoch(r[3]), _epoch(r[4]) if r[4] else None, r[5])
                for r in db.execute(
                    "SELECT id, sop_instance_uid, analyses, received_at, analysed_at, study_key FROM images"
                )
            }
            sends = list(db.execute("SELECT image_id, kind, sop_instance_uid FROM sends"))
            models.update(r[0] for r in db.execute("SELECT DISTINCT model_id FROM images") if r[0])
    # rows: image id -> (SOP Instance UID, analyses, received, analysed, study); sends: (image id, kind, UID)
    own: dict[str, list[str]] = {}  # image id -> its own objects' UIDs
    reports: dict[str, list[float]] = {}  # study -> arrival times of its reports at the PACS
    for image_id, kind, uid in sends:
        if kind != "sr":
            own.setdefault(image_id, []).append(uid)
        elif uid in pacs.arrivals:
            reports.setdefault(rows[image_id][4], []).append(pacs.arrivals[uid])
    by_uid = {r[0]: image_id for image_id, r in rows.items()}
    first = min(r[2] for r in rows.values())
    analysed = [r[3] for r in rows.values() if r[3]]
    analysing = max(analysed) - first if analysed else 0.0
    image_latency, delivery, report_latency = [], [], []
    complete = 0
    for uid in sent:
        image_id = by_uid.get(uid)
        if image_id is None:
            continue
        _, analyses, received, analysed_at, study = rows[image_id]
        arrivals = [pacs.arrivals.get(u) for u in own.get(image_id, [])]
        if arrivals and all(arrivals):
            image_latency.append(max(arrivals) - received)
            delivery.append(max(arrivals) - analysed_at)
        # the first report at the PACS that covers this image: the version made with it or after
        later = [t for t in reports.get(study, []) if t >= received]
        if later:
            report_latency.append(min(later) - received)
        complete += analyses == 1 and bool(arrivals) and all(arrivals) and bool(later)

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(np.array(values) * 1e3, q)) if values else float("nan")

    return {
        "instances acknowledged per second": len(sent) / sending,
        "instances analysed per second": len(analysed) / max(analysing, 1e-3),
        "CPU per image, the node (with its decoders, its start included), ms": node_cpu / len(rows) * 1e3,
        "CPU per image, this benchmark's clients and PACS, ms": bench_cpu / len(rows) * 1e3,
        "C-STORE acknowledged, median ms": pct(acks, 50),
        "**receipt to the image's results (SC, GSPS) in the PACS, median ms** (target 5000)": (
            pct(image_latency, 50)
        ),
        "**receipt to the image's results in the PACS, p95 ms** (target 10000)": pct(image_latency, 95),
        "of which analysed to results in the PACS, median ms": pct(delivery, 50),
        "receipt to the first study report covering the image in the PACS, median ms": pct(
            report_latency, 50
        ),
        "receipt to the first study report covering the image in the PACS, p95 ms": pct(report_latency, 95),
        "acknowledged instances analysed once, all results delivered, %": 100.0
        * complete
        / max(1, len(sent)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3, help="associations in parallel (default 3)")
    parser.add_argument(
        "--images", dest="count", type=int, default=20, help="images sent in each association (default 20)"
    )
    parser.add_argument(
        "--one-study",
        action="store_true",
        help="each association's images are one study (default: each its own)",
    )
    parser.add_argument(
        "--quiet", type=float, default=None, help="the node's study quiet time, s (default: its own)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="bursts per precision, each on a fresh node (default 3)"
    )
    add_precision_option(parser)
    parser.add_argument("images", nargs="*", type=Path, help="DICOM radiographs to send (default: samples)")
    args = parser.parse_args()
    paths = args.images or [p for p in DEFAULT_IMAGES if p.exists()]
    images = [pydicom.dcmread(p) for p in paths]
    precisions = precisions_to_measure(args.model, args.precision)
    measured: dict[str, list[dict[str, float]]] = {p: [] for p in precisions}
    models: dict[str, set[str]] = {p: set() for p in precisions}
    for n in range(args.rounds):  # alternating, the order reversed every other round
        for precision in precisions if n % 2 == 0 else precisions[::-1]:
            measured[precision].append(_round(args, images, precision, models[precision]))
    names = ", ".join(p.name for p in paths)
    quiet = f"{args.quiet:g} s" if args.quiet is not None else "the default 10 s"
    layout = "one study per association" if args.one_study else "each image its own study"
    print(
        f"# fracsight dicom-node under load, {dt.date.today()}: {platform.machine()}, {os.cpu_count()} cores "
        f"(load average {os.getloadavg()[0]:.1f}), {args.clients} associations in parallel x {args.count} "
        f"images, {layout}, study quiet time {quiet}; images: {names}; loopback; {args.rounds} rounds, "
        "each on a freshly started node"
        + (f"; {' and '.join(precisions)} alternating" if len(precisions) == 2 else "")
    )
    answered = "; ".join(f"{p}: {', '.join(sorted(models[p])) or 'none'}" for p in precisions)
    print(f"# models that answered: {answered}")
    if len(precisions) == 1:
        rounds = measured[precisions[0]]
        print("| measure | " + " | ".join(f"round {n}" for n in range(1, args.rounds + 1)) + " | median |")
        print("|---" * (args.rounds + 2) + "|")
        for name in rounds[0]:
            values = [r[name] for r in rounds]
            cells = [_cell(name, v) for v in [*values, float(np.median(values))]]
            print(f"| {name} | " + " | ".join(cells) + " |")
        return
    print(f"| measure | float32, median of {args.rounds} | int8, median of {args.rounds} | int8 / float32 |")
    print("|---|---|---|---|")
    for name in measured["float32"][0]:
        f, q = (float(np.median([r[name] for r in measured[p]])) for p in ("float32", "int8"))
        ratio = f"{q / f:.2f}" if f > 0 and np.isfinite(f) and np.isfinite(q) else ""
        print(f"| {name} | {_cell(name, f)} | {_cell(name, q)} | {ratio} |")


def _cell(name: str, value: float) -> str:
    return f"{value:.{2 if name.endswith('per second') else 0}f}"




if __name__ == "__main__":
    main()
