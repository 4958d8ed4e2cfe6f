"""An 8-bit copy of an exported model that answers like the float one, with its own card.

Why: on a CPU with AVX-512 VNNI, 8-bit integer convolutions run the model alone about twice as
fast as float32. The image logit is the mean of the top heat-map cells, so the layers that make
the heat map and read the features (the CAM convolutions and their sum, the last 1x1 convolution
and its activation, the region head), the first convolution (it sees the raw image) and the
mirror pass's averaging stay in float; the rest of the trunk is 8-bit, with per-channel weights
and activation ranges calibrated on development images only. Whether the copy answers like the
float model is measured, never assumed: on the shipped model 3.0 it does not yet (same heat-map
peak cell for 56% of test images; training/README.md, "8-bit model"), so float32 stays the default.

The quantised model is ``NAME.int8.onnx`` beside ``NAME.onnx``; its card ``NAME.int8.card.json``
is the float card with a ``quantisation`` entry: both models (id and SHA-256), the recipe, the
agreement on held-out images and the speed of both, measured side by side.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fracsight.decide import categorise
from fracsight.model_card import ModelCard, card_path

__all__ = [
    "KEEP_FLOAT",
    "Agreement",
    "QuantiseRecipe",
    "compare_models",
    "int8_path",
    "prepared_split",
    "quantise_after_export",
    "quantise_and_describe",
    "quantise_model",
    "time_models",
    "write_int8_card",
]

# Name fragments of the nodes kept in float: the heat-map layers and their sum (/model/Add), the
# last 1x1 convolution and its activation (the features the CAM and the region head read), the
# region head. Also kept: the graph's first convolution (found by order) and every node outside
# the network (/model/, as fracsight.training.export names it), the mirror pass's averaging: an
# 8-bit average of the heat maps would round every cell to 1/256 of the map's range.
KEEP_FLOAT = ("/cam/", "/fine_cam/", "/_conv_head/", "/model/act_1/", "/model/Add", "/region/")
METHODS = ("minmax", "percentile", "entropy")


def int8_path(model: str | Path) -> Path:
    """``NAME.onnx`` -> ``NAME.int8.onnx``: where a model's 8-bit copy lives."""
    model = Path(model)
    return model.with_name(model.name.removesuffix(".onnx") + ".int8.onnx")


@dataclass(frozen=True)
class QuantiseRecipe:
    """How a model is quantised; the card records it so the step can be repeated on a new model."""

    method: str = "minmax"  # calibration: minmax, percentile or entropy
    keep_float: tuple[str, ...] = KEEP_FLOAT  # node-name fragments left in float
    keep_first_conv: bool = True
    per_channel: bool = True
    reduce_range: bool = False  # only for CPUs without VNNI (7-bit weights avoid saturation there)
    op_types: tuple[str, ...] = ("Conv", "Clip", "Add")
    percentile: float = 99.999
    moving_average: bool = False  # minmax: average each image's range instead of the extremes

    def record(self) -> dict[str, Any]:
        record = asdict(self)
        record.update(
            format="QDQ", activations="uint8 (asymmetric)", weights="int8 (symmetric)",
            keep_float=list(self.keep_float), op_types=list(self.op_types),
        )  # fmt: skip
        return record


class _Images:
    """ONNX Runtime's calibration reader over prepared images (N, S, S), one at a time."""

    def __init__(self, images: np.ndarray) -> None:
        self._iter: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._iter, None)
        return None if image is None else {"image": np.asarray(image, np.float32)[None, None]}

    def rewind(self) -> None:  # ORT may ask; calibration reads each image once
        pass


def float_nodes(model: Any, recipe: QuantiseRecipe) -> list[str]:
    """Names of the nodes of ``model`` (an onnx ModelProto) that the recipe keeps in float."""
    names = [
        n.name
        for n in model.graph.node
        if any(part in n.name for part in recipe.keep_float) or not n.name.startswith("/model/")
    ]
    if recipe.keep_first_conv:
        first = next((n.name for n in model.graph.node if n.op_type == "Conv"), None)
        if first is not None and first not in names:
            names.append(first)
    return names


def quantise_model(
    model: str | Path, out: str | Path, calibration: np.ndarray, recipe: QuantiseRecipe
) -> Path:
    """Write the 8-bit copy of ``model`` to ``out``, activation ranges from ``calibration``
    (prepared development images, (N, S, S) in [-1, 1]). Needs the ``train`` extra (onnx)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if recipe.method not in METHODS:
        raise ValueError(f"calibration method {recipe.method!r}: use one of {', '.join(METHODS)}")
    if len(calibration) == 0:
        raise ValueError("quantisation needs at least one calibration image")
    model, out = Path(model), Path(out)
    proto = onnx.load(str(model))
    if not any(n.name.startswith("/model/") for n in proto.graph.node):
        # KEEP_FLOAT names the nodes of one network under /model/ (WithFlipTTA); in any other
        # graph (a fold ensemble) every node would count as "outside" and stay float: a copy
        # that is 8-bit in name only.
        raise ValueError(
            f"{model.name}: not a single fracsight network (no node under /model/): the 8-bit "
            "recipe is defined for that graph only"
        )
    ort.set_default_logger_severity(3)  # calibration's sessions warn about every unused constant
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[recipe.method]
    quantize_static(
        proto,
        str(out),
        _Images(calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(recipe.op_types),
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=float_nodes(proto, recipe),
        calibrate_method=method,
        extra_options={
            "CalibPercentile": recipe.percentile,
            "CalibMovingAverage": recipe.moving_average,
            "CalibMaxIntermediateOutputs": 16,  # bounded memory: ranges are merged every 16 images
        },
    )
    _fold_for_loading(out)
    return out


def _fold_for_loading(path: Path) -> None:
    """Save the model as ONNX Runtime's basic graph optimisations leave it (the Clips folded into
    the 8-bit ranges, their constants gone): the same outputs, bit for bit, and no warning about
    each unused constant every time the model loads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    folded = path.with_name(path.name + ".folded")
    options.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    folded.replace(path)


def session(model: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session as :class:`fracsight.inference.Analyser` makes it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def run(sess: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N,) and heat-map cell logits (N, h, w), one image at a time as inference runs them."""
    logits, maps = [], []
    for image in images:
        logit, cells = sess.run(["logit", "heatmap"], {"image": np.asarray(image, np.float32)[None, None]})
        logits.append(logit[0])
        maps.append(cells[0])
    return np.asarray(logits, np.float64), np.asarray(maps, np.float32)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC by ranks (ties averaged); None when one class is missing."""
    from fracsight.evaluation.metrics import roc_auc

    labels = np.asarray(labels, int)
    if labels.min() == labels.max():
        return None
    return float(roc_auc(scores, labels))


@dataclass
class Agreement:
    """How the 8-bit model answers beside the float one on the same images."""

    n: int
    auc_float: float | None
    auc_int8: float | None
    same_category: float  # fraction of images
    same_peak_cell: float  # fraction of images whose heat-map maximum is in the same cell
    max_probability_difference: float
    median_probability_difference: float
    changed_categories: dict[str, int] = field(default_factory=dict)  # "float->int8": count

    @property
    def auc_difference(self) -> float | None:
        if self.auc_float is None or self.auc_int8 is None:
            return None
        return self.auc_int8 - self.auc_float

    def record(self) -> dict[str, Any]:
        record = asdict(self)
        record["auc_difference"] = self.auc_difference
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in record.items()}


def compare_models(
    float_model: str | Path,
    int8_model: str | Path,
    images: np.ndarray,
    labels: np.ndarray | None,
    threads: int | None = None,
) -> Agreement:
    """Both models on the same prepared images: AUC of each (with ``labels``), how often the
    category (the float model's operating points) and the heat-map peak cell stay the same."""
    card = ModelCard.for_model(float_model)
    temperature = card.temperature
    logit_f, map_f = run(session(float_model, threads), images)
    logit_q, map_q = run(session(int8_model, threads), images)
    prob_f = 1.0 / (1.0 + np.exp(-logit_f / temperature))
    prob_q = 1.0 / (1.0 + np.exp(-logit_q / temperature))
    cat_f = [categorise(float(p), card.thresholds) for p in prob_f]
    cat_q = [categorise(float(p), card.thresholds) for p in prob_q]
    changed: dict[str, int] = {}
    for a, b in zip(cat_f, cat_q, strict=True):
        if a != b:
            key = f"{getattr(a, 'value', a)}->{getattr(b, 'value', b)}"
            changed[key] = changed.get(key, 0) + 1
    n = len(images)
    peak_f = map_f.reshape(n, -1).argmax(axis=1)
    peak_q = map_q.reshape(n, -1).argmax(axis=1)
    diff = np.abs(prob_f - prob_q)
    return Agreement(
        n=n,
        auc_float=None if labels is None else _auc(labels, prob_f),
        auc_int8=None if labels is None else _auc(labels, prob_q),
        same_category=float(np.mean([a == b for a, b in zip(cat_f, cat_q, strict=True)])),
        same_peak_cell=float(np.mean(peak_f == peak_q)),
        max_probability_difference=float(diff.max()),
        median_probability_difference=float(np.median(diff)),
        changed_categories=changed,
    )


def time_models(
    models: Sequence[str | Path], images: np.ndarray, rounds: int = 5, threads: int | None = None
) -> list[dict[str, float]]:
    """Model-alone milliseconds per image for each model, measured side by side: the models
    alternate image by image in every round (a shared machine's load hits both alike); the
    figure is the median over rounds of each round's median."""
    sessions = [session(m, threads) for m in models]
    for sess in sessions:  # warm-up: the first run allocates
        run(sess, images[:1])
    per_round: list[list[float]] = [[] for _ in models]
    for r in range(rounds):
        times: list[list[float]] = [[] for _ in models]
        for image in images:
            order = range(len(sessions)) if r % 2 == 0 else reversed(range(len(sessions)))
            for k in order:
                t0 = time.perf_counter()
                sessions[k].run(["logit", "heatmap"], {"image": np.asarray(image, np.float32)[None, None]})
                times[k].append((time.perf_counter() - t0) * 1e3)
        for k in range(len(models)):
            per_round[k].append(statistics.median(times[k]))
    return [
        {"median_ms": round(statistics.median(ms), 2), "rounds": rounds, "images": len(images)}
        for ms in per_round
    ]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_int8_card(
    float_model: str | Path,
    int8_model: str | Path,
    recipe: QuantiseRecipe,
    calibration: str,
    agreement: Agreement | None,
    agreement_on: str,
    speed: dict[str, Any] | None,
    samples: Agreement | None = None,
) -> Path:
    """The 8-bit model's card: the float card (operating points, training images, limitations
    hold for both while the categories agree) with ``model_id`` suffixed and a ``quantisation``
    entry recording both models, the recipe, the agreement and the speed."""
    float_model, int8_model = Path(float_model), Path(int8_model)
    card = ModelCard.for_model(float_model).to_dict()
    float_id = card["model_id"]
    card["model_id"] = f"{float_id}-int8"
    card["quantisation"] = {
        "float_model": {"model_id": float_id, "file": float_model.name, "sha256": _sha256(float_model)},
        "int8_model": {"file": int8_model.name, "sha256": _sha256(int8_model)},
        "recipe": recipe.record(),
        "calibration": calibration,
        "agreement": None if agreement is None else {"images": agreement_on, **agreement.record()},
        "bundled_samples": None if samples is None else samples.record(),
        "speed_model_alone": speed,
        "thresholds": "the float model's operating points, kept: see agreement.same_category",
    }
    path = card_path(int8_model)
    path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    ModelCard.read(path)  # the written card must be one every command can read
    return path


def prepared_split(
    data: str | Path, split_file: str | Path, split: str, size: int, n: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Prepared images (N, S, S) and labels of the ``split`` rows of ``split_file`` (``n`` of them
    drawn at random with ``seed`` when given), decoded and preprocessed as inference does."""
    from fracsight.data.ids import case_id
    from fracsight.data.split_file import read_split_file
    from fracsight.io import RefusedInput, read_radiograph
    from fracsight.preprocess import prepare
    from fracsight.training.examples import load_examples

    splits = read_split_file(split_file)
    chosen = [e for e in load_examples(data) if splits.get(case_id(e.image_id)) == split]
    if not chosen:
        raise ValueError(f"split file {split_file}: no image of {data} is in split {split!r}")
    if n is not None and n < len(chosen):
        picks = np.random.default_rng(seed).choice(len(chosen), n, replace=False)
        chosen = [chosen[i] for i in sorted(picks)]
    images, labels = [], []
    for example in chosen:
        try:  # decoded in this process: these are the site's own development files
            image, _ = prepare(read_radiograph(example.path).pixels, size)
        except (RefusedInput, OSError, ValueError):  # inference refuses these too: leave them out
            continue
        images.append(image)
        labels.append(example.label)
    if not images:
        raise ValueError(f"no image of split {split!r} could be prepared")
    return np.stack(images), np.asarray(labels, int)


def quantise_and_describe(
    model: str | Path,
    out: str | Path,
    recipe: QuantiseRecipe,
    *,
    data: str | Path,
    split_file: str | Path,
    calibration_split: str = "dev",
    evaluate_split: str = "test",
    n_calibration: int = 300,
    n_evaluate: int | None = None,
    timing_images: int = 40,
    size: int,
    seed: int = 0,
) -> Path:
    """The whole step: calibrate on development images, quantise, measure agreement and speed
    against the float model, write the card. Returns the card's path."""
    calibration, _ = prepared_split(data, split_file, calibration_split, size, n_calibration, seed)
    quantise_model(model, out, calibration, recipe)
    images, labels = prepared_split(data, split_file, evaluate_split, size, n_evaluate, seed)
    agreement = compare_models(model, out, images, labels)
    speed = None
    if timing_images:
        float_ms, int8_ms = time_models([model, out], images[:timing_images])
        speed = {
            "float32": float_ms,
            "int8": int8_ms,
            "threads": os.cpu_count(),
            "how": "model alone, one image at a time, the two models alternating; median of round medians",
        }
    return write_int8_card(
        model,
        out,
        recipe,
        f"{len(calibration)} images of split {calibration_split!r} of {Path(split_file).name}",
        agreement,
        f"split {evaluate_split!r} of {Path(split_file).name}",
        speed,
    )


def quantise_after_export(
    onnx_path: Path,
    dev_images: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    n_calibration: int = 300,
    seed: int = 0,
) -> Path:
    """``fracsight train``'s last step: the 8-bit copy of the model it exported, calibrated on
    development images and compared on the held-out ones (uint8 letterboxed arrays, as training
    holds them). Without a test split the comparison uses development images not calibrated on."""

    def model_input(images: np.ndarray) -> np.ndarray:
        return np.asarray(images, dtype=np.float32) * (2.0 / 255.0) - 1.0

    order = np.random.default_rng(seed).permutation(len(dev_images))
    calibration = model_input(dev_images[np.sort(order[:n_calibration])])
    if len(test_images):
        images, labels, where = model_input(test_images), np.asarray(test_labels), "the held-out test split"
    else:
        rest = np.sort(order[n_calibration:][:500])
        images, labels, where = model_input(dev_images[rest]), None, "development images not calibrated on"
    out = int8_path(onnx_path)
    recipe = QuantiseRecipe()
    quantise_model(onnx_path, out, calibration, recipe)
    agreement = compare_models(onnx_path, out, images, labels) if len(images) else None
    timed = (images if len(images) else calibration)[:20]
    float_ms, int8_ms = time_models([onnx_path, out], timed, rounds=3)
    speed = {"float32": float_ms, "int8": int8_ms, "threads": os.cpu_count(), "how": "as fracsight quantise"}
    return write_int8_card(
        onnx_path, out, recipe, f"{len(calibration)} development images", agreement, where, speed
    )
