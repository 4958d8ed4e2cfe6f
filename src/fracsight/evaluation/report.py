"""metrics.json and report.html from an :class:`Evaluation`: the clinician's document.

The report says on its first screen which model and which data every number comes
from (source, n, fractured), shows no number without its n and 95% CI, withholds
values from cells too small to support them (saying so), and is one self-contained
file that makes no network request when opened.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fracsight._version import __version__
from fracsight.evaluation.evaluate import Evaluation
from fracsight.evaluation.groups import MIN_NEGATIVES, MIN_POSITIVES, SMALL_CELL_RULE, GroupCell, GroupTable
from fracsight.evaluation.metrics import BinaryRates, Estimate
from fracsight.reporting import (
    BarSeries,
    GalleryItem,
    IntervalStyle,
    LineSeries,
    MarkedPoint,
    Markup,
    NoteKind,
    bar_chart,
    escape,
    facts,
    figure,
    gallery,
    line_chart,
    note,
    open_picture,
    page,
    paragraph,
    png_data_uri,
    row_of,
    section,
    table,
    withheld,
)

__all__ = ["PictureSource", "ReportFiles", "GalleryGroup", "write_report", "render_html", "select_gallery"]

log = logging.getLogger(__name__)

# case index -> the picture to show for it (heat-map overlay preferred), or None
Picture = Image.Image | np.ndarray  # a picture, or a radiograph's pixels
PictureSource = Callable[[int], Picture | None]

GALLERY_MAX = 12
FRACATLAS_CITATION = (
    "FracAtlas: Abedeen I. et al., \u201cFracAtlas: A Dataset for Fracture Classification, Localization and "
    "Segmentation of Musculoskeletal Radiographs\u201d, Scientific Data 10, 521 (2023), "
    "doi:10.1038/s41597-023-02432-4 (CC BY 4.0)."
)


@dataclass(frozen=True)
class ReportFiles:
    metrics_json: Path
    html: Path


@dataclass(frozen=True)
class GalleryGroup:
    """Cases of one kind (true positives, false negatives, false positives) chosen for the gallery."""

    key: str
    title: str
    explanation: str
    indices: list[int]
    total: int


# ---------------------------------------------------------------- formatting


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def fmt_proportion(e: Estimate) -> str:
    """'81.2% (95% CI 78.1–84.0%; 123/151)'."""
    counts = f"{e.k}/{e.n}" if e.k is not None and e.n is not None else ""
    if e.value is None:
        return f"undefined ({counts or 'no cases'})"
    ci = ""
    if e.lower is not None and e.upper is not None:
        ci = f"95% CI {100 * e.lower:.1f}\u2013{100 * e.upper:.1f}%"
    inside = "; ".join(part for part in (ci, counts) if part)
    return f"{_pct(e.value)} ({inside})" if inside else _pct(e.value)


def fmt_number(e: Estimate, digits: int = 3) -> str:
    """'0.871 (95% CI 0.842–0.899)' for AUC, Brier and the like."""
    if e.value is None:
        return "undefined"
    if e.lower is None or e.upper is None:
        why = e.method if e.method.startswith("no CI") else f"no CI: {e.method}"  # methods may say it
        return f"{e.value:.{digits}f} ({why})"
    return f"{e.value:.{digits}f} (95% CI {e.lower:.{digits}f}\u2013{e.upper:.{digits}f})"


def _threshold(t: float) -> str:
    return f"{t:.4g}"


# ---------------------------------------------------------------- gallery


def select_gallery(evaluation: Evaluation, point_name: str, limit: int = GALLERY_MAX) -> list[GalleryGroup]:
    """TP and FP cases (most confident first), FN cases (lowest probability first); ``limit`` each."""
    rates = evaluation.rates[point_name]
    p, y = evaluation.cases.probabilities, evaluation.cases.labels
    called = p >= rates.threshold
    kinds = [
        ("true_positives", "True positives", "fractured and called fracture", (called & (y == 1)), -1),
        ("false_negatives", "False negatives", "fractured but not called: missed", (~called & (y == 1)), 1),
        ("false_positives", "False positives", "not fractured but called fracture", (called & (y == 0)), -1),
    ]
    groups = []
    for key, title, explanation, mask, direction in kinds:
        index = np.flatnonzero(mask)
        order = index[np.argsort(direction * p[index], kind="mergesort")]
        groups.append(GalleryGroup(key, title, explanation, [int(i) for i in order[:limit]], int(index.size)))
    return groups


def file_pictures(evaluation: Evaluation) -> PictureSource:
    """Pictures from files: the heat-map overlay PNG of each case if given, else the radiograph itself
    (read by :mod:`fracsight.io`, as every command reads it)."""
    from fracsight.io import read_radiograph

    cases = evaluation.cases
    readers: tuple[Callable[[str], Picture], ...] = (open_picture, lambda path: read_radiograph(path).pixels)

    def picture(index: int) -> Picture | None:
        for candidate, read in zip((cases.heatmaps[index], cases.images[index]), readers, strict=True):
            if candidate and Path(candidate).is_file():
                try:
                    return read(candidate)
                except (OSError, ValueError) as exc:  # unreadable picture: leave it out, say so in the log
                    log.warning("gallery: cannot read %s: %s", Path(candidate).name, exc)
        return None

    return picture


def _gallery_items(evaluation: Evaluation, group: GalleryGroup, picture: PictureSource) -> list[GalleryItem]:
    cases = evaluation.cases
    region = cases.groups.get("region")
    items = []
    for i in group.indices:
        image = picture(i)
        if image is None:
            continue
        has_heat = bool(cases.heatmaps[i]) or getattr(picture, "draws_heatmaps", False)
        parts = [cases.ids[i], f"p = {cases.probabilities[i]:.3f}"]
        if region is not None:
            parts.append(region[i])
        if not has_heat:
            parts.append("no heat map")
        items.append(GalleryItem(png_data_uri(image, max_side=256), " \u00b7 ".join(parts)))
    return items


# ---------------------------------------------------------------- sections


def _figures(caution: str | None, title: str, *args: Any, **kwargs: Any) -> Markup:
    """A section of figures; when the cases include training images, its title says so."""
    return section(title + (" (includes training images: not a test)" if caution else ""), *args, **kwargs)


def _header(evaluation: Evaluation) -> Markup:
    c, m = evaluation.cases, evaluation.model
    data = c.labels_source + (f"; split {c.split}" if c.split else "")
    model_parts = [m.description]
    if m.card is not None:
        t = m.card.get("thresholds", {})
        if t:
            model_parts.append(
                f"thresholds: fracture \u2265 {_threshold(float(t['fracture']))}, doubt \u2265 "
                f"{_threshold(float(t['doubt']))}"
            )
        model_parts.append(f"temperature {m.card.get('temperature', 1.0)}")
    items: list[tuple[str, Any]] = [
        ("Model", "; ".join(model_parts)),
        ("Reference labels", data),
        ("Predictions", c.predictions_source),
        (
            "Cases analysed",
            f"{c.n} ({c.n_positive} fractured, {c.n - c.n_positive} not fractured; "
            f"{_pct(c.n_positive / c.n)} fractured in these data)",
        ),
        (
            "Could not be analysed",
            f"{len(c.excluded)} labelled cases (listed at the end)" if c.excluded else "none",
        ),
        ("Created", f"{evaluation.created} by fracsight {__version__}"),
    ]
    if m.card is not None and m.card.get("threshold_source"):
        items.insert(1, ("Thresholds chosen on", str(m.card["threshold_source"])))
    if c.unmatched_predictions:
        items.append(("Predictions without a label", f"{c.unmatched_predictions} (not evaluated)"))
    if evaluation.training is not None:
        items.append(("Training images", evaluation.training.summary()))
    parts = [facts(items, element_id="provenance")]
    if evaluation.caution:
        parts.append(note(f"Every figure in this report {evaluation.caution}.", NoteKind.WARNING))
    parts.append(
        note(
            f"Every number below was measured on these {c.n} cases and holds for data like them. Intervals "
            "are 95% confidence intervals; a wide interval means the data cannot pin the number down. "
            "This system is an aid to the clinician reading the radiograph, not a diagnosis.",
            NoteKind.INFO,
        )
    )
    for text in evaluation.notes:
        parts.append(note(text, NoteKind.WARNING))
    return Markup("".join(parts))


def _roc_section(evaluation: Evaluation) -> Markup:
    caution = evaluation.caution
    roc, band, auc = evaluation.roc, evaluation.roc_band, evaluation.auc
    points = []
    for op in evaluation.operating_points:
        r = evaluation.rates[op.name]
        sens, spec = r.sensitivity, r.specificity
        if sens.value is None or spec.value is None:
            continue
        points.append(
            MarkedPoint(
                x=1 - spec.value,
                y=sens.value,
                label=f"{op.name} (p \u2265 {_threshold(op.threshold)})",
                x_lower=1 - spec.upper,
                x_upper=1 - spec.lower,
                y_lower=sens.lower,
                y_upper=sens.upper,
            )
        )
    chart = line_chart(
        [
            LineSeries(
                f"ROC, AUC {auc.value:.3f}",
                roc.fpr.tolist(),
                roc.tpr.tolist(),
            ),
            LineSeries(
                "pointwise 95% bootstrap band",
                band.fpr.tolist(),
                [math.nan] * band.fpr.size,
                band.lower.tolist(),
                band.upper.tolist(),
                IntervalStyle.BAND,
                color="#0072B2",
            ),
        ],
        title=f"ROC curve (n = {evaluation.cases.n}, {evaluation.cases.n_positive} fractured)",
        x_label="1 \u2212 specificity (false-positive rate)",
        y_label="Sensitivity (true-positive rate)",
        points=points,
        diagonal="chance",
        element_id="roc-chart",
    )
    rows = [
        ["ROC AUC, DeLong", fmt_number(auc.delong), auc.n_positive, auc.n_negative],
    ]
    if auc.bootstrap is not None:
        rows.append(["ROC AUC, bootstrap", fmt_number(auc.bootstrap), auc.n_positive, auc.n_negative])
    auc_table = table(
        ["Estimate", "Value (95% CI)", "Fractured", "Not fractured"], rows, element_id="auc-table"
    )
    text = paragraph(
        "The curve shows every trade-off between catching fractures (sensitivity) and false alarms "
        "(1 \u2212 specificity). The shaded band is a pointwise 95% bootstrap interval; the marked "
        "points are the operating points, with 95% CI whiskers."
    )
    return _figures(
        caution,
        "Discrimination: ROC curve",
        [text, figure(chart, "Operating points with 95% CI whiskers (Wilson)."), auc_table],
        element_id="roc",
    )


def _confusion(op_name: str, r: BinaryRates) -> Markup:
    n_pos, n_neg = r.tp + r.fn, r.tn + r.fp
    return table(
        ["", f"Called fracture (p \u2265 {_threshold(r.threshold)})", "Not called", "Total"],
        [
            ["Fractured (reference)", r.tp, r.fn, n_pos],
            ["Not fractured (reference)", r.fp, r.tn, n_neg],
            ["Total", r.tp + r.fp, r.fn + r.tn, n_pos + n_neg],
        ],
        caption=f"Confusion table at operating point '{op_name}'",
        css_class="confusion",
    )


def _operating_points_section(evaluation: Evaluation) -> Markup:
    caution = evaluation.caution
    rows = []
    for op in evaluation.operating_points:
        r = evaluation.rates[op.name]
        rows.append(
            [
                op.name,
                _threshold(op.threshold),
                fmt_proportion(r.sensitivity),
                fmt_proportion(r.specificity),
                fmt_proportion(r.ppv),
                fmt_proportion(r.npv),
                op.source,
            ]
        )
    parts: list[Markup | str] = [
        paragraph(
            "A case is called fractured when its probability is at or above the threshold. PPV and NPV "
            "in this table are at the prevalence of these data "
            f"({_pct(evaluation.cases.n_positive / evaluation.cases.n)}), which may differ from your "
            "patients'."
        ),
        table(
            ["Operating point", "Threshold", "Sensitivity", "Specificity", "PPV", "NPV", "Threshold from"],
            rows,
            element_id="operating-point-table",
        ),
    ]
    prevalence = evaluation.settings.prevalence
    if prevalence is not None:
        prev_rows = []
        for op in evaluation.operating_points:
            pv = evaluation.rates[op.name].at_prevalence
            if pv is None:
                continue
            prev_rows.append([op.name, fmt_number(pv.ppv), fmt_number(pv.npv)])
        parts.append(
            table(
                [
                    "Operating point",
                    f"PPV at prevalence {_pct(prevalence)}",
                    f"NPV at prevalence {_pct(prevalence)}",
                ],
                prev_rows,
                caption=f"Expected predictive values where {_pct(prevalence)} of patients have a fracture",
                element_id="prevalence-table",
            )
        )
        parts.append(
            paragraph(
                "From Bayes\u2019 rule with the sensitivity and specificity above; the interval combines "
                "their Wilson intervals conservatively (both at Sidak-adjusted level, so it covers at "
                "least 95%)."
            )
        )
    confusion = [_confusion(op.name, evaluation.rates[op.name]) for op in evaluation.operating_points]
    parts.append(Markup('<div class="charts" id="confusion-tables">' + "".join(confusion) + "</div>"))
    return _figures(caution, "Operating points", parts, element_id="operating-points")


def _cell_auc(cell: GroupCell) -> Markup | str:
    if cell.auc is None:
        return withheld(f"too few ({cell.n_positive} fractured, {cell.n_negative} not)")
    return fmt_number(cell.auc.delong)


def _cell_rate(cell: GroupCell, op_name: str, which: str) -> Markup | str:
    rates = cell.rates[op_name]
    if which == "sensitivity" and not cell.enough_positives:
        return withheld(f"too few: {rates.tp}/{rates.tp + rates.fn} fractured")
    if which == "specificity" and not cell.enough_negatives:
        return withheld(f"too few: {rates.tn}/{rates.tn + rates.fp} not fractured")
    return fmt_proportion(getattr(rates, which))


def _group_section(evaluation: Evaluation, group: GroupTable) -> Markup:
    caution = evaluation.caution
    column = group.column
    ops = evaluation.operating_points
    headers = [column, "n", "Fractured", "Not fractured", "ROC AUC (DeLong)"]
    for op in ops:
        headers += [f"Sensitivity @ {op.name}", f"Specificity @ {op.name}"]
    rows = []
    for cell in group.cells:
        row: list = [cell.value, cell.n, cell.n_positive, cell.n_negative, _cell_auc(cell)]
        for op in ops:
            row += [_cell_rate(cell, op.name, "sensitivity"), _cell_rate(cell, op.name, "specificity")]
        rows.append(row)
    categories = [cell.value for cell in group.cells]
    notes_text = [f"n={cell.n}\n{cell.n_positive} fractured" for cell in group.cells]
    auc_chart = bar_chart(
        categories,
        [
            BarSeries(
                "ROC AUC",
                [c.auc.value if c.auc else None for c in group.cells],
                [c.auc.delong.lower if c.auc else None for c in group.cells],
                [c.auc.delong.upper if c.auc else None for c in group.cells],
            )
        ],
        title=f"ROC AUC by {column}",
        y_label="ROC AUC",
        category_notes=notes_text,
        missing_text="too few",
        element_id=f"auc-by-{column}",
    )
    rate_series = []
    for op in ops[:2]:
        for which, ok in (("sensitivity", "enough_positives"), ("specificity", "enough_negatives")):
            ests = [getattr(c.rates[op.name], which) for c in group.cells]
            shown = [getattr(c, ok) for c in group.cells]
            rate_series.append(
                BarSeries(
                    f"{which} @ {op.name}",
                    [e.value if s else None for e, s in zip(ests, shown, strict=True)],
                    [e.lower if s else None for e, s in zip(ests, shown, strict=True)],
                    [e.upper if s else None for e, s in zip(ests, shown, strict=True)],
                )
            )
    rate_chart = bar_chart(
        categories,
        rate_series,
        title=f"Sensitivity and specificity by {column}",
        y_label="Proportion",
        category_notes=notes_text,
        missing_text="too few",
        element_id=f"rates-by-{column}",
    )
    parts: list[Markup | str] = [
        row_of([figure(auc_chart), figure(rate_chart)]),
        table(headers, rows, element_id=f"group-table-{column}", css_class="group-table"),
    ]
    warnings = [cell.warning() for cell in group.cells if cell.warning()]
    if warnings:
        parts.append(
            note(
                Markup(
                    "<strong>Too few cases to say anything:</strong><ul>"
                    + "".join(f"<li>{escape(w)}</li>" for w in warnings)
                    + "</ul>"
                ),
                NoteKind.WARNING,
            )
        )
    parts.append(paragraph(f"Rule: {SMALL_CELL_RULE}. CIs: DeLong for AUC, Wilson for proportions."))
    return _figures(caution, f"Results by {column}", parts, element_id=f"by-{column}")


def _calibration_section(evaluation: Evaluation) -> Markup:
    caution = evaluation.caution
    cal = evaluation.calibration
    used = [b for b in cal.bins if b.n > 0]
    chart = line_chart(
        [
            LineSeries(
                "observed fraction fractured per bin (whiskers: 95% CI)",
                [b.mean_predicted for b in used],
                [b.observed.value for b in used],
                [b.observed.lower for b in used],
                [b.observed.upper for b in used],
                IntervalStyle.BARS,
                markers=True,
            )
        ],
        title=f"Reliability (n = {cal.n}, {cal.n_positive} fractured)",
        x_label="Mean predicted probability in bin",
        y_label="Observed fraction fractured",
        diagonal="perfect calibration",
        element_id="reliability-chart",
    )
    scores = table(
        ["Score", "Value (95% CI)", "n"],
        [
            ["Brier score (0 = perfect)", fmt_number(cal.brier, 4), cal.n],
            [f"Expected calibration error ({len(cal.bins)} bins)", fmt_number(cal.ece, 4), cal.n],
        ],
        element_id="calibration-scores",
    )
    bin_rows = [
        [
            f"{b.low:.1f}\u2013{b.high:.1f}",
            b.n,
            "" if b.mean_predicted is None else f"{b.mean_predicted:.3f}",
            fmt_proportion(b.observed) if b.n else "no cases",
        ]
        for b in cal.bins
    ]
    bins = table(
        ["Predicted probability", "n", "Mean predicted", "Observed fraction fractured"],
        bin_rows,
        caption="Reliability bins",
        element_id="calibration-bins",
    )
    text = paragraph(
        "A calibrated model's points lie on the diagonal: of the cases given probability 0.3, about 30% are "
        "fractured. Calibration does not change the ranking of cases or the ROC curve; "
        "`fracsight calibrate` can fit a temperature on a site's own validation data."
    )
    return _figures(
        caution,
        "Calibration",
        [text, row_of([figure(chart)]), scores, bins],
        element_id="calibration",
    )


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict) and "value" in value and ("lower" in value or "upper" in value):
        out.append((prefix, value))
    elif isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix} \u203a {key}" if prefix else str(key), sub, out)
    elif isinstance(value, list) and len(value) > 12:
        out.append((prefix, f"{len(value)} values (see metrics.json)"))
    else:
        out.append((prefix, value))


def _localisation_section(localisation: dict[str, Any], caution: str | None = None) -> Markup:
    if localisation.get("computed") is False:
        return _figures(
            caution,
            "Localisation against expert boxes",
            note(f"Not computed: {localisation.get('reason', 'no reason given')}.", NoteKind.INFO),
            element_id="localisation",
        )
    if "pointing_game" in localisation and "froc" in localisation:
        return _known_localisation(localisation)
    flat: list[tuple[str, Any]] = []
    _flatten("", localisation, flat)
    rows = []
    for key, value in flat:
        if isinstance(value, dict):
            lo, hi, v = value.get("lower"), value.get("upper"), value.get("value")
            ci = f" (95% CI {lo:.3f}\u2013{hi:.3f})" if lo is not None and hi is not None else ""
            counts = f"; {value['k']}/{value['n']}" if value.get("k") is not None and value.get("n") else ""
            rows.append([key, "n/a" if v is None else f"{v:.3f}{ci}{counts}"])
        elif isinstance(value, float):
            rows.append([key, f"{value:.4g}"])
        else:
            rows.append([key, "" if value is None else str(value)])
    return _figures(
        caution,
        "Localisation against expert boxes",
        [
            paragraph("Where the heat map points, compared with the fracture boxes drawn by experts."),
            table(["Measure", "Value"], rows, element_id="localisation-table"),
        ],
        element_id="localisation",
    )


def _as_estimate(d: dict[str, Any]) -> Estimate:
    return Estimate(
        d.get("value"), d.get("lower"), d.get("upper"), d.get("method", ""), k=d.get("k"), n=d.get("n")
    )


def _fmt_area(e: dict[str, Any]) -> str:
    """'4.2% (95% CI 3.1\u20135.6%; quartiles 2.0\u20138.9%)': a median share with its spread over images."""
    if e.get("value") is None:
        return "n/a"
    inside = []
    if e.get("lower") is not None and e.get("upper") is not None:
        inside.append(f"95% CI {100 * e['lower']:.1f}\u2013{100 * e['upper']:.1f}%")
    if e.get("quartiles"):
        q1, q3 = e["quartiles"]
        inside.append(f"quartiles {100 * q1:.1f}\u2013{100 * q3:.1f}%")
    return f"{_pct(e['value'])} ({'; '.join(inside)})" if inside else _pct(e["value"])


def _known_localisation(loc: dict[str, Any]) -> Markup:
    """Pointing game, FROC and outline results as written by
    :func:`fracsight.evaluation.expert_boxes.box_results`."""
    pointing, froc = loc["pointing_game"], loc["froc"]
    area = froc["normalised_area"]
    tolerance = pointing.get("tolerance_px")
    rows = [
        [
            "Pointing game: heat-map peak inside an expert box",
            fmt_proportion(_as_estimate(pointing["strict"])),
        ],
    ]
    if pointing.get("within_half_a_cell", {}).get("value") is not None:
        rows.append(
            [
                f"Pointing game: peak within half a heat-map cell of a box (\u2248{tolerance:.0f} px)",
                fmt_proportion(_as_estimate(pointing["within_half_a_cell"])),
            ]
        )
    rows.append(
        [
            f"FROC: normalised area up to {area.get('max_fp_per_image', 1.0):g} false positive per image",
            f"{fmt_number(_as_estimate(area))}; {froc['n_lesions']} boxes on {froc['n_images']} images",
        ]
    )
    outline = loc.get("outline")  # absent from metrics.json files written before it was measured
    if outline:
        touches = fmt_proportion(_as_estimate(outline["touches_box"]))
        rows.append(["Outline contains or touches an expert box", touches])
        rows.append(["Outline area, % of the image: median", _fmt_area(outline["median_area_fraction"])])
    parts: list[Markup | str] = [
        paragraph(
            "Where the heat map points, compared with the fracture boxes drawn by experts ("
            + str(loc.get("data", ""))
            + "). FROC "
            + str(froc.get("description", ""))
            + "; points of the curve are in metrics.json."
            + (f" Outline: {outline.get('description', '')}." if outline else "")
        ),
        table(["Measure", "Value (95% CI; n)"], rows, element_id="localisation-table"),
    ]
    curve = froc.get("curve")
    if curve and curve.get("fp_per_image"):
        x = [0.0, *curve["fp_per_image"]]
        y = [0.0, *curve["sensitivity"]]
        top = max(2.0, min(8.0, max(x)))
        chart = line_chart(
            [LineSeries("FROC", x, y)],
            title=f"FROC ({froc['n_lesions']} boxes, {froc['n_images']} images)",
            x_label="False positives per image",
            y_label="Share of expert boxes found",
            x_range=(0.0, top),
            element_id="froc-chart",
        )
        parts.append(row_of([figure(chart)]))
    return section("Localisation against expert boxes", parts, element_id="localisation")


def _gallery_section(evaluation: Evaluation, picture: PictureSource | None, point_name: str) -> Markup:
    groups = select_gallery(evaluation, point_name)
    parts: list[Markup | str] = [
        paragraph(
            f"At operating point '{point_name}' "
            f"(p \u2265 {_threshold(evaluation.rates[point_name].threshold)}). "
            "Up to 12 per group: the most confident first (for misses: the lowest probability first)."
        )
    ]
    heat_maps = getattr(picture, "draws_heatmaps", False) or any(evaluation.cases.heatmaps)
    if not heat_maps:
        parts.append(
            note(
                "No heat-map overlays were given (the predictions file has no 'heatmap' paths): the images "
                "are shown without them. `fracsight predict --heatmaps DIR` writes them.",
                NoteKind.INFO,
            )
        )
    for group in groups:
        items = _gallery_items(evaluation, group, picture) if picture is not None else []
        shown = f"{len(items)} shown of {group.total}"
        parts.append(
            section(
                f"{group.title}: {group.explanation} ({shown})",
                gallery(
                    items,
                    element_id=f"gallery-{group.key.replace('_', '-')}",
                    empty_text="No pictures available: no heat-map or image files were given for these cases."
                    if group.total
                    else "None.",
                ),
                level=3,
            )
        )
    return section("Examples: hits, misses and false alarms", parts, element_id="gallery")


def _excluded_section(evaluation: Evaluation, limit: int = 200) -> Markup:
    excluded = evaluation.cases.excluded
    rows = [[e.id, e.reason] for e in excluded[:limit]]
    more = (
        f" The first {limit} are listed; metrics.json lists all {len(excluded)}."
        if len(excluded) > limit
        else ""
    )
    return section(
        "Could not be analysed",
        [
            note(
                f"{len(excluded)} labelled cases are not in any number above, because the model could not "
                f"analyse them or no prediction was given.{more}",
                NoteKind.WARNING,
            ),
            table(["Case", "Reason"], rows, element_id="not-analysed-table"),
        ],
        element_id="not-analysed",
    )


def _auroc_cell(delong: dict[str, Any]) -> str:
    """The AUROC with its CI, or that the two sets do not overlap (DeLong's CI is then undefined)."""
    if delong.get("lower") is None or delong.get("upper") is None:
        return f"{delong['value']:.3f} (the sets do not overlap: no CI)"
    return fmt_number(_as_estimate(delong))


def _safety_section(safety: dict[str, Any], caution: str | None = None) -> Markup:
    """The out-of-scope check measured: each number beside the data it was measured on."""
    inside = safety["in_scope"]
    check = safety.get("check", {})
    rows: list[list[Any]] = [
        [
            f"In scope: {inside['data']}",
            str(inside["n"]),
            "(reference)",
            "wrongly flagged " + fmt_proportion(_as_estimate(inside["false_flag_rate"])),
            str(inside.get("refused_before_the_check", "")),
        ]
    ]
    for name, entry in safety["out_of_scope_sets"].items():
        auroc = entry.get("auroc")
        rows.append(
            [
                entry.get("data", name),
                str(entry["n"]),
                _auroc_cell(auroc["delong"]) if auroc else "none analysed",
                fmt_proportion(_as_estimate(entry["flagged"])) if "flagged" in entry else "none analysed",
                str(entry["refused_before_the_check"]),
            ]
        )
    acc = safety["accuracy_when_flagged_set_aside"]
    scored = acc.get("scored")
    parts: list[Markup | str] = [
        paragraph(
            "Images unlike the radiographs the model was trained on are answered “outside what the model "
            "knows” instead of being scored. The check compares the model's pooled features with its "
            f"development images (threshold {check.get('threshold') or 0:.3f}; fitted on "
            f"{check.get('fitted_on') or 'unknown'}) and reads DICOM Body Part Examined. AUROC: how well the "
            "distance score separates the in-scope images (first row) from each set (DeLong 95% CI)."
        ),
        table(
            ["Images (data)", "Analysed", "AUROC of the score vs in scope", "Flagged out of scope",
             "Refused before the check"],  # fmt: skip
            rows,
            element_id="out-of-scope-table",
        ),
    ]
    apart = [e for e in safety["out_of_scope_sets"].values() if "do not overlap" in (e.get("overlap") or "")]
    if apart:
        parts.append(
            note(
                f"{len(apart)} set(s) do not overlap the in-scope images at all: every score of one lies "
                "beyond every score of the other, so the AUROC is exactly 0 or 1 and has no DeLong CI. A "
                "small set says little about images of that kind in general.",
                NoteKind.INFO,
            )
        )
    parts.append(
        paragraph(
            f"Fracture ROC AUC on {acc.get('data', inside['data'])}: all analysed images "
            f"{fmt_number(_as_estimate(acc['all']['delong']))} (n={acc['n_all']}); only those still scored "
            "after flagged images are set aside "
            + (fmt_number(_as_estimate(scored["delong"])) if scored else "undefined")
            + f" (n={acc['n_scored']})."
        )
    )
    return _figures(caution, "Out-of-scope check (the safety net)", parts, element_id="out-of-scope")


def _methods(evaluation: Evaluation) -> list[Markup | str]:
    s = evaluation.settings
    text = [
        Markup("<strong>Methods.</strong> "),
        f"ROC AUC = Mann\u2013Whitney statistic (ties count \u00bd); 95% CI by DeLong's method (Sun & Xu "
        f"midrank algorithm) and by stratified bootstrap ({s.n_resamples} resamples, seed {s.seed}, "
        "percentile). "
        "Proportions: Wilson score intervals. PPV/NPV at a stated prevalence: Bayes' rule, interval from "
        "Sidak-adjusted Wilson bounds of sensitivity and specificity. Calibration: "
        f"{s.n_bins} equal-width bins; Brier and ECE CIs by the same bootstrap. "
        f"Small cells: {SMALL_CELL_RULE} (at least {MIN_POSITIVES} / {MIN_NEGATIVES}). "
        "Every number is also in metrics.json beside this file.",
    ]
    sources = f"{evaluation.cases.labels_source} {evaluation.cases.predictions_source}".lower()
    if "fracatlas" in sources:
        text += [Markup("<br>"), f"Data: {FRACATLAS_CITATION}"]
    return text


def render_html(
    evaluation: Evaluation,
    picture: PictureSource | None = None,
    gallery_point: str | None = None,
) -> str:
    """The report page as a string."""
    point = gallery_point or evaluation.operating_points[0].name
    if point not in evaluation.rates:
        raise ValueError(f"gallery operating point {point!r} is not one of {list(evaluation.rates)}")
    body: list[Markup] = [
        _header(evaluation),
        _roc_section(evaluation),
        _operating_points_section(evaluation),
    ]
    body += [_group_section(evaluation, g) for g in evaluation.groups]
    body.append(_calibration_section(evaluation))
    if evaluation.localisation:
        body.append(_localisation_section(evaluation.localisation, evaluation.caution))
    if evaluation.safety:
        body.append(_safety_section(evaluation.safety, evaluation.caution))
    body.append(_gallery_section(evaluation, picture, point))
    if evaluation.cases.excluded:
        body.append(_excluded_section(evaluation))
    c = evaluation.cases
    caution = f" \u00b7 {evaluation.caution.upper()}" if evaluation.caution else ""
    return page(
        "Fracture detection: evaluation report" + (" (includes training images)" if caution else ""),
        body,
        subtitle=(
            f"{evaluation.model.description} \u00b7 {c.n} cases ({c.n_positive} fractured) "
            f"from {c.labels_source}{caution}"
        ),
        footer=_methods(evaluation),
    )


def write_report(
    evaluation: Evaluation,
    out_dir: str | Path,
    picture: PictureSource | None = None,
    gallery_point: str | None = None,
) -> ReportFiles:
    """Write ``metrics.json`` and ``report.html`` into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"report directory {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    picture = picture if picture is not None else file_pictures(evaluation)
    point = gallery_point or evaluation.operating_points[0].name
    metrics = evaluation.to_dict()
    metrics["gallery"] = {
        "operating_point": point,
        **{g.key: [evaluation.cases.ids[i] for i in g.indices] for g in select_gallery(evaluation, point)},
    }
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2, allow_nan=False, default=_json_default))
    html_path = out / "report.html"
    html_path.write_text(render_html(evaluation, picture, point), encoding="utf-8")
    return ReportFiles(metrics_path, html_path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to metrics.json")
