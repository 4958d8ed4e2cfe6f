"""Analyse radiographs with an ONNX model: probability, category and heat map, no torch needed.

Files are decoded in worker processes (:class:`fracsight.io.DecoderPool`), so a file that
crashes or hangs a native decoder costs only its own row. Threads feed the workers and
preprocess one batch ahead of the model, so a folder of thousands of images keeps both
cores busy. ONNX Runtime uses all cores for the model itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fracsight.finding import Finding
from fracsight.io import DecoderPool, Radiograph, RefusedInput
from fracsight.model_card import DEFAULT_MODEL, ModelCard, categorise
from fracsight.preprocess import Letterbox, prepare

# Formats that can decode a smaller image cheaply (JPEG 2000 resolution levels) stop at this
# longer side: ample for the 384 px model and a readable heat-map overlay, and it keeps a
# 3000 x 3000 JPEG 2000 study inside the half-second budget.
DECODE_SIDE = 1024


class Result(NamedTuple):
    """One input's outcome: a finding, or the reason it could not be analysed."""

    path: str
    finding: Finding | None
    error: str | None


@dataclass
class _Prepared:
    path: str
    radiograph: Radiograph | None = None
    image: np.ndarray | None = None
    letterbox: Letterbox | None = None
    error: str | None = None
    decode_ms: float = 0.0
    preprocess_ms: float = 0.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Analyser:
    """A loaded model and its card. ``Analyser()`` uses the default model shipped in the package."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        threads: int | None = None,
        batch_size: int = 8,
        decode_side: int | None = DECODE_SIDE,
        decoders: DecoderPool | None = None,
    ):
        import onnxruntime as ort

        path = Path(model_path) if model_path else DEFAULT_MODEL
        if not path.exists():
            raise FileNotFoundError(f"{path}: model not found")
        self.model_path = path
        self.card = ModelCard.for_model(path)
        self.model_id: str = self.card.model_id
        self.size: int = self.card.input_size
        self.thresholds: dict[str, float] = self.card.thresholds
        self.temperature: float = self.card.temperature
        self.batch_size = max(1, batch_size)
        # None decodes every file in full: for callers that compare the heat map with
        # coordinates in the file's own pixels (expert boxes in `fracsight evaluate`).
        self.decode_side = max(decode_side, self.size) if decode_side else None
        self.threads = threads or os.cpu_count() or 1
        # Decoder processes start on the first read; a service may share one pool between analysers.
        self._own_decoders = decoders is None
        self.decoders = decoders or DecoderPool(workers=self.threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors share no base class to catch
            raise ValueError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from exc
        self._check_signature()

    def _check_signature(self) -> None:
        """Refuse, at load time, a model whose inputs and outputs do not match what inference feeds
        and reads, or whose card gives another input size; otherwise the first batch would fail."""
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if set(inputs) != {"image"} or not {"logit", "heatmap"} <= outputs:
            raise ValueError(
                f"{self.model_path}: model takes {sorted(inputs)} and gives {sorted(outputs)}; "
                "fracsight needs input 'image' and outputs 'logit' and 'heatmap'"
            )
        side = [d for d in inputs["image"][-2:] if isinstance(d, int)]
        if any(d != self.size for d in side):
            raise ValueError(
                f"{self.model_path}: model input is {inputs['image']} but its card says "
                f"input_size {self.size}"
            )

    def run_model(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prepared images (N, S, S) -> probabilities (N,) and heat maps (N, h, w) in [0, 1]."""
        logit, cells = self.session.run(["logit", "heatmap"], {"image": images[:, None].astype(np.float32)})
        return _sigmoid(logit / self.temperature), _sigmoid(cells)

    def read(self, path: str | Path) -> Radiograph:
        """Read an input as this model needs it (JPEG 2000 may stop at ``decode_side``), in a
        decoder process; raises what :func:`fracsight.io.read_radiograph` raises."""
        return self.decoders.read(path, needed_side=self.decode_side)

    def close(self) -> None:
        """Stop the decoder processes this analyser started (they also stop when it is collected)."""
        if self._own_decoders:
            self.decoders.close()

    def analyse(self, radiograph: Radiograph) -> Finding:
        """One radiograph already in memory -> its Finding."""
        t0 = time.perf_counter()
        image, box = prepare(radiograph.pixels, self.size)
        t1 = time.perf_counter()
        prob, maps = self.run_model(image[None])
        t2 = time.perf_counter()
        return self._finding(
            float(prob[0]), maps[0], box, {"preprocess": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3}
        )

    def _finding(self, probability: float, heatmap: np.ndarray, box: Letterbox, timings: dict) -> Finding:
        return Finding(
            probability=probability,
            category=categorise(probability, self.thresholds),
            heatmap=heatmap.astype(np.float32),
            letterbox=box,
            model_id=self.model_id,
            timings_ms=timings,
        )

    def _load(self, path: str) -> _Prepared:
        item = _Prepared(path)
        t0 = time.perf_counter()
        try:
            item.radiograph = self.read(path)
        except RefusedInput as exc:
            item.error = exc.reason
            return item
        except FileNotFoundError:
            item.error = "no such file (or a link to a file that is gone)"
            return item
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a batch
            item.error = f"could not be read: {type(exc).__name__}: {exc}"
            return item
        t1 = time.perf_counter()
        try:
            item.image, item.letterbox = prepare(item.radiograph.pixels, self.size)
        except ValueError as exc:
            item.error = str(exc)
            item.radiograph = None  # refused: no overlay will need its pixels (a strip can be 300 MB)
        item.decode_ms, item.preprocess_ms = (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3
        return item

    def iter_analyses(
        self, paths: Iterable[str | Path], workers: int | None = None
    ) -> Iterator[tuple[Result, Radiograph | None]]:
        """Analyse files in batches, decoding the next batch while the model runs; keeps input order.

        Yields each Result with its decoded Radiograph (None when refused), for callers that
        draw overlays; most callers want :meth:`analyse_paths`.
        """
        batches = _chunks([str(p) for p in paths], self.batch_size)
        pool = ThreadPoolExecutor(max_workers=workers or self.decoders.workers)
        try:
            pending: list[Future] | None = None
            for batch in batches:
                upcoming = [pool.submit(self._load, p) for p in batch]
                if pending is not None:
                    yield from self._run_batch([f.result() for f in pending])
                pending = upcoming
            if pending is not None:
                yield from self._run_batch([f.result() for f in pending])
        finally:  # a caller that stops early (Ctrl-C) waits for no file, started or not
            pool.shutdown(wait=False, cancel_futures=True)

    def analyse_paths(self, paths: Iterable[str | Path], workers: int | None = None) -> Iterator[Result]:
        """(path, finding, error) for every input, in order; refused files carry their reason."""
        for result, _ in self.iter_analyses(paths, workers):
            yield result

    def _run_batch(self, items: list[_Prepared]) -> Iterator[tuple[Result, Radiograph | None]]:
        ok = [it for it in items if it.error is None]
        probs: dict[int, tuple[float, np.ndarray]] = {}
        model_ms = 0.0
        if ok:
            t0 = time.perf_counter()
            p, maps = self.run_model(np.stack([it.image for it in ok]))
            model_ms = (time.perf_counter() - t0) * 1e3 / len(ok)
            probs = {id(it): (float(p[i]), maps[i]) for i, it in enumerate(ok)}
        for it in items:
            if it.error is not None:
                yield Result(it.path, None, it.error), None
                continue
            prob, heat = probs[id(it)]
            finding = self._finding(
                prob,
                heat,
                it.letterbox,
                {"decode": it.decode_ms, "preprocess": it.preprocess_ms, "model": model_ms},
            )
            radiograph = it.radiograph
            it.radiograph = it.image = None  # free memory early on long runs
            yield Result(it.path, finding, None), radiograph


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
