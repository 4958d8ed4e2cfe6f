"""Where the cases of an evaluation come from: a dataset the model is run on, or prediction + label files.

Shared by ``fracsight evaluate``, ``fracsight thresholds`` and ``fracsight calibrate`` so
that all three read, split and match data the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fracsight.data.boxes import Box
from fracsight.data.split_file import split_ids
from fracsight.evaluation.datasets import load_dataset
from fracsight.evaluation.evaluate import ModelIdentity
from fracsight.evaluation.inputs import (
    CaseTable,
    LabelTable,
    match_cases,
    read_labels,
    read_predictions,
    restrict_labels,
)
from fracsight.finding import Finding
from fracsight.model_card import ModelCard

__all__ = ["LoadedCases", "load_cases", "default_group_columns"]

DEFAULT_GROUPS = ("region", "hardware")


@dataclass
class LoadedCases:
    """Matched cases, the model they came from, and (for model runs) findings and expert boxes."""

    cases: CaseTable
    model: ModelIdentity
    card: ModelCard | None
    model_path: str | None
    findings: dict[str, Finding] = field(default_factory=dict)
    boxes: dict[str, list[Box]] | None = None


def default_group_columns(labels: LabelTable, extra: list[str] | None = None) -> list[str]:
    """``region`` and ``hardware`` where present, then the user's columns, without repeats."""
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
    need_model_card: bool = False,
) -> LoadedCases:
    """Cases from ``dataset`` (the model is run on it) or from ``predictions`` + ``labels`` files.

    With prediction files, ``model`` (if given) identifies the model that made them and
    supplies its card (operating points, temperature); with ``need_model_card`` a
    missing ``model`` is an error.
    """
    if dataset is not None and (predictions is not None or labels is not None):
        raise ValueError("give a DATASET to run the model on, or --predictions with --labels, not both")
    if dataset is None:
        if predictions is None or labels is None:
            raise ValueError("give a DATASET (FracAtlas folder or manifest CSV) or --predictions, --labels")
        table, split_name = _split(read_labels(labels), split_file, split)
        columns = default_group_columns(table, group_columns)
        cases = match_cases(read_predictions(predictions), table, columns, allow_missing, split_name)
        card = None
        if model is not None:
            card = ModelCard.for_model(model)
        elif need_model_card:
            raise ValueError("--model is needed: the model whose predictions these are")
        identity = (
            ModelIdentity.from_card(card, model)
            if card is not None
            else ModelIdentity(description=f"predictions file {predictions} (model not identified)")
        )
        return LoadedCases(cases, identity, card, model)

    from fracsight.evaluation.model_run import run_model

    data = load_dataset(Path(dataset))
    table, split_name = _split(data.labels, split_file, split)
    columns = default_group_columns(table, group_columns)
    run = run_model(table, model, progress=progress)
    cases = match_cases(run.predictions, table, columns, allow_missing=False, split=split_name)
    identity = ModelIdentity.from_card(run.card, run.model_path)
    boxes = None
    if data.boxes is not None:
        keep = set(table.ids)
        boxes = {case: b for case, b in data.boxes.items() if case in keep}
    return LoadedCases(cases, identity, run.card, run.model_path, run.findings, boxes)
