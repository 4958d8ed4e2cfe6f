"""The analysis worker: takes queued images one at a time and writes each one's single result.

One background thread per service. It decodes through the analyser (in decoder processes,
so a file that crashes a native decoder costs only that file), runs the model, and writes the
result and the pixels the viewer shows, so the web side never decodes an untrusted file
itself. The next queued images are decoded (and their viewer copies written) in reader threads
while the model runs on the current one, as many as there are decoder processes: a 2000-pixel
JPEG 2000 takes longer to decode than to analyse, so a burst of studies is worked off at the
speed of the slower of the two, not of their sum. ONNX Runtime runs with few threads
(:attr:`ServiceSettings.analysis_threads`): on a 2-core machine the HTTP side keeps a core and
stays responsive while the queue is worked off.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fracsight.decide import CATEGORIES
from fracsight.finding import READ_ERROR, Refusal
from fracsight.inference import Analyser
from fracsight.io import Radiograph, RefusedInput
from fracsight.preprocess import resize_gray
from fracsight.service.loop import QueueLoop
from fracsight.service.store import Analysis, ImageRecord, Store

log = logging.getLogger(__name__)

# The viewer gets the radiograph at full resolution up to this side (a 3000 x 3000 study stays
# whole; a 10,000-pixel scan is reduced), as 16-bit values so window/level works on them.
DISPLAY_MAX_SIDE = 4096
_DISPLAY_LEVELS = 65535.0


def display_path(store: Store, image_id: str) -> Path:
    return store.data_dir / "display" / image_id[:2] / f"{image_id}.u16"


class RecentPixels:
    """The pixels of the last few analysed images, for the DICOM results stage that makes their
    Secondary Captures moments later (else it reads the viewer's copy back from disk)."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._pixels: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, image_id: str, pixels: np.ndarray) -> None:
        with self._lock:
            self._pixels[image_id] = pixels
            while len(self._pixels) > self.keep:
                self._pixels.popitem(last=False)

    def take(self, image_id: str) -> np.ndarray | None:
        with self._lock:
            return self._pixels.pop(image_id, None)


class AnalysisWorker(QueueLoop):
    """Works off the store's queue in a thread until :meth:`stop`; :meth:`wake` after each intake.

    ``listeners`` are called with each image's id once it is finished (analysed or refused): the
    DICOM node's results stage listens there, so analysis itself is never repeated for it, and
    takes the image's pixels from ``recent`` when it set one.
    """

    name = "fracsight-analysis"

    def __init__(self, store: Store, analyser: Analyser, poll_s: float = 2.0) -> None:
        super().__init__(poll_s)
        self.store = store
        self.analyser = analyser
        self.listeners: list[Callable[[str], None]] = []
        self.recent: RecentPixels | None = None  # kept only when someone takes them (the DICOM node)
        self._in_hand: deque[tuple[ImageRecord, Future]] = deque()
        self._readers = ThreadPoolExecutor(
            max_workers=analyser.decoders.workers, thread_name_prefix="fracsight-read"
        )

    def resume(self) -> None:
        self.analyser.warm_up()
        requeued, failed = self.store.requeue_interrupted()
        if requeued or failed:
            log.info("resuming: %d interrupted analyses queued again, %d given up", requeued, failed)

    def run_once(self) -> bool:
        """Analyse the oldest claimed image, claiming and starting to read the next ones first;
        False when there was none."""
        if not self.stopping:
            self._read_ahead()
        if not self._in_hand:
            return False
        record, reading = self._in_hand.popleft()
        if not self.stopping:
            self._read_ahead()  # keep the decoders busy while the model runs on this one
        started = time.perf_counter()
        outcome = self._analyse(record, reading)
        # never its id; a refusal with its reason code (words may quote a header: the code only)
        log.info("an image %s in %.0f ms", outcome, (time.perf_counter() - started) * 1e3)
        for listener in self.listeners:
            try:
                listener(record.id)
            except Exception as exc:  # noqa: BLE001 - a listener's failure is its own; analysis goes on
                # by type only: a DICOM library's message may quote the header (patient data)
                log.error("a listener after an analysis failed (%s)", type(exc).__name__)
        return True

    def finish_in_hand(self) -> None:
        """On stop: the images already claimed are analysed (their reads are under way), so none
        is left ``analysing`` to count as an interrupted attempt at the next start."""
        while self._in_hand:
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - what is left stays analysing: queued again at the next start
                log.exception("stopping: an image in hand could not be finished")
                break
        self._readers.shutdown(wait=True)

    def _read_ahead(self) -> None:
        """Claim queued images until one more than there are decoders is in hand, each read in a
        reader thread."""
        while len(self._in_hand) <= self.analyser.decoders.workers:
            record = self.store.claim_next()
            if record is None:
                return
            self._in_hand.append((record, self._readers.submit(self._read, record)))

    def _read(self, record: ImageRecord) -> Radiograph:
        """Decode the image (in a decoder process) and keep its pixels for the viewer."""
        radiograph = self.analyser.read(self.store.data_dir / record.file, name="a received image")
        try:
            _write_display(display_path(self.store, record.id), radiograph.pixels)
        except OSError as exc:  # the disk, not the file: analysed all the same (results decode again)
            log.error(
                "the viewer's copy of an image could not be written (%s)", exc.strerror or type(exc).__name__
            )
        return radiograph

    def _analyse(self, record: ImageRecord, reading: Future) -> str:
        """Analyse one image and record its result; returns what happened, for the log line."""
        try:
            radiograph = reading.result()
        except RefusedInput as exc:
            self.store.refuse(record.id, exc.reason, code=exc.code)
            return f"refused ({exc.code})"
        except Exception as exc:  # noqa: BLE001 - an unexpected decoder error is this file's refusal
            self.store.refuse(record.id, f"could not be read ({type(exc).__name__})", code=READ_ERROR)
            return f"refused ({READ_ERROR})"
        try:
            outcome = self.analyser.outcome(radiograph)
        except Exception as exc:  # noqa: BLE001 - the model failing is the service's fault, not the file's
            log.error("the analysis of an image failed (%s)", type(exc).__name__)
            self.store.refuse(record.id, f"analysis failed ({type(exc).__name__})", status="failed")
            return f"failed ({type(exc).__name__})"
        if isinstance(outcome, Refusal):  # blank, tiny or strip-shaped
            self.store.refuse(record.id, outcome.reason, code=outcome.code)
            return f"refused ({outcome.code})"
        box = outcome.letterbox
        result = {
            **outcome.to_record(),
            "path": None,  # the store names its files itself; the upload's name is not kept here
            "operating_point_meaning": {c.value: entry.meaning for c, entry in CATEGORIES.items()},
            "letterbox": {
                "size": box.size,
                "scale": box.scale,
                "pad_x": box.pad_x,
                "pad_y": box.pad_y,
                "height": box.height,
                "width": box.width,
            },
            # "voi": which VOI step made the display values (the SC keeps the image's own window)
            "display": {"height": int(radiograph.shape[0]), "width": int(radiograph.shape[1]),
                        "voi": radiograph.metadata.get("voi")},  # fmt: skip
            # What site monitoring watches for drift in the inputs (fracsight.service.monitoring).
            "inputs": {
                "manufacturer": _manufacturer(radiograph.dicom),
                "brightness": round(float(np.mean(radiograph.pixels)), 4),
            },
        }
        if self.recent is not None:
            self.recent.put(record.id, radiograph.pixels)
        self.store.finish(
            record.id,
            Analysis(outcome.probability, outcome.category.value, outcome.model_id, result, outcome.heatmap),
        )
        return "analysed"


# A manufacturer's name as a site's equipment reports it: short printable text, else not kept (a
# stretched element may hold the next elements, a patient's name among them).
_MANUFACTURER = re.compile(r"[A-Za-z0-9 .,&()/_+-]{1,64}")


def _manufacturer(header) -> str | None:
    """DICOM Manufacturer (0008,0070) when it is plain equipment text; None without one."""
    if header is None:
        return None
    value = str(header.get("Manufacturer", "") or "").strip()
    return value if _MANUFACTURER.fullmatch(value) else None


def _write_display(path: Path, pixels: np.ndarray) -> None:
    """The radiograph's pixels as 16-bit values (height, width header, then row-major uint16)."""
    h, w = pixels.shape
    scale = min(1.0, DISPLAY_MAX_SIDE / max(h, w))
    if scale < 1.0:
        pixels = resize_gray(pixels, max(1, round(w * scale)), max(1, round(h * scale)))
    # One scratch array, each step in place: this runs for every image, at full resolution.
    values = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
    values *= _DISPLAY_LEVELS
    values += 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as fh:
        fh.write(np.array(values.shape, dtype="<u4").tobytes())
        fh.write(values.astype("<u2").data)
    partial.replace(path)


def read_display(path: Path) -> np.ndarray:
    """The 16-bit display pixels written by the worker, as float32 in [0, 1]."""
    data = path.read_bytes()
    h, w = np.frombuffer(data[:8], dtype="<u4")
    return np.frombuffer(data[8:], dtype="<u2").reshape(int(h), int(w)).astype(np.float32) / _DISPLAY_LEVELS
