"""Does the heat map point at the fracture? Pointing game and FROC against expert boxes.

Coordinates: heat maps are H x W arrays on the *image* (one value per image pixel, e.g.
``Finding.heatmap_on_image()``); boxes are (x0, y0, x1, y1) in image pixels with pixel (row r,
column c) covering [c, c + 1) x [r, r + 1), so its centre is (c + 0.5, r + 0.5).

* Pointing game (Zhang et al., "Top-down neural attention by excitation backprop", 2016): a
  hit when the map's peak (:func:`fracsight.explain.map_peak`, the peak the product shows; or the
  finding's own peak, given as ``peaks``) falls inside any expert box of the image; a constant
  map points nowhere and counts as a miss; scored on images that
  have boxes. Reported strictly and with a tolerance of half a heat-map cell (the map is
  only known to within a cell: a peak half a cell off the box is as close as the model can
  say), with Wilson 95 % intervals.
* FROC: boxes are derived from the map (connected regions above ``level`` x the map's maximum,
  8-connected), each scored by its peak value x the image probability. A mark hits a lesion
  (expert box) when its centre lies inside the lesion or their IoU is >= 0.1 (a lenient
  criterion, because heat maps are coarse). As in the LUNA16 challenge, a lesion counts once,
  at its highest-scoring mark, further marks on it are neither hits nor false positives, and
  every mark hitting no lesion is a false positive. Sensitivity is over all lesions; false
  positives are per image over all images, negatives included. The area under the FROC up to
  ``max_fppi`` false positives per image is divided by ``max_fppi`` (1 = every lesion found
  before the first false positive), with a bootstrap CI over images.
* Outline: the region the viewer and the DICOM presentation state draw
  (:func:`fracsight.explain.heatmap_outline`, a closed polygon in image px). What a reader sees
  is that region, not the peak, so it is scored by whether it contains or touches an expert box
  (Wilson interval) and by how much of the image it covers (median with a bootstrap CI): a
  region that touches every box by covering half the image points nowhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fracsight.evaluation.metrics import wilson_interval
from fracsight.explain import map_peak

Box = tuple[float, float, float, float]
HeatmapSource = np.ndarray | Callable[[], np.ndarray]
Point = tuple[float, float]

HIT_MIN_IOU = 0.1
DEFAULT_LEVEL = 0.5
DEFAULT_MAX_FPPI = 1.0
REPORTED_FPPI = (0.125, 0.25, 0.5, 1.0, 2.0)


class LocalisationInputError(ValueError):
    """Heat maps, probabilities and boxes that do not fit together."""


@dataclass(frozen=True)
class Mark:
    """A box derived from a heat map, scored for the FROC."""

    box: Box
    score: float


@dataclass(frozen=True)
class PointingResult:
    """Pointing-game hits on the images that have expert boxes, strict and with tolerance."""

    hits: int
    n: int
    rate: float
    ci: tuple[float, float]
    tolerant_hits: int | None  # None when no heat-map cell size was given
    tolerant_rate: float | None
    tolerant_ci: tuple[float, float] | None
    tolerance_px: float | None  # median over images of half a heat-map cell, in image px
    n_flat: int  # maps without a peak (constant), counted as misses
    n_without_boxes: int  # images left out: nothing to point at
    confidence: float = 0.95


@dataclass(frozen=True, eq=False)
class FrocResult:
    """FROC curve (one point per distinct mark score, highest first) and its normalised area."""

    fp_per_image: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    auc: float  # area under sensitivity vs FPPI on [0, max_fppi], divided by max_fppi
    ci: tuple[float, float]
    max_fppi: float
    n_lesions: int
    n_images: int
    n_marks: int
    sensitivity_at: dict[float, float] = field(default_factory=dict)
    level: float | None = None  # heat-map level the marks came from, if they did
    confidence: float = 0.95
    n_bootstrap: int = 0


@dataclass(frozen=True)
class OutlineResult:
    """How often the drawn outline meets an expert box, and how much of the image it covers, on the
    images that have boxes."""

    touches: int
    n: int
    rate: float
    ci: tuple[float, float]
    median_area_fraction: float
    area_ci: tuple[float, float]  # bootstrap percentile CI of the median; NaN without resamples
    area_quartiles: tuple[float, float]
    n_without_boxes: int
    confidence: float = 0.95
    n_bootstrap: int = 0


@dataclass(frozen=True)
class LocalisationResult:
    pointing: PointingResult
    froc: FrocResult


# ----------------------------------------------------------------------------------------------
# Small pieces


def _heatmap(source: HeatmapSource, index: int) -> np.ndarray:
    heat = source() if callable(source) else source
    heat = np.asarray(heat, dtype=np.float64)
    if heat.ndim != 2 or heat.size == 0:
        raise LocalisationInputError(
            f"heat map {index} must be a non-empty 2-D array, got shape {heat.shape}"
        )
    if not np.isfinite(heat).all():
        raise LocalisationInputError(
            f"heat map {index} has {int((~np.isfinite(heat)).sum())} non-finite values"
        )
    return heat


def _check_boxes(boxes: Sequence[Box], index: int) -> list[Box]:
    out = []
    for k, box in enumerate(boxes):
        if len(box) != 4:
            raise LocalisationInputError(
                f"image {index} box {k} has {len(box)} numbers, expected x0, y0, x1, y1"
            )
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (x1 > x0 and y1 > y0):
            raise LocalisationInputError(
                f"image {index} box {k} {box} has no area (needs x1 > x0 and y1 > y0)"
            )
        out.append((x0, y0, x1, y1))
    return out


def _distance_to_box(x: float, y: float, box: Box) -> float:
    x0, y0, x1, y1 = box
    dx = max(x0 - x, 0.0, x - x1)
    dy = max(y0 - y, 0.0, y - y1)
    return math.hypot(dx, dy)


def iou(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def mark_hits(mark: Box, lesion: Box, min_iou: float = HIT_MIN_IOU) -> bool:
    """Centre of the mark inside the lesion box, or IoU >= ``min_iou``."""
    cx, cy = (mark[0] + mark[2]) / 2, (mark[1] + mark[3]) / 2
    inside = lesion[0] <= cx <= lesion[2] and lesion[1] <= cy <= lesion[3]
    return inside or iou(mark, lesion) >= min_iou


def heatmap_cell_px(letterbox_size: int, grid_rows: int, scale: float) -> float:
    """Side of one heat-map cell in original image pixels (model input side / grid rows / scale)."""
    return letterbox_size / grid_rows / scale


# ----------------------------------------------------------------------------------------------
# Pointing game


def _peak_distance(heat: np.ndarray, boxes: Sequence[Box], peak: Point | None = None) -> float | None:
    """Distance (image px) from the peak (``peak``, else the map's own) to the nearest box; 0 inside;
    None for a constant map, which points nowhere."""
    if heat.max() == heat.min():
        return None
    x, y = peak if peak is not None else map_peak(heat)
    return min(_distance_to_box(x, y, b) for b in boxes)


def _pointing_result(
    distances: Sequence[float | None], cells: list[float] | None, n_images: int, confidence: float
) -> PointingResult:
    """Score peak distances of the images with boxes (``cells`` aligned with ``distances``)."""
    n = len(distances)
    if n == 0:
        raise LocalisationInputError(f"none of the {n_images} images has an expert box: nothing to point at")
    hits = sum(d == 0.0 for d in distances if d is not None)
    flat = sum(d is None for d in distances)
    tolerant = None
    if cells is not None:
        tolerant = sum(d is not None and d <= c / 2 for d, c in zip(distances, cells, strict=True))
    return PointingResult(
        hits=hits,
        n=n,
        rate=hits / n,
        ci=wilson_interval(hits, n, confidence),
        tolerant_hits=tolerant,
        tolerant_rate=None if tolerant is None else tolerant / n,
        tolerant_ci=None if tolerant is None else wilson_interval(tolerant, n, confidence),
        tolerance_px=None if cells is None else float(np.median(cells)) / 2,
        n_flat=flat,
        n_without_boxes=n_images - n,
        confidence=confidence,
    )


def pointing_game(
    heatmaps: Sequence[HeatmapSource],
    boxes: Sequence[Sequence[Box]],
    cell_px: float | Sequence[float] | None = None,
    confidence: float = 0.95,
) -> PointingResult:
    """Share of images (with expert boxes) whose heat-map peak lies in a box; maps are read lazily.

    ``cell_px`` (per image or one value) is the heat-map cell side in image pixels; with it,
    a peak within half a cell of a box also counts, as a second, tolerant result.
    """
    if len(heatmaps) != len(boxes):
        raise LocalisationInputError(f"{len(heatmaps)} heat maps but {len(boxes)} box lists")
    cells = _per_image(cell_px, len(heatmaps), "cell_px")
    distances, used_cells = [], []
    for i, (source, image_boxes) in enumerate(zip(heatmaps, boxes, strict=True)):
        checked = _check_boxes(image_boxes, i)
        if checked:
            distances.append(_peak_distance(_heatmap(source, i), checked))
            used_cells.append(cells[i] if cells else 0.0)
    return _pointing_result(distances, used_cells if cells else None, len(boxes), confidence)


def _per_image(value: float | Sequence[float] | None, n: int, name: str) -> list[float] | None:
    if value is None:
        return None
    values = [float(value)] * n if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) != n:
        raise LocalisationInputError(f"{name} has {len(values)} values for {n} images")
    bad = [i for i, v in enumerate(values) if not (v > 0 and math.isfinite(v))]
    if bad:
        raise LocalisationInputError(f"{name} must be > 0; images {bad[:5]} are not")
    return values


# ----------------------------------------------------------------------------------------------
# Boxes from heat maps


def heatmap_boxes(heat: np.ndarray, probability: float, level: float = DEFAULT_LEVEL) -> list[Mark]:
    """One mark per 8-connected region where the map is >= ``level`` x its maximum.

    The box is the region's bounding box (pixel edges); the score is the region's peak value
    times the image probability, so marks on unlikely images rank low.
    """
    from scipy import ndimage

    if not 0.0 < level <= 1.0:
        raise LocalisationInputError(
            f"level must be in (0, 1] (a fraction of the map's maximum), got {level}"
        )
    if not 0.0 <= probability <= 1.0:
        raise LocalisationInputError(f"probability {probability} is outside [0, 1]")
    heat = np.asarray(heat, dtype=np.float64)
    top = heat.max()
    if top <= 0 or top == heat.min():
        return []
    labels, count = ndimage.label(heat >= level * top, structure=np.ones((3, 3)))
    peaks = ndimage.maximum(heat, labels, index=np.arange(1, count + 1))
    marks = []
    for slices, peak in zip(ndimage.find_objects(labels), np.atleast_1d(peaks), strict=True):
        rows, cols = slices
        box = (float(cols.start), float(rows.start), float(cols.stop), float(rows.stop))
        marks.append(Mark(box, float(peak) * probability))
    return sorted(marks, key=lambda m: -m.score)


# ----------------------------------------------------------------------------------------------
# FROC


@dataclass(frozen=True)
class _Scored:
    """Per image: the rating of each lesion (-inf if never hit) and the scores of false marks."""

    lesion_ratings: np.ndarray
    fp_scores: np.ndarray


def _score_image(marks: Sequence[Mark], lesions: Sequence[Box], min_iou: float) -> _Scored:
    ratings = np.full(len(lesions), -np.inf)
    false = []
    for mark in marks:
        hit_any = False
        for k, lesion in enumerate(lesions):
            if mark_hits(mark.box, lesion, min_iou):
                hit_any = True
                ratings[k] = max(ratings[k], mark.score)
        if not hit_any:
            false.append(mark.score)
    return _Scored(ratings, np.asarray(false, dtype=np.float64))


def _curves(
    scores: np.ndarray,
    is_lesion: np.ndarray,
    image_of: np.ndarray,
    weights: np.ndarray,
    lesion_totals: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FPPI and sensitivity at each distinct score (rows: weight vectors over images).

    ``scores`` sorted descending; items are found lesions and false marks. ``weights`` is
    (B, n_images): how often each image is in each (re)sample.
    """
    w = weights[:, image_of]  # (B, items)
    tp = np.cumsum(w * is_lesion, axis=1)
    fp = np.cumsum(w * ~is_lesion, axis=1)
    ends = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1] if len(scores) else np.array([], dtype=int)
    n_images = weights.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp[:, ends] / lesion_totals[:, None]
    return fp[:, ends] / n_images, sens, scores[ends] if len(scores) else scores


def _area(fppi: np.ndarray, sens: np.ndarray, max_fppi: float) -> np.ndarray:
    """Normalised area under the FROC step function on [0, max_fppi], row-wise.

    Sensitivity at x is the highest reached with at most x false positives per image; past the
    last mark the curve stays flat (no more lesions can be found).
    """
    b = fppi.shape[0]
    x = np.concatenate([np.zeros((b, 1)), np.clip(fppi, 0, max_fppi), np.full((b, 1), max_fppi)], axis=1)
    y = np.concatenate([np.zeros((b, 1)), sens], axis=1)
    return (y * np.diff(x, axis=1)).sum(axis=1) / max_fppi


def _sensitivity_at(fppi: np.ndarray, sens: np.ndarray, x: float) -> float:
    ok = fppi <= x
    return float(sens[ok].max()) if ok.any() else 0.0


def froc_from_marks(
    marks: Sequence[Sequence[Mark]],
    lesions: Sequence[Sequence[Box]],
    max_fppi: float = DEFAULT_MAX_FPPI,
    min_iou: float = HIT_MIN_IOU,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    level: float | None = None,
) -> FrocResult:
    """FROC from scored marks per image and expert boxes per image (see the module docstring)."""
    if len(marks) != len(lesions):
        raise LocalisationInputError(f"{len(marks)} mark lists but {len(lesions)} lesion lists")
    if not max_fppi > 0:
        raise LocalisationInputError(f"max_fppi must be > 0, got {max_fppi}")
    checked = [_check_boxes(b, i) for i, b in enumerate(lesions)]
    n_lesions = sum(len(b) for b in checked)
    if n_lesions == 0:
        raise LocalisationInputError(
            f"none of the {len(lesions)} images has an expert box: FROC is undefined"
        )
    per_image = [_score_image(m, b, min_iou) for m, b in zip(marks, checked, strict=True)]

    scores, is_lesion, image_of = [], [], []
    for i, scored in enumerate(per_image):
        found = scored.lesion_ratings[np.isfinite(scored.lesion_ratings)]
        scores += [found, scored.fp_scores]
        is_lesion += [np.ones(len(found), bool), np.zeros(len(scored.fp_scores), bool)]
        image_of += [np.full(len(found) + len(scored.fp_scores), i)]
    all_scores = np.concatenate(scores)
    order = np.argsort(-all_scores, kind="stable")
    all_scores, flags, owners = (
        all_scores[order],
        np.concatenate(is_lesion)[order],
        np.concatenate(image_of)[order],
    )
    lesions_per_image = np.array([len(b) for b in checked], dtype=np.float64)

    n_images = len(checked)
    ones = np.ones((1, n_images))
    fppi, sens, thresholds = _curves(all_scores, flags, owners, ones, np.array([float(n_lesions)]))
    auc = float(_area(fppi, sens, max_fppi)[0])

    ci = (float("nan"), float("nan"))
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        areas = []
        for start in range(0, n_bootstrap, 100):  # batches keep the (replicates x marks) arrays small
            batch = min(100, n_bootstrap - start)
            counts = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=batch).astype(
                np.float64
            )
            totals = counts @ lesions_per_image
            keep = totals > 0  # a resample without lesions has no FROC
            bf, bs, _ = _curves(all_scores, flags, owners, counts[keep], totals[keep])
            areas.append(_area(bf, bs, max_fppi))
        areas = np.concatenate(areas)
        alpha = (1 - confidence) / 2
        ci = (float(np.quantile(areas, alpha)), float(np.quantile(areas, 1 - alpha)))
    return FrocResult(
        fp_per_image=fppi[0],
        sensitivity=sens[0],
        thresholds=thresholds,
        auc=auc,
        ci=ci,
        max_fppi=max_fppi,
        n_lesions=n_lesions,
        n_images=n_images,
        n_marks=sum(len(m) for m in marks),
        sensitivity_at={x: _sensitivity_at(fppi[0], sens[0], x) for x in REPORTED_FPPI},
        level=level,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
    )


def _check_lengths(
    heatmaps: Sequence[object], probabilities: Sequence[float], boxes: Sequence[object]
) -> None:
    if not len(heatmaps) == len(probabilities) == len(boxes):
        raise LocalisationInputError(
            f"{len(heatmaps)} heat maps, {len(probabilities)} probabilities and {len(boxes)} box lists: "
            "need one of each per image"
        )


def froc(
    heatmaps: Sequence[HeatmapSource],
    probabilities: Sequence[float],
    boxes: Sequence[Sequence[Box]],
    level: float = DEFAULT_LEVEL,
    max_fppi: float = DEFAULT_MAX_FPPI,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> FrocResult:
    """FROC of heat-map-derived marks against expert boxes, over all images (negatives included).

    Fix ``level`` before looking at test results: choosing the best of several levels on the
    test set overstates the area.
    """
    _check_lengths(heatmaps, probabilities, boxes)
    marks = [
        heatmap_boxes(_heatmap(h, i), float(p), level)
        for i, (h, p) in enumerate(zip(heatmaps, probabilities, strict=True))
    ]
    return froc_from_marks(marks, boxes, max_fppi, HIT_MIN_IOU, n_bootstrap, confidence, seed, level)


def evaluate_localisation(
    heatmaps: Sequence[HeatmapSource],
    probabilities: Sequence[float],
    boxes: Sequence[Sequence[Box]],
    cell_px: float | Sequence[float] | None = None,
    level: float = DEFAULT_LEVEL,
    max_fppi: float = DEFAULT_MAX_FPPI,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    peaks: Sequence[Point] | None = None,
) -> LocalisationResult:
    """Pointing game and FROC together, reading each (possibly lazy) heat map once and not keeping it.

    ``peaks`` (image px, one per image) are the points the pointing game scores, e.g. each
    finding's ``peak()``; without them, each map's own peak.
    """
    _check_lengths(heatmaps, probabilities, boxes)
    if peaks is not None and len(peaks) != len(heatmaps):
        raise LocalisationInputError(f"{len(peaks)} peaks for {len(heatmaps)} heat maps")
    cells = _per_image(cell_px, len(heatmaps), "cell_px")
    distances, used_cells, marks = [], [], []
    for i, (source, p, image_boxes) in enumerate(zip(heatmaps, probabilities, boxes, strict=True)):
        checked = _check_boxes(image_boxes, i)
        heat = _heatmap(source, i)
        if checked:
            distances.append(_peak_distance(heat, checked, peaks[i] if peaks is not None else None))
            used_cells.append(cells[i] if cells else 0.0)
        marks.append(heatmap_boxes(heat, float(p), level))
    return LocalisationResult(
        pointing=_pointing_result(distances, used_cells if cells else None, len(boxes), confidence),
        froc=froc_from_marks(marks, boxes, max_fppi, HIT_MIN_IOU, n_bootstrap, confidence, seed, level),
    )


# ----------------------------------------------------------------------------------------------
# Outline of the hot region

# Outline corners come from letterbox arithmetic (cell x scale), so a corner meant to lie on a box's
# edge may miss it by a rounding error; closer than this counts as on it.
_TOUCH_EPS_PX = 1e-6


def _segment_meets_box(a: Point, b: Point, box: Box) -> bool:
    """Does the closed segment a-b meet the closed box? (Liang-Barsky clipping: some part survives.)"""
    x0, y0, x1, y1 = box
    dx, dy = b[0] - a[0], b[1] - a[1]
    t_in, t_out = 0.0, 1.0
    for p, q in ((-dx, a[0] - x0), (dx, x1 - a[0]), (-dy, a[1] - y0), (dy, y1 - a[1])):
        if p == 0.0:
            if q < 0.0:  # parallel to this side and outside it
                return False
            continue
        t = q / p
        if p < 0.0:
            t_in = max(t_in, t)
        else:
            t_out = min(t_out, t)
        if t_in > t_out:
            return False
    return True


def _inside_polygon(x: float, y: float, polygon: Sequence[Point]) -> bool:
    """Even-odd rule; only asked for points that lie on no edge, so the boundary case never arises."""
    inside = False
    for (ax, ay), (bx, by) in zip(polygon, [*polygon[1:], polygon[0]], strict=True):
        if (ay > y) != (by > y) and x < ax + (y - ay) * (bx - ax) / (by - ay):
            inside = not inside
    return inside


def outline_touches(outline: Sequence[Point], boxes: Sequence[Box]) -> bool:
    """Do the region inside the closed polygon ``outline`` and any closed box share a point?

    Containment either way, crossing, and a shared edge or corner all count: the reader looking
    inside or along the drawn line would find the fracture. Two closed regions meet exactly when
    their boundaries meet or one lies inside the other; a polygon inside a box has its edges in
    the box, so edges meeting the box and a box corner inside the polygon cover every case.
    """
    points = [(float(x), float(y)) for x, y in outline]
    if not points:
        return False
    edges = list(zip(points, [*points[1:], points[0]], strict=True))
    for x0, y0, x1, y1 in boxes:
        grown = (x0 - _TOUCH_EPS_PX, y0 - _TOUCH_EPS_PX, x1 + _TOUCH_EPS_PX, y1 + _TOUCH_EPS_PX)
        if any(_segment_meets_box(a, b, grown) for a, b in edges):
            return True
        if len(points) >= 3 and _inside_polygon(x0, y0, points):  # no edge meets it: all inside or none
            return True
    return False


def outline_area(outline: Sequence[Point]) -> float:
    """Area (square image px) enclosed by the polygon (shoelace formula; the first point may be
    repeated last), for the share of the image the reader is pointed at."""
    points = [(float(x), float(y)) for x, y in outline]
    if len(points) < 3:
        return 0.0
    twice = sum(
        ax * by - bx * ay for (ax, ay), (bx, by) in zip(points, [*points[1:], points[0]], strict=True)
    )
    return abs(twice) / 2.0


def outline_measures(
    outlines: Sequence[Sequence[Point]],
    boxes: Sequence[Sequence[Box]],
    image_sizes: Sequence[tuple[int, int]],
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> OutlineResult:
    """Share of images (with expert boxes) whose outline touches a box, and the outline's area as a
    fraction of the image (``image_sizes``: width, height), on the same images.

    Both together, because either alone is easy to game: a tight outline off the fracture, or one
    that covers the image and touches everything. The median area is robust to the few images
    whose whole map is hot; its CI resamples images.
    """
    if not len(outlines) == len(boxes) == len(image_sizes):
        raise LocalisationInputError(
            f"{len(outlines)} outlines, {len(boxes)} box lists and {len(image_sizes)} image sizes: "
            "need one of each per image"
        )
    touched, fractions = [], []
    for i, (outline, image_boxes, size) in enumerate(zip(outlines, boxes, image_sizes, strict=True)):
        checked = _check_boxes(image_boxes, i)
        if not checked:
            continue
        width, height = (float(v) for v in size)
        if not (width > 0 and height > 0):
            raise LocalisationInputError(f"image {i} has no area ({size}), expected width, height > 0")
        touched.append(outline_touches(outline, checked))
        fractions.append(outline_area(outline) / (width * height))
    n = len(touched)
    if n == 0:
        raise LocalisationInputError(f"none of the {len(boxes)} images has an expert box: nothing to outline")
    k = sum(touched)
    areas = np.asarray(fractions)
    area_ci = (float("nan"), float("nan"))
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        medians = np.median(areas[rng.integers(0, n, size=(n_bootstrap, n))], axis=1)
        alpha = (1 - confidence) / 2
        area_ci = (float(np.quantile(medians, alpha)), float(np.quantile(medians, 1 - alpha)))
    q1, q3 = np.quantile(areas, [0.25, 0.75])
    return OutlineResult(
        touches=k,
        n=n,
        rate=k / n,
        ci=wilson_interval(k, n, confidence),
        median_area_fraction=float(np.median(areas)),
        area_ci=area_ci,
        area_quartiles=(float(q1), float(q3)),
        n_without_boxes=len(boxes) - n,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
    )
