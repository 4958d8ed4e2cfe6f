"""Where the cases of an evaluation come from: a dataset the model is run on, or prediction + label files.

Shared by ``fracsight evaluate``, ``fracsight thresholds`` and ``fracsight calibrate`` so
that all three read, split and match data the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracsight.data.boxes import Box
from fracsight.data.split_file import split_ids
from fracsight.evaluation.datasets import load_dataset
from fracsight.evaluation.errors import LabelsError
from fracsight.evaluation.inputs import (
    CaseTable,
    LabelTable,
    match_cases,
    read_labels,
    read_predictions,
    restrict_labels,
)
from fracsight.evaluation.training_guard import TrainingOverlap, check_training_overlap, find_training_images
from fracsight.finding import Finding
from fracsight.model_card import ModelCard

__all__ = ["LoadedCases", "ScoredBy", "load_cases", "default_group_columns"]

DEFAULT_GROUPS = ("region", "hardware")


@dataclass(frozen=True)
class ScoredBy:
    """Who produced the probabilities being evaluated: a model (its card) when known, else just the
    predictions file. (A model's own identity is :class:`fracsight.model_card.ModelIdentity`.)"""

    description: str
    model_id: str | None = None
    path: str | None = None
    card: ModelCard | None = None

    @classmethod
    def from_card(cls, card: ModelCard, path: str | None) -> ScoredBy:
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


@dataclass
class LoadedCases:
    """Matched cases, the model they came from, and (for model runs) findings and expert boxes."""

    cases: CaseTable
    model: ScoredBy
    card: ModelCard | None
    model_path: str | None
    findings: dict[str, Finding] = field(default_factory=dict)
    boxes: dict[str, list[Box]] | None = None
    training: TrainingOverlap | None = None  # None: the card does not record its training images


def default_group_columns(labels: LabelTable, extra: list[str] | None = None) -> list[str]:
    """``region`` and ``hardware`` where present, then the user's columns (``--by``), without repeats."""
    unknown = [name for name in extra or [] if name not in labels.columns]
    if unknown:
        raise LabelsError(
            f"--by {unknown[0]}: labels {labels.source} have no such column; "
            f"available: {', '.join(labels.column_names()) or 'none'}"
        )
    columns = [name for name in DEFAULT_GROUPS if name in labels.columns]
    for name in extra or []:
        if name not in columns:
            columns.append(name)
    return columns


def _split(labels: LabelTable, split_file: str | None, split: str | None) -> tuple[LabelTable, str | None]:
    if split_file is None:
        if split:
            raise ValueError(f"--split {split!r} needs --split-file naming the CSV (id,split) it comes from")
        return labels, None
    if not split:
        raise ValueError("--split-file needs --split NAME (e.g. test) to say which split to use")
    restricted = restrict_labels(labels, split_ids(split_file, split), f"split {split!r} of {split_file}")
    return restricted, f"{split} (from {split_file})"


def load_cases(
    dataset: str | None = None,
    predictions: str | None = None,
    labels: str | None = None,
    model: str | None = None,
    split_file: str | None = None,
    split: str | None = None,
    group_columns: list[str] | None = None,
    allow_missing: bool = False,
    progress: bool = True,
    include_training_images: bool = False,
) -> LoadedCases:
    """Cases from ``dataset`` (the model is run on it) or from ``predictions`` + ``labels`` files.

    With prediction files, ``model`` (if given) identifies the model that made them and
    supplies its card (operating points, temperature). Every check comes before the model
    runs: the grouping columns exist, and no case is an image the model was trained on
    (:mod:`fracsight.evaluation.training_guard`) unless ``include_training_images``.
    """
    if dataset is not None and (predictions is not None or labels is not None):
        raise ValueError("give a DATASET to run the model on, or --predictions with --labels, not both")
    if dataset is None:
        if predictions is None or labels is None:
            raise ValueError("give a DATASET (FracAtlas folder or manifest CSV) or --predictions, --labels")
        table, split_name = _split(read_labels(labels), split_file, split)
        columns = default_group_columns(table, group_columns)
        cases = match_cases(read_predictions(predictions), table, columns, allow_missing, split_name)
        card = ModelCard.for_model(model) if model is not None else None
        training = find_training_images(card, cases.ids, cases.images) if card is not None else None
        check_training_overlap(training, include_training_images)
        identity = (
            ScoredBy.from_card(card, model)
            if card is not None
            else ScoredBy(description=f"predictions file {predictions} (model not identified)")
        )
        return LoadedCases(cases, identity, card, model, training=training)

    from fracsight.evaluation.model_run import run_model

    data = load_dataset(Path(dataset))
    table, split_name = _split(data.labels, split_file, split)
    columns = default_group_columns(table, group_columns)
    training = find_training_images(ModelCard.for_model(model), table.ids, table.images)
    check_training_overlap(training, include_training_images)
    run = run_model(table, model, progress=progress)
    cases = match_cases(run.predictions, table, columns, allow_missing=False, split=split_name)
    identity = ScoredBy.from_card(run.card, run.model_path)
    boxes = None
    if data.boxes is not None:
        keep = set(table.ids)
        boxes = {case: b for case, b in data.boxes.items() if case in keep}
    return LoadedCases(cases, identity, run.card, run.model_path, run.findings, boxes, training)
