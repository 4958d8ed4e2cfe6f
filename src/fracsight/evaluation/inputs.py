"""Reading predictions, labels and split files, and matching them case by case.

Predictions: a CSV with an id column (``id``, ``image_id``, ``case_id`` or ``path``) and
``probability``; the other columns of ``fracsight predict`` (``category``, ``heatmap``,
``error``) may be there. A row with a non-empty ``error`` was refused by the model: it
is kept as "could not be analysed", listed in the report and never silently dropped.

Labels: a CSV with an id column and ``fractured`` (or ``label``): 1/0, true/false,
fractured/non_fractured... (the spellings of :mod:`fracsight.data.labels`); any other
column (``region``, ``hardware``, ``view``...) can be used to break results down. A
FracAtlas ``dataset.csv`` works as is: its one-hot region flags become ``region``.

Ids follow the one rule of :mod:`fracsight.data.ids` (the file stem when a value looks like a
file), so a predictions file with paths matches a label file with names; split files are read by
:mod:`fracsight.data.split_file`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fracsight.data.ids import ID_COLUMNS, case_id
from fracsight.data.labels import ACCEPTED_LABELS, parse_label
from fracsight.data.table import read_table
from fracsight.evaluation.errors import (
    LabelsError,
    PredictionsError,
    SingleClassError,
    describe_ids,
    describe_lines,
)

__all__ = [
    "ExcludedCase",
    "PredictionTable",
    "LabelTable",
    "CaseTable",
    "read_predictions",
    "read_labels",
    "restrict_labels",
    "match_cases",
    "MISSING_VALUE",
]

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("fractured", "label")
REGION_FLAGS = ("hand", "leg", "hip", "shoulder", "mixed")
MISSING_VALUE = "(missing)"


@dataclass(frozen=True)
class ExcludedCase:
    """A case that could not be analysed, with the reason (e.g. the model refused the image)."""

    id: str
    reason: str
    line: int | None = None


@dataclass
class PredictionTable:
    """Usable predictions (one per id) and the rows the model refused."""

    source: str
    ids: list[str]
    probabilities: np.ndarray
    lines: list[int]
    heatmaps: list[str | None]
    images: list[str | None]
    excluded: list[ExcludedCase] = field(default_factory=list)


@dataclass
class LabelTable:
    """Reference labels (1 = fractured) and the other columns, one entry per id."""

    source: str
    ids: list[str]
    fractured: np.ndarray
    lines: list[int]
    columns: dict[str, list[str]]
    images: list[str | None] | None = None  # image files, for datasets the model is run on

    def column_names(self) -> list[str]:
        return list(self.columns)


@dataclass
class CaseTable:
    """Matched cases: what every statistic is computed on, and what was left out and why."""

    ids: list[str]
    labels: np.ndarray  # int8, 1 = fractured
    probabilities: np.ndarray
    groups: dict[str, list[str]]
    heatmaps: list[str | None]
    images: list[str | None]
    excluded: list[ExcludedCase]  # labelled cases that could not be analysed
    labels_source: str
    predictions_source: str
    split: str | None = None
    unmatched_predictions: int = 0  # predictions without a label (outside the split, or unlabelled)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def n_positive(self) -> int:
        return int(self.labels.sum())

    def subset(self, mask: np.ndarray) -> CaseTable:
        """The cases where ``mask`` is True (exclusions stay with the whole table)."""
        keep = np.flatnonzero(mask)
        return replace(
            self,
            ids=[self.ids[i] for i in keep],
            labels=self.labels[keep],
            probabilities=self.probabilities[keep],
            groups={k: [v[i] for i in keep] for k, v in self.groups.items()},
            heatmaps=[self.heatmaps[i] for i in keep],
            images=[self.images[i] for i in keep],
        )


def _open_rows(path: Path, kind: str, error: type[ValueError]) -> tuple[list[str], list[dict[str, str]]]:
    header, rows = read_table(path, f"{kind} file")
    if not header:
        raise error(f"{kind} file {path} is empty (no header row)")
    if not rows:
        raise error(f"{kind} file {path} has a header but no rows")
    return header, rows


def _id_column(header: list[str], path: Path, kind: str, error: type[ValueError]) -> str:
    for name in ID_COLUMNS:
        if name in header:
            return name
    raise error(
        f"{kind} file {path} has no id column: expected one of {', '.join(ID_COLUMNS)}; found {header}"
    )


def _resolve(value: str, base: Path) -> str | None:
    if not value:
        return None
    candidate = Path(value)
    if not candidate.is_absolute() and not candidate.exists() and (base / candidate).exists():
        candidate = base / candidate
    return str(candidate)


def _check_duplicates(
    ids: list[str], lines: list[int], path: Path, kind: str, error: type[ValueError]
) -> None:
    first_seen: dict[str, int] = {}
    duplicates: list[str] = []
    for case, line in zip(ids, lines, strict=True):
        if case in first_seen:
            duplicates.append(f"{case} (lines {first_seen[case]} and {line})")
        else:
            first_seen[case] = line
    if duplicates:
        raise error(f"{kind} file {path} has {len(duplicates)} repeated ids: {describe_ids(duplicates, 5)}")


def read_predictions(path: str | Path) -> PredictionTable:
    """Read and validate a predictions CSV; every problem is reported with its file line numbers."""
    path = Path(path)
    header, rows = _open_rows(path, "predictions", PredictionsError)
    id_col = _id_column(header, path, "predictions", PredictionsError)
    if "probability" not in header:
        raise PredictionsError(f"predictions file {path} has no 'probability' column; found {header}")
    base = path.parent
    ids, probs, lines, heatmaps, images = [], [], [], [], []
    excluded: list[ExcludedCase] = []
    no_id, not_number, nan, outside = [], [], [], []
    for index, row in enumerate(rows):
        line = index + 2
        case = case_id(row.get(id_col, ""), from_path=id_col == "path")
        if not case:
            no_id.append(line)
            continue
        error = row.get("error", "")
        if error:
            excluded.append(ExcludedCase(case, error, line))
            continue
        text = row.get("probability", "")
        try:
            value = float(text)
        except ValueError:
            not_number.append(line)
            continue
        if math.isnan(value):
            nan.append(line)
            continue
        if not 0.0 <= value <= 1.0:
            outside.append(line)
            continue
        ids.append(case)
        probs.append(value)
        lines.append(line)
        heatmaps.append(_resolve(row.get("heatmap", ""), base))
        images.append(_resolve(row.get("path", ""), base))
    problems = []
    if no_id:
        problems.append(f"column '{id_col}' is empty in {len(no_id)} rows ({describe_lines(no_id)})")
    if not_number:
        problems.append(
            f"column 'probability' is empty or not a number in {len(not_number)} rows without an error "
            f"({describe_lines(not_number)})"
        )
    if nan:
        problems.append(f"column 'probability' has {len(nan)} NaN values ({describe_lines(nan)})")
    if outside:
        problems.append(
            f"column 'probability' has {len(outside)} values outside [0, 1] ({describe_lines(outside)})"
        )
    if problems:
        raise PredictionsError(f"predictions file {path}: " + "; ".join(problems))
    _check_duplicates(
        ids + [e.id for e in excluded],
        lines + [e.line or 0 for e in excluded],
        path,
        "predictions",
        PredictionsError,
    )
    return PredictionTable(
        source=str(path),
        ids=ids,
        probabilities=np.asarray(probs, dtype=float),
        lines=lines,
        heatmaps=heatmaps,
        images=images,
        excluded=excluded,
    )


def _region_from_flags(row: dict[str, str], line: int, path: Path) -> str:
    """'mixed' flag or several region flags -> mixed; exactly one -> it; none -> unknown."""
    flags = {}
    for name in REGION_FLAGS:
        value = row.get(name, "0") or "0"
        if value not in ("0", "1"):
            raise LabelsError(
                f"labels file {path}: column {name!r} is {value!r} on line {line}, expected 0 or 1"
            )
        flags[name] = value == "1"
    on = [name for name in REGION_FLAGS[:-1] if flags[name]]
    if flags["mixed"] or len(on) > 1:
        return "mixed"
    return on[0] if on else "unknown"


def _bad_labels(column: str, bad: list[tuple[int, str]], shown: int = 5) -> str:
    """What is wrong with the label column: lines and values, so the cells can be found and fixed."""
    examples = ", ".join(f"line {line}: {raw!r}" for line, raw in bad[:shown])
    more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
    return (
        f"column '{column}' is not a fracture label in {len(bad)} rows ({examples}{more}); "
        f"accepted: {ACCEPTED_LABELS}"
    )


def read_labels(path: str | Path) -> LabelTable:
    """Read and validate a labels CSV (id, fractured label, optional grouping columns)."""
    path = Path(path)
    header, rows = _open_rows(path, "labels", LabelsError)
    id_col = _id_column(header, path, "labels", LabelsError)
    label_col = next((name for name in LABEL_COLUMNS if name in header), None)
    if label_col is None:
        raise LabelsError(f"labels file {path} has no 'fractured' (or 'label') column; found {header}")
    derive_region = "region" not in header and all(flag in header for flag in REGION_FLAGS[:-1])
    other = [name for name in header if name not in (id_col, label_col)]
    columns: dict[str, list[str]] = {name: [] for name in other}
    if derive_region:
        columns = {"region": [], **columns}
    ids, labels, lines, images = [], [], [], []
    no_id, bad_label = [], []
    for index, row in enumerate(rows):
        line = index + 2
        case = case_id(row.get(id_col, ""), from_path=id_col == "path")
        raw = row.get(label_col, "")
        label = parse_label(raw)
        if not case:
            no_id.append(line)
            continue
        if label is None:
            bad_label.append((line, raw))
            continue
        ids.append(case)
        labels.append(label)
        lines.append(line)
        images.append(_resolve(row[id_col], path.parent) if id_col == "path" else None)
        for name in other:
            columns[name].append(row.get(name, "") or MISSING_VALUE)
        if derive_region:
            columns["region"].append(_region_from_flags(row, line, path))
    problems = []
    if no_id:
        problems.append(f"column '{id_col}' is empty in {len(no_id)} rows ({describe_lines(no_id)})")
    if bad_label:
        problems.append(_bad_labels(label_col, bad_label))
    if problems:
        raise LabelsError(f"labels file {path}: " + "; ".join(problems))
    _check_duplicates(ids, lines, path, "labels", LabelsError)
    return LabelTable(
        source=str(path),
        ids=ids,
        fractured=np.asarray(labels, dtype=np.int8),
        lines=lines,
        columns=columns,
        images=images if id_col == "path" else None,
    )


def restrict_labels(labels: LabelTable, keep: set[str], description: str) -> LabelTable:
    """Only the labelled cases whose id is in ``keep`` (e.g. the held-out split)."""
    index = [i for i, case in enumerate(labels.ids) if case in keep]
    if not index:
        raise LabelsError(f"none of the {len(keep)} ids of {description} is in labels {labels.source}")
    missing = len(keep) - len(index)
    if missing:
        log.warning("%d ids of %s have no label in %s", missing, description, labels.source)
    return replace(
        labels,
        ids=[labels.ids[i] for i in index],
        fractured=labels.fractured[index],
        lines=[labels.lines[i] for i in index],
        columns={k: [v[i] for i in index] for k, v in labels.columns.items()},
        images=[labels.images[i] for i in index] if labels.images is not None else None,
        source=f"{labels.source} ({description})",
    )


def match_cases(
    predictions: PredictionTable,
    labels: LabelTable,
    group_columns: list[str] | tuple[str, ...] = (),
    allow_missing: bool = False,
    split: str | None = None,
) -> CaseTable:
    """Pair each labelled case with its prediction.

    A labelled case the model refused is kept as excluded (with the model's reason). A
    labelled case with no row at all is an error unless ``allow_missing``, when it is
    excluded as "no prediction". Predictions without a label are counted and ignored.
    """
    unknown = [name for name in group_columns if name not in labels.columns]
    if unknown:
        raise LabelsError(
            f"labels {labels.source} have no column {', '.join(repr(u) for u in unknown)} "
            "to break results down by; "
            f"available: {', '.join(labels.column_names()) or 'none'}"
        )
    by_id = {case: i for i, case in enumerate(predictions.ids)}
    refused = {case.id: case for case in predictions.excluded}
    rows, excluded, missing = [], [], []
    for li, case in enumerate(labels.ids):
        if case in by_id:
            rows.append((li, by_id[case]))
        elif case in refused:
            excluded.append(ExcludedCase(case, refused[case].reason, refused[case].line))
        else:
            missing.append(case)
    if missing and not allow_missing:
        raise PredictionsError(
            f"predictions file {predictions.source} has no row for {len(missing)} of the {len(labels.ids)} "
            f"labelled cases (ids {describe_ids(missing)}); predict them, or pass --allow-missing "
            "to list them as not analysed"
        )
    excluded += [ExcludedCase(case, "no prediction for this case") for case in missing]
    if not rows:
        raise PredictionsError(
            f"no id of predictions file {predictions.source} matches an id of labels {labels.source} "
            f"(examples: predictions {describe_ids(predictions.ids[:3], 3)}; "
            f"labels {describe_ids(labels.ids[:3], 3)})"
        )
    label_index = [li for li, _ in rows]
    pred_index = [pi for _, pi in rows]
    y = labels.fractured[label_index].astype(np.int8)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        which = "fractured (1)" if n_pos else "not fractured (0)"
        raise SingleClassError(
            f"labels {labels.source}: all {y.size} analysable cases are {which}; ROC AUC, sensitivity and "
            "specificity need both fractured and non-fractured cases"
        )
    matched = set(labels.ids)
    unmatched = sum(1 for case in predictions.ids if case not in matched)
    if unmatched:
        log.info("%d predictions have no label in %s and are not evaluated", unmatched, labels.source)
    images = [predictions.images[pi] for pi in pred_index]
    if labels.images is not None:
        images = [labels.images[li] or img for li, img in zip(label_index, images, strict=True)]
    return CaseTable(
        ids=[labels.ids[li] for li in label_index],
        labels=y,
        probabilities=predictions.probabilities[pred_index].astype(float),
        groups={name: [labels.columns[name][li] for li in label_index] for name in group_columns},
        heatmaps=[predictions.heatmaps[pi] for pi in pred_index],
        images=images,
        excluded=excluded,
        labels_source=labels.source,
        predictions_source=predictions.source,
        split=split,
        unmatched_predictions=unmatched,
    )
