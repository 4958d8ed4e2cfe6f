"""Analyse radiographs with an ONNX model: probability, category and heat map, no torch needed.

One outcome per input, never an exception for a bad one: :meth:`Analyser.outcome` takes a path,
bytes, a pydicom ``Dataset`` or a :class:`~fracsight.io.Radiograph` and returns a
:class:`~fracsight.finding.Finding` or a :class:`~fracsight.finding.Refusal` with its reason code.
Every surface (``predict``, the web service, the DICOM node, the Ray engine) goes through it.

Two halves, so a cluster can run them in different processes with the same result:
:class:`Preparer` decodes (in worker processes, :class:`fracsight.io.DecoderPool`, so a file
that crashes or hangs a native decoder costs only itself) and preprocesses; :meth:`Analyser.finish`
runs the model. The model sees one image at a time: an image's answer never depends on which
other images share its batch (batching changes the last bits, and on a CPU it is not faster).
Threads decode ahead of the model, so a folder of thousands of images keeps every core busy.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fracsight.decide import decide
from fracsight.finding import MISSING, READ_ERROR, Finding, Outcome, Refusal, SourceIds
from fracsight.io import DecoderPool, Radiograph, RefusedInput, UnreadableImage
from fracsight.io.reduced import full_shape
from fracsight.io.safe_text import failure
from fracsight.model_card import DEFAULT_MODEL, ModelCard
from fracsight.preprocess import Letterbox, NotAnalysable, prepare
from fracsight.safety import Scope, check_scope

# What an Analyser takes as one input: a file, a file's bytes, a pydicom Dataset, or pixels
# already read.
Source = str | os.PathLike | bytes | Radiograph | Any

# Formats that can decode a smaller image cheaply (JPEG 2000 resolution levels) stop at this
# longer side: ample for the 384 px model and a readable heat-map overlay, and it keeps a
# 3000 x 3000 JPEG 2000 study inside the half-second budget.
DECODE_SIDE = 1024

# Which copy of a model runs: "float32" the model file itself, "int8" its 8-bit copy NAME.int8.onnx
# (``fracsight quantise``). float32 stays the default until an 8-bit model meets the acceptance in
# training/README.md ("8-bit model"); the other is always there for research and comparison.
PRECISIONS = ("float32", "int8")
DEFAULT_PRECISION = "float32"


def model_for_precision(model_path: str | Path | None, precision: str | None = None) -> Path:
    """The ONNX file that runs ``model_path`` (default: the shipped model) at ``precision``."""
    path = Path(model_path) if model_path else DEFAULT_MODEL
    precision = precision or DEFAULT_PRECISION
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "int8" and not path.name.endswith(".int8.onnx"):
        quantised = path.with_name(path.name.removesuffix(".onnx") + ".int8.onnx")
        if not quantised.exists():
            raise FileNotFoundError(
                f"{quantised}: no 8-bit copy of this model (make one with fracsight quantise, "
                "or use precision float32)"
            )
        return quantised
    return path


@dataclass
class Prepared:
    """One input decoded and made model input, or refused on the way (``refusal``).

    ``radiograph`` keeps the decoded pixels for callers that draw overlays; a caller that does
    not (a cluster task sending this to the model's process) sets it to None.
    """

    source: str
    image: np.ndarray | None = None
    letterbox: Letterbox | None = None
    ids: SourceIds = field(default_factory=SourceIds)
    radiograph: Radiograph | None = None
    refusal: Refusal | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    body_part: str | None = None  # DICOM Body Part Examined, for the scope check


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Preparer:
    """Decoding and preprocessing for a model of input side ``size``, without the model itself.

    ``decode_side`` lets formats that can (JPEG 2000) decode a smaller image cheaply; None
    decodes every file in full, for callers that compare the heat map with coordinates in the
    file's own pixels (expert boxes in ``fracsight evaluate``). ``reduce_pixels``: every larger
    image is also box-averaged down to ``decode_side`` in the decoder process
    (:mod:`fracsight.io.reduced`), for callers that never show the pixels at full size
    (``predict``); the heat map's geometry stays the file's.
    """

    def __init__(
        self,
        size: int,
        decode_side: int | None = DECODE_SIDE,
        decoders: DecoderPool | None = None,
        workers: int | None = None,
        reduce_pixels: bool = False,
    ) -> None:
        self.size = size
        self.decode_side = max(decode_side, size) if decode_side else None
        self.reduce_pixels = reduce_pixels and self.decode_side is not None
        # Decoder processes start on the first read; a service may share one pool between analysers.
        self._own_decoders = decoders is None
        self.decoders = decoders or DecoderPool(workers=workers)

    def read(self, source: Source, name: str | None = None) -> Radiograph:
        """An input's pixels, decoded in a worker process; raises what
        :func:`fracsight.io.read_radiograph` raises. ``name`` names the input in messages (default:
        its path; "upload" or "dataset" for bytes and data sets)."""
        if isinstance(source, Radiograph):
            return source
        side, model = self.decode_side, (self.size if self.reduce_pixels else None)
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            return self.decoders.read_bytes(data, name or "upload", needed_side=side, model_side=model)
        if isinstance(source, (str, os.PathLike)):
            return self.decoders.read(source, needed_side=side, name=name, model_side=model)
        if hasattr(source, "dataset_encoding") or hasattr(source, "file_meta"):  # a pydicom Dataset
            return self.decoders.read_bytes(
                _dataset_bytes(source, name), name or "dataset", needed_side=side, model_side=model
            )
        raise TypeError(
            f"cannot analyse a {type(source).__name__}: give a path, bytes, a pydicom Dataset or a Radiograph"
        )

    def prepare(self, source: Source, name: str | None = None) -> Prepared:
        """Decode and preprocess one input; a bad input gives a Prepared with its refusal, never an error."""
        label = _label(source, name)
        item = Prepared(label)
        t0 = time.perf_counter()
        try:
            item.radiograph = self.read(source, name)
        except RefusedInput as exc:
            item.refusal = Refusal.of(exc, label)
            return item
        except FileNotFoundError:
            item.refusal = Refusal(label, MISSING, "no such file (or a link to a file that is gone)")
            return item
        except Exception as exc:  # noqa: BLE001 - one bad input must never stop a batch
            item.refusal = Refusal(label, READ_ERROR, f"could not be read ({failure(exc)})")
            return item
        t1 = time.perf_counter()
        try:
            item.image, item.letterbox = _prepare(item.radiograph, self.size)
        except RefusedInput as exc:  # blank, tiny, strip-shaped
            item.refusal = Refusal.of(exc, label)
            item.radiograph = None  # refused: no overlay will need its pixels (a strip can be 300 MB)
            return item
        except ValueError as exc:  # pixels not 2-D: only a Radiograph made by hand can have them
            item.refusal = Refusal(label, NotAnalysable.code, str(exc))
            item.radiograph = None  # refused: no overlay will need its pixels (a strip can be 300 MB)
            return item
        item.ids = SourceIds.of(item.radiograph)
        item.body_part = (item.radiograph.metadata or {}).get("body_part")
        item.timings_ms = {"decode": (t1 - t0) * 1e3, "preprocess": (time.perf_counter() - t1) * 1e3}
        return item

    def close(self) -> None:
        """Stop the decoder processes this preparer started (they also stop when it is collected)."""
        if self._own_decoders:
            self.decoders.close()


def _prepare(radiograph: Radiograph, size: int) -> tuple[np.ndarray, Letterbox]:
    """:func:`fracsight.preprocess.prepare`, with what a reduced decode carries (the file's size,
    the model base and the full image's percentiles: :mod:`fracsight.io.reduced`)."""
    metadata = radiograph.metadata or {}
    if "full_shape" not in metadata:
        return prepare(radiograph.pixels, size)
    percentiles = metadata.get("percentiles")
    return prepare(
        radiograph.pixels,
        size,
        full_shape(radiograph),
        radiograph.model_base,
        (float(percentiles[0]), float(percentiles[1])) if percentiles else None,
    )


def _label(source: Source, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, Radiograph):
        return source.source
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return "upload" if isinstance(source, (bytes, bytearray, memoryview)) else "dataset"


def _dataset_bytes(dataset: Any, name: str | None) -> bytes:
    """A pydicom Dataset as a DICOM file's bytes, so it is decoded in a worker like any file."""
    import pydicom

    buffer = io.BytesIO()
    try:
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    except Exception as exc:  # noqa: BLE001 - a data set pydicom cannot write is this input's refusal
        raise UnreadableImage(
            name or "dataset", f"the DICOM data set cannot be encoded ({failure(exc)})"
        ) from None
    return buffer.getvalue()


@dataclass(frozen=True)
class ModelOutputs:
    """One forward pass: probabilities (N,), heat maps (N, h, w) in [0, 1], and, where the model
    has them, region-head probabilities (N, regions) and pooled features (N, D)."""

    probability: np.ndarray
    heatmap: np.ndarray
    region: np.ndarray | None = None
    features: np.ndarray | None = None


class Analyser:
    """A loaded model and its card. ``Analyser()`` uses the default model shipped in the package.

    ``precision`` picks the model file (:func:`model_for_precision`): "int8" runs NAME.int8.onnx
    with its own card.

    ``batch_size`` is how many inputs are decoded ahead of the model (each holds its pixels).
    Three separate CPU knobs, each defaulting to ``threads`` (itself defaulting to every core):
    ``model_threads`` for ONNX Runtime, ``decoder_processes`` for the decoder worker processes
    (unless ``decoders`` is a shared pool), and ``read_ahead`` for the threads that decode and
    preprocess upcoming inputs in :meth:`iter_outcomes` (default: as many as there are decoders).
    ``decode_side`` and ``reduce_pixels``: see :class:`Preparer`.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        threads: int | None = None,
        batch_size: int = 8,
        decode_side: int | None = DECODE_SIDE,
        decoders: DecoderPool | None = None,
        *,
        model_threads: int | None = None,
        decoder_processes: int | None = None,
        read_ahead: int | None = None,
        precision: str | None = None,
        reduce_pixels: bool = False,
    ):
        import onnxruntime as ort

        path = model_for_precision(model_path, precision)
        if not path.exists():
            raise FileNotFoundError(f"{path}: model not found")
        self.model_path = path
        self.card = ModelCard.for_model(path)
        self.identity = self.card.identity
        self.model_id: str = self.card.model_id
        self.size: int = self.card.input_size
        self.thresholds: dict[str, float] = self.card.thresholds
        self.temperature: float = self.card.temperature
        self.batch_size = max(1, batch_size)
        every_core = os.cpu_count() or 1
        self.model_threads = model_threads or threads or every_core
        workers = decoder_processes or threads
        self.preparer = Preparer(self.size, decode_side, decoders, workers, reduce_pixels=reduce_pixels)
        self.decode_side = self.preparer.decode_side
        self.decoders = self.preparer.decoders
        self.read_ahead = read_ahead or threads or self.decoders.workers
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.model_threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors share no base class to catch
            raise ValueError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from exc
        self._check_signature()
        # The scope check: the card's fitted distance check, on the outputs this model has.
        outputs = {o.name for o in self.session.get_outputs()}
        self.region_labels = self.card.region_labels
        self._scope_outputs = [n for n in ("region", "features") if n in outputs]
        if "region" in self._scope_outputs and len(self.region_labels) == 0:
            self._scope_outputs.remove("region")  # a region head without names says nothing usable
        self.scope_check = self.card.scope_check if "features" in self._scope_outputs else None

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
        outputs = self.run_outputs(images)
        return outputs.probability, outputs.heatmap

    def run_outputs(self, images: np.ndarray) -> ModelOutputs:
        """Prepared images (N, S, S) -> everything the model gives, in one forward pass: what the
        scope check needs (region head, pooled features) costs no second pass."""
        names = ["logit", "heatmap", *self._scope_outputs]
        answers = self.session.run(names, {"image": images[:, None].astype(np.float32)})
        values = dict(zip(names, answers, strict=True))
        region = values.get("region")
        return ModelOutputs(
            probability=_sigmoid(values["logit"] / self.temperature),
            heatmap=_sigmoid(values["heatmap"]),
            region=None if region is None else _sigmoid(region),
            features=values.get("features"),
        )

    def scope_of(self, outputs: ModelOutputs, index: int, body_part: str | None) -> Scope | None:
        """Image ``index``'s scope (:func:`fracsight.safety.check_scope`); None for a model that
        has neither a fitted check nor a region head."""
        if self.scope_check is None and outputs.region is None:
            return None
        regions = {}
        if outputs.region is not None:
            regions = dict(zip(self.region_labels, map(float, outputs.region[index]), strict=True))
        features = None if outputs.features is None else outputs.features[index]
        return check_scope(self.scope_check, features, regions, body_part)

    def warm_up(self) -> None:
        """Start the decoder processes and run the model once, so a service's first images are not
        slower than the rest (a process start and the model's first run cost a second or so)."""
        self.decoders.start()
        self.run_outputs(np.zeros((1, self.size, self.size), dtype=np.float32))

    def read(self, source: Source, name: str | None = None) -> Radiograph:
        """An input as this model needs it, decoded in a worker process (:meth:`Preparer.read`)."""
        return self.preparer.read(source, name)

    def close(self) -> None:
        """Stop the decoder processes this analyser started (they also stop when it is collected)."""
        self.preparer.close()

    def outcome(self, source: Source, name: str | None = None) -> Outcome:
        """One input -> its Finding, or its Refusal with the reason; never raises for a bad input."""
        return self.finish(self.preparer.prepare(source, name))

    def analyse(self, radiograph: Radiograph) -> Finding:
        """One radiograph already in memory -> its Finding; raises
        :class:`~fracsight.preprocess.NotAnalysable` for a blank, tiny or strip-shaped image."""
        result = self.outcome(radiograph)
        if isinstance(result, Refusal):
            raise NotAnalysable(result.reason, radiograph.source)
        return result

    def finish(self, item: Prepared) -> Outcome:
        """The model's answer for one prepared input (its refusal when it was refused)."""
        if item.refusal is not None:
            return item.refusal
        t0 = time.perf_counter()
        outputs = self.run_outputs(item.image[None])
        t1 = time.perf_counter()
        scope = self.scope_of(outputs, 0, item.body_part)
        timings = {**item.timings_ms, "model": (t1 - t0) * 1e3, "scope": (time.perf_counter() - t1) * 1e3}
        probability = float(outputs.probability[0])
        return Finding(
            probability=probability,
            category=decide(probability, self.thresholds, scope is not None and scope.out_of_scope),
            scope=scope,
            heatmap=outputs.heatmap[0].astype(np.float32),
            letterbox=item.letterbox,
            model=self.identity,
            source=item.source,
            ids=item.ids,
            timings_ms=timings,
        )

    def iter_outcomes(
        self, sources: Iterable[Source], workers: int | None = None
    ) -> Iterator[tuple[Outcome, Radiograph | None]]:
        """Every input's outcome in input order, decoding up to ``batch_size`` inputs ahead of the
        model (in ``workers`` threads, default :attr:`read_ahead`), each with its decoded Radiograph
        (None when refused) for callers that draw overlays.
        """
        pool = ThreadPoolExecutor(max_workers=workers or self.read_ahead)
        try:
            pending: list[Future] | None = None
            for chunk in _chunks(list(sources), self.batch_size):
                upcoming = [pool.submit(self.preparer.prepare, s) for s in chunk]
                if pending is not None:
                    yield from self._finish_all(pending)
                pending = upcoming
            if pending is not None:
                yield from self._finish_all(pending)
        finally:  # a caller that stops early (Ctrl-C) waits for no file, started or not
            pool.shutdown(wait=False, cancel_futures=True)

    def outcomes(self, sources: Iterable[Source], workers: int | None = None) -> Iterator[Outcome]:
        """Every input's Finding or Refusal, in input order (:meth:`iter_outcomes` without pixels)."""
        for result, _ in self.iter_outcomes(sources, workers):
            yield result

    def _finish_all(self, futures: list[Future]) -> Iterator[tuple[Outcome, Radiograph | None]]:
        for future in futures:
            item: Prepared = future.result()
            result = self.finish(item)
            radiograph = item.radiograph
            item.radiograph = item.image = None  # free memory early on long runs
            yield result, (radiograph if isinstance(result, Finding) else None)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
