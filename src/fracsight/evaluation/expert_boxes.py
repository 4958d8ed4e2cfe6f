"""Hands the model's heat maps and the experts' boxes to the localisation measures for the report.

The measures themselves (pointing game, FROC, the drawn outline) live in
``fracsight.evaluation.localisation``; this module only gathers their inputs from an evaluation
run (every analysed case: the fractured ones with their boxes, the others with none, so that
false marks on them count; fractured cases without boxes are left out, as their fracture could
be anywhere) and returns the results as a JSON-ready dict, each rate with its n and 95% CI.
"""

from __future__ import annotations

import importlib
import logging
import math
from typing import Any

from fracsight.data.boxes import Box
from fracsight.evaluation.inputs import CaseTable
from fracsight.finding import Finding

__all__ = ["box_results"]

log = logging.getLogger(__name__)

# The level of Finding.outline()'s default, the outline the viewer and presentation state draw, for the
# description (a test keeps the two equal); the outline scored is the drawn one itself.
OUTLINE_LEVEL = 0.5


def _ci(pair: tuple[float, float] | None) -> tuple[float | None, float | None]:
    if pair is None:
        return None, None
    return tuple(None if math.isnan(v) else float(v) for v in pair)  # type: ignore[return-value]


def box_results(
    cases: CaseTable,
    findings: dict[str, Finding],
    boxes: dict[str, list[Box]],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Pointing game, FROC and outline on the analysed cases; ``computed: False`` with a reason when
    impossible."""
    try:
        localisation = importlib.import_module("fracsight.evaluation.localisation")
    except ModuleNotFoundError as exc:
        if exc.name != "fracsight.evaluation.localisation":
            raise
        return {"computed": False, "reason": "the localisation measures are not part of this installation"}
    labelled = {case: int(label) for case, label in zip(cases.ids, cases.labels, strict=True)}
    n_fractured = sum(1 for case in cases.ids if case in findings and labelled[case] == 1)
    # A fractured image without boxes has a fracture somewhere unknown: a mark on it is neither a hit
    # nor a false positive, so it is left out rather than scored like a non-fractured image.
    analysed = [
        (case, findings[case])
        for case in cases.ids
        if case in findings and (labelled[case] == 0 or boxes.get(case))
    ]
    case_boxes = [boxes.get(case, []) if labelled[case] == 1 else [] for case, _ in analysed]
    n_with_boxes = sum(1 for b in case_boxes if b)
    if n_with_boxes == 0:
        return {"computed": False, "reason": "no analysed fractured case has an expert box"}
    heatmaps = [finding.heatmap_on_image for _, finding in analysed]  # read lazily, one at a time
    cells = [
        localisation.heatmap_cell_px(f.letterbox.size, f.heatmap.shape[0], f.letterbox.scale)
        for _, f in analysed
    ]
    result = localisation.evaluate_localisation(
        heatmaps,
        [f.probability for _, f in analysed],
        case_boxes,
        cell_px=cells,
        n_bootstrap=n_bootstrap,
        seed=seed,
        peaks=[f.peak() for _, f in analysed],  # the peak the product shows, not one of the resampled map
    )
    # The outline the viewer and the presentation state draw, from the cell map: cheap, no resampling.
    boxed = [(f, b) for (_, f), b in zip(analysed, case_boxes, strict=True) if b]
    outline = localisation.outline_measures(
        [f.outline() for f, _ in boxed],
        [b for _, b in boxed],
        [(f.letterbox.width, f.letterbox.height) for f, _ in boxed],
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    pointing, froc = result.pointing, result.froc
    p_lo, p_hi = _ci(pointing.ci)
    t_lo, t_hi = _ci(pointing.tolerant_ci)
    f_lo, f_hi = _ci(froc.ci)
    o_lo, o_hi = _ci(outline.ci)
    a_lo, a_hi = _ci(outline.area_ci)
    return {
        "computed": True,
        "data": (
            f"{len(analysed)} analysed cases; {n_with_boxes} of {n_fractured} fractured cases have "
            f"expert boxes ({froc.n_lesions} boxes)"
            + (
                f"; the {n_fractured - n_with_boxes} fractured cases without boxes are left out"
                if n_fractured > n_with_boxes
                else ""
            )
        ),
        "pointing_game": {
            "description": "heat-map peak inside an expert box, on fractured images with boxes",
            "strict": {
                "value": pointing.rate,
                "lower": p_lo,
                "upper": p_hi,
                "k": pointing.hits,
                "n": pointing.n,
                "method": "Wilson score interval",
            },
            "within_half_a_cell": {
                "value": pointing.tolerant_rate,
                "lower": t_lo,
                "upper": t_hi,
                "k": pointing.tolerant_hits,
                "n": pointing.n,
                "method": "Wilson score interval",
            },
            "tolerance_px": pointing.tolerance_px,
            "flat_maps": pointing.n_flat,
        },
        "froc": {
            "description": (
                f"marks from heat-map regions >= {froc.level} x the map's maximum, scored by peak x "
                f"probability; hit = centre in box or IoU >= {localisation.HIT_MIN_IOU}"
            ),
            "normalised_area": {
                "value": froc.auc,
                "lower": f_lo,
                "upper": f_hi,
                "method": f"bootstrap over images ({froc.n_bootstrap} resamples), percentile",
                "max_fp_per_image": froc.max_fppi,
            },
            "sensitivity_at_fp_per_image": {str(k): v for k, v in froc.sensitivity_at.items()},
            "n_lesions": froc.n_lesions,
            "n_images": froc.n_images,
            "n_marks": froc.n_marks,
            "curve": {"fp_per_image": froc.fp_per_image.tolist(), "sensitivity": froc.sensitivity.tolist()},
        },
        "outline": {
            "description": (
                f"the heat-map region the viewer and the DICOM presentation state draw: cells >= "
                f"{OUTLINE_LEVEL} x the peak cell, connected to it, on fractured images with boxes"
            ),
            "level": OUTLINE_LEVEL,
            "touches_box": {
                "value": outline.rate,
                "lower": o_lo,
                "upper": o_hi,
                "k": outline.touches,
                "n": outline.n,
                "method": "Wilson score interval",
            },
            "median_area_fraction": {
                "value": outline.median_area_fraction,
                "lower": a_lo,
                "upper": a_hi,
                "method": f"bootstrap over images ({outline.n_bootstrap} resamples), percentile",
                "quartiles": list(outline.area_quartiles),
            },
        },
    }
