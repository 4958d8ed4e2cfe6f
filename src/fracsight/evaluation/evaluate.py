"""One evaluation: every statistic for a set of matched cases, and where each came from.

:func:`evaluate_cases` is the single place that turns a :class:`CaseTable` (labels +
probabilities) into an :class:`Evaluation`; :func:`evaluate_predictions` does the same
from a predictions CSV and a labels CSV. The result knows its data (files, n, split,
what was excluded) and its model, so that every number written from it can say so.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fracsight._version import __version__
from fracsight.evaluation.calibration import CalibrationSummary, calibration_summary
from fracsight.evaluation.groups import MIN_POSITIVES, SMALL_CELL_RULE, GroupTable, group_table
from fracsight.evaluation.inputs import CaseTable
from fracsight.evaluation.metrics import (
    CONFIDENCE,
    AucResult,
    BinaryRates,
    RocCurve,
    auc_with_ci,
    binary_rates,
    roc_confidence_band,
    roc_curve,
)
from fracsight.evaluation.operating_points import OperatingPoint, OperatingPointName
from fracsight.evaluation.sources import ScoredBy, load_cases
from fracsight.evaluation.training_guard import TrainingOverlap
from fracsight.finding import Finding
from fracsight.model_card import ModelCard

__all__ = [
    "EvaluationSettings",
    "RocBand",
    "Evaluation",
    "operating_points",
    "operating_points_from_card",
    "evaluate_cases",
    "evaluate_predictions",
    "safety_net",
    "OUT_OF_SCOPE_FILES",
]


@dataclass(frozen=True)
class EvaluationSettings:
    """Statistical settings, recorded in metrics.json so a result can be reproduced."""

    level: float = CONFIDENCE
    n_resamples: int = 2000
    seed: int = 0
    n_bins: int = 10
    prevalence: float | None = None  # stated prevalence for PPV/NPV, besides the data's own

    def __post_init__(self) -> None:
        if not 0.5 <= self.level < 1.0:
            raise ValueError(f"confidence level {self.level!r} must be in [0.5, 1)")
        if self.n_resamples < 100:
            raise ValueError(
                f"bootstrap resamples {self.n_resamples} must be >= 100 for a stable 95% interval"
            )
        if self.n_bins < 2:
            raise ValueError(f"calibration bins {self.n_bins} must be >= 2")
        if self.prevalence is not None and not 0.0 < self.prevalence < 1.0:
            raise ValueError(f"prevalence {self.prevalence!r} must be strictly between 0 and 1")


@dataclass(frozen=True)
class RocBand:
    """Pointwise bootstrap band of the ROC curve: TPR percentiles at fixed FPRs (vertical averaging)."""

    fpr: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    method: str


@dataclass
class Evaluation:
    """All results of one evaluation, with the data and model they came from."""

    cases: CaseTable
    model: ScoredBy
    settings: EvaluationSettings
    auc: AucResult
    roc: RocCurve
    roc_band: RocBand
    operating_points: list[OperatingPoint]
    rates: dict[str, BinaryRates]
    groups: list[GroupTable]
    calibration: CalibrationSummary
    localisation: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    training: TrainingOverlap | None = None  # which cases the model was trained on, when its card says
    safety: dict[str, Any] | None = None  # the out-of-scope check measured (:func:`safety_net`)

    @property
    def caution(self) -> str | None:
        """The label every figure carries when the cases include the model's training images."""
        return self.training.caution() if self.training is not None and self.training.n else None

    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )

    def data_dict(self) -> dict:
        c = self.cases
        return {
            "labels": c.labels_source,
            "predictions": c.predictions_source,
            "split": c.split,
            "n_cases": c.n,
            "n_positive": c.n_positive,
            "n_negative": c.n - c.n_positive,
            "prevalence_in_data": c.n_positive / c.n,
            "not_analysed": [{"id": e.id, "reason": e.reason} for e in c.excluded],
            "n_not_analysed": len(c.excluded),
            "predictions_without_label": c.unmatched_predictions,
            "training_images": None if self.training is None else self.training.to_dict(),
        }

    def to_dict(self) -> dict:
        """Everything, JSON-ready: each number next to the n and CI it needs."""
        s = self.settings
        return {
            "fracsight_version": __version__,
            "created": self.created,
            "caution": self.caution,
            "model": self.model.to_dict(),
            "data": self.data_dict(),
            "settings": {
                "confidence_level": s.level,
                "bootstrap_resamples": s.n_resamples,
                "bootstrap_seed": s.seed,
                "calibration_bins": s.n_bins,
                "stated_prevalence": s.prevalence,
                "positive_rule": "a case is called fractured when probability >= threshold",
                "small_cell_rule": SMALL_CELL_RULE,
            },
            "overall": {
                "n": self.cases.n,
                "n_positive": self.cases.n_positive,
                "auc": self.auc.to_dict(),
                "operating_points": [
                    {"name": op.name, "source": op.source, **self.rates[op.name].to_dict()}
                    for op in self.operating_points
                ],
            },
            "roc": {
                "fpr": self.roc.fpr.tolist(),
                "tpr": self.roc.tpr.tolist(),
                "thresholds": [None if math.isinf(t) else float(t) for t in self.roc.thresholds],
                "band": {
                    "fpr": self.roc_band.fpr.tolist(),
                    "tpr_lower": self.roc_band.lower.tolist(),
                    "tpr_upper": self.roc_band.upper.tolist(),
                    "method": self.roc_band.method,
                },
            },
            "groups": {g.column: g.to_dict() for g in self.groups},
            "calibration": self.calibration.to_dict(),
            "localisation": self.localisation,
            "out_of_scope_check": self.safety,
            "notes": self.notes,
        }


def operating_points_from_card(card: ModelCard) -> list[OperatingPoint]:
    """The model's named operating points, "fracture" then "doubt", as its (checked) card states them."""
    thresholds = card.thresholds
    return [
        OperatingPoint(name.value, thresholds[name.value], card.threshold_source)
        for name in (OperatingPointName.FRACTURE, OperatingPointName.DOUBT)
    ]


def _check_both_classes(cases: CaseTable) -> None:
    """An ROC analysis needs two cases of each class; say so with the data, not DeLong's internals."""
    n_pos, n_neg = cases.n_positive, cases.n - cases.n_positive
    if min(n_pos, n_neg) < 2:
        raise ValueError(
            f"labels {cases.labels_source}: {n_pos} fractured and {n_neg} non-fractured cases "
            f"matched; an evaluation needs at least 2 of each (and {MIN_POSITIVES} of each for figures "
            "worth reading)"
        )


def evaluate_cases(
    cases: CaseTable,
    model: ScoredBy,
    operating_points: Sequence[OperatingPoint],
    group_columns: Sequence[str] = (),
    settings: EvaluationSettings | None = None,
) -> Evaluation:
    """Compute every statistic on matched cases (see :mod:`fracsight.evaluation.metrics` for methods)."""
    settings = settings or EvaluationSettings()
    names = [op.name for op in operating_points]
    if len(set(names)) != len(names):
        raise ValueError(f"operating point names must be distinct, got {names}")
    _check_both_classes(cases)
    p, y = cases.probabilities, cases.labels
    auc = auc_with_ci(p, y, n_resamples=settings.n_resamples, seed=settings.seed, level=settings.level)
    grid = np.linspace(0.0, 1.0, 101)
    lower, upper = roc_confidence_band(p, y, grid, settings.n_resamples, settings.seed, settings.level)
    band = RocBand(
        grid,
        lower,
        upper,
        f"pointwise stratified bootstrap ({settings.n_resamples} resamples, seed {settings.seed}) "
        "of TPR at fixed FPR",
    )
    rates = {
        op.name: binary_rates(p, y, op.threshold, settings.prevalence, settings.level)
        for op in operating_points
    }
    groups = [
        group_table(cases, col, operating_points, settings.prevalence, settings.level)
        for col in group_columns
    ]
    calibration = calibration_summary(
        p, y, settings.n_bins, settings.n_resamples, settings.seed, settings.level
    )
    return Evaluation(
        cases=cases,
        model=model,
        settings=settings,
        auc=auc,
        roc=roc_curve(p, y),
        roc_band=band,
        operating_points=list(operating_points),
        rates=rates,
        groups=groups,
        calibration=calibration,
    )


def evaluate_predictions(
    predictions: str | Path,
    labels: str | Path,
    thresholds: Sequence[float] = (),
    model: str | Path | None = None,
    group_columns: Sequence[str] = (),
    split_file: str | Path | None = None,
    split: str | None = None,
    allow_missing: bool = False,
    settings: EvaluationSettings | None = None,
    include_training_images: bool = False,
) -> Evaluation:
    """Evaluate any model's predictions CSV against a labels CSV, as ``fracsight evaluate
    --predictions --labels`` does (:func:`fracsight.evaluation.sources.load_cases`).

    ``model`` (the ONNX file whose card sits beside it) names the model that made the predictions:
    its operating points are evaluated, plus each of ``thresholds``. Results are broken down by
    ``region`` and ``hardware`` where the labels have them, and by ``group_columns``.
    ``split_file``/``split`` restrict the labels to one split.
    """
    loaded = load_cases(
        predictions=str(predictions),
        labels=str(labels),
        model=str(model) if model is not None else None,
        split_file=str(split_file) if split_file is not None else None,
        split=split,
        group_columns=list(group_columns),
        allow_missing=allow_missing,
        include_training_images=include_training_images,
    )
    points, notes = operating_points(loaded.card, thresholds)
    evaluation = evaluate_cases(loaded.cases, loaded.model, points, list(loaded.cases.groups), settings)
    evaluation.notes.extend(notes)
    evaluation.training = loaded.training
    return evaluation


# Files of an out-of-scope set that are offered to the model (the rest, e.g. READMEs, are not images).
OUT_OF_SCOPE_FILES = frozenset(
    ".dcm .dicom .jpg .jpeg .png .tif .tiff .bmp .gif .webp .j2k .jp2".split()
)


def _set_files(folder: Path) -> list[Path]:
    """The files of an out-of-scope set: images by extension, and extension-less files (DICOM)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and (p.suffix.lower() in OUT_OF_SCOPE_FILES or not p.suffix)
        and not p.name.startswith(".")
    )


def safety_net(
    cases: CaseTable,
    findings: Mapping[str, Finding],
    sets: Mapping[str, str | Path],
    model_path: str | Path | None = None,
    settings: EvaluationSettings | None = None,
) -> dict[str, Any]:
    """The out-of-scope check measured on this evaluation (:mod:`fracsight.evaluation.scope`):

    * the evaluated images are the in-distribution set: how many the check wrongly flags (Wilson
      CI), and what setting them aside does to the ROC AUC of what is still scored;
    * each of ``sets`` (name -> folder) is run through the same model as ``predict`` would: the
      AUROC of the distance score of the evaluated images against it (DeLong CI; none where the
      two do not overlap, and it says so), the share flagged, and how many files were refused
      before the check (MR/CT, colour photographs, unreadable).

    ``findings`` are the evaluated cases' findings (a model run, not a predictions file)."""
    from fracsight.evaluation.scope import ScopeOutcomes, accuracy_of, scope_outcomes, scope_rates_of
    from fracsight.inference import Analyser

    settings = settings or EvaluationSettings()
    missing = [case for case in cases.ids if case not in findings]
    if missing:
        raise ValueError(
            f"the out-of-scope check can only be measured on images the model was run on here "
            f"({len(missing)} evaluated cases have no finding: give a DATASET, not --predictions)"
        )
    inside = ScopeOutcomes.of_findings({case: findings[case] for case in cases.ids})
    data = f"{cases.labels_source} ({cases.n} analysed images evaluated here)"
    analyser = Analyser(model_path)
    outside, outside_data = {}, {}
    for name, folder in sets.items():
        files = _set_files(Path(folder))
        if not files:
            raise ValueError(f"out-of-scope set {name!r}: no image or DICOM files under {folder}")
        outside[name] = scope_outcomes(analyser, files)
        outside_data[name] = f"{name}: {len(files)} files under {folder}"
    rates = scope_rates_of(inside, outside, data, outside_data)
    for entry in rates["out_of_scope_sets"].values():
        auroc = entry.get("auroc")
        entry["overlap"] = (
            None
            if auroc is None
            else "the two sets overlap"
            if auroc["delong"].get("lower") is not None
            else "the two sets do not overlap (every score of one set is beyond every score of the "
            "other): AUROC is exactly 0 or 1 and DeLong's CI is undefined"
        )
    accuracy = accuracy_of(cases.probabilities, cases.labels, inside.flagged, settings.n_resamples)
    accuracy["data"] = data
    rates["accuracy_when_flagged_set_aside"] = accuracy
    rates["in_scope"]["refused_before_the_check"] = len(cases.excluded)
    check = analyser.scope_check
    rates["check"] = {
        "threshold": None if check is None else check.threshold,
        "fitted_on": None if check is None else check.fitted_on,
        "score": "distance of the pooled features from the development data (about 2 inside)",
        "flagged": "distance above the threshold, or a DICOM Body Part Examined the model was not "
        "trained for",
    }
    return rates


def operating_points(
    card: ModelCard | None, thresholds: Sequence[float]
) -> tuple[list[OperatingPoint], list[str]]:
    """The operating points of an evaluation, with the notes they need: the card's named ones, then
    one per threshold given; 0.5 when there are none (and a note saying so)."""
    points = operating_points_from_card(card) if card is not None else []
    points += user_operating_points(thresholds)
    if points:
        return points, []
    default = OperatingPoint("threshold 0.5", 0.5, "default: no model card or threshold was given")
    return [default], ["No model card (--model) or --threshold was given: operating-point results use 0.5."]


def user_operating_points(thresholds: Sequence[float]) -> list[OperatingPoint]:
    """Operating points for thresholds typed by the user, named by their value.

    The name uses the shortest repr of the value, so distinct thresholds get distinct names
    (``:g`` would name 0.1234567 and 0.1234568 alike and the evaluation would refuse them).
    """
    seen, points = set(), []
    for t in thresholds:
        if t in seen:
            continue
        seen.add(t)
        points.append(OperatingPoint(f"threshold {float(t)!r}", float(t), "given by the user"))
    return points
