"""One evaluation: every statistic for a set of matched cases, and where each came from.

:func:`evaluate_cases` is the single place that turns a :class:`CaseTable` (labels +
probabilities) into an :class:`Evaluation`; :func:`evaluate_predictions` does the same
from a predictions CSV and a labels CSV. The result knows its data (files, n, split,
what was excluded) and its model, so that every number written from it can say so.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fracsight import __version__
from fracsight.data.split_file import split_ids
from fracsight.evaluation.calibration import CalibrationSummary, calibration_summary
from fracsight.evaluation.groups import MIN_POSITIVES, SMALL_CELL_RULE, GroupTable, group_table
from fracsight.evaluation.inputs import (
    CaseTable,
    match_cases,
    read_labels,
    read_predictions,
    restrict_labels,
)
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
from fracsight.evaluation.training_guard import TrainingOverlap
from fracsight.model_card import ModelCard

__all__ = [
    "EvaluationSettings",
    "ModelIdentity",
    "RocBand",
    "Evaluation",
    "operating_points_from_card",
    "evaluate_cases",
    "evaluate_predictions",
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
class ModelIdentity:
    """Which model produced the probabilities: its card when known, else just the predictions file."""

    description: str
    model_id: str | None = None
    path: str | None = None
    card: ModelCard | None = None

    @classmethod
    def from_card(cls, card: ModelCard, path: str | None) -> ModelIdentity:
        model_id = card.model_id
        return cls(
            description=f"model {model_id}" + (f" ({path})" if path else ""),
            model_id=model_id,
            path=path,
            card=card,
        )

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"description": self.description, "model_id": self.model_id, "path": self.path}
        if self.card is not None:
            keys = (
                "model_id",
                "input_size",
                "thresholds",
                "temperature",
                "threshold_source",
                "data",
                "adaptations",
            )
            out["card"] = {k: self.card[k] for k in keys if k in self.card}
        return out


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
    model: ModelIdentity
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
    model: ModelIdentity,
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
    model_card: ModelCard | None = None,
    model_path: str | None = None,
    group_columns: Sequence[str] | None = None,
    split_file: str | Path | None = None,
    split: str | None = None,
    allow_missing: bool = False,
    settings: EvaluationSettings | None = None,
) -> Evaluation:
    """Evaluate any model's predictions CSV against a labels CSV.

    Operating points are the card's named ones (when ``model_card`` is given) plus each
    of ``thresholds``. ``group_columns`` defaults to ``region`` and ``hardware`` where the
    labels have them. ``split_file``/``split`` restrict the labels to one split.
    """
    table = read_labels(labels)
    split_name = None
    if split_file is not None:
        if not split:
            raise ValueError("a split file needs --split NAME (e.g. test) to say which split to evaluate")
        table = restrict_labels(table, split_ids(split_file, split), f"split {split!r} of {split_file}")
        split_name = f"{split} (from {split_file})"
    if group_columns is None:
        group_columns = [name for name in ("region", "hardware") if name in table.columns]
    cases = match_cases(read_predictions(predictions), table, list(group_columns), allow_missing, split_name)
    if model_card is not None:
        model = ModelIdentity.from_card(model_card, model_path)
        points = operating_points_from_card(model_card)
    else:
        model = ModelIdentity(description=f"predictions file {predictions} (model not identified)")
        points = []
    points += user_operating_points(thresholds)
    notes = []
    if not points:
        points = [OperatingPoint("threshold 0.5", 0.5, "default: no model card or threshold was given")]
        notes.append("No model card or threshold was given: results at an operating point use 0.5.")
    evaluation = evaluate_cases(cases, model, points, group_columns, settings)
    evaluation.notes.extend(notes)
    return evaluation


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
