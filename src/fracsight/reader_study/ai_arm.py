"""The "AI alone" arm: a fracsight predictions file matched to the reader study's cases.

The AI's binary call at an operating point is probability >= threshold. The threshold is
given explicitly, or read from a model card (by default the shipped model's
``fracsight/models/default.card.json``), whose 'fracture' threshold is the primary
operating point and 'doubt' a second, more sensitive one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fracsight.decide import OperatingPoint
from fracsight.model_card import ModelCard, default_card_path
from fracsight.reader_study.data import CASE_COLUMNS
from fracsight.reader_study.errors import BadValue, MissingAIPrediction, MissingColumn, ReaderStudyError
from fracsight.reader_study.table import find_column, line_list, read_rows

log = logging.getLogger(__name__)

# The same spellings as the reads file, so one "Case ID" header works for both files.
ID_COLUMNS = CASE_COLUMNS
PATH_COLUMNS = ("path", "file", "image")
PRIMARY_OPERATING_POINT = "fracture"


@dataclass(frozen=True)
class AIPredictions:
    """AI probabilities aligned to the study's case order, with its operating points."""

    probability: np.ndarray  # (cases,)
    operating_points: tuple[OperatingPoint, ...]  # the first is the primary one, used in comparisons
    threshold_source: str
    source: str
    model_id: str | None

    @property
    def primary(self) -> OperatingPoint | None:
        return self.operating_points[0] if self.operating_points else None

    def calls(self, point: OperatingPoint | None = None) -> np.ndarray:
        """0/1 calls at ``point`` (default: the primary operating point)."""
        point = point or self.primary
        if point is None:
            raise ReaderStudyError(
                f"{self.source}: no AI threshold: give --ai-threshold (or --ai-card with a model card) "
                "to compare sensitivity or specificity with the AI"
            )
        return (self.probability >= point.threshold).astype(float)


def load_ai_predictions(
    path: str | Path,
    case_ids: tuple[str, ...],
    *,
    threshold: float | None = None,
    card: str | Path | None = None,
) -> AIPredictions:
    """Read a predictions CSV (``case_id`` or ``path``, ``probability``) for the study's cases.

    Rows with an ``error`` or without a probability count as missing. Every study case
    must have one probability; rows for other cases are ignored.
    """
    path = Path(path)
    header, rows = read_rows(path)
    id_col = find_column(header, ID_COLUMNS, path, required=False)
    path_col = None if id_col else find_column(header, PATH_COLUMNS, path, required=False)
    if id_col is None and path_col is None:
        raise MissingColumn(
            f"{path}: no case column ({' or '.join(map(repr, ID_COLUMNS))}) and no image column "
            f"({' or '.join(map(repr, PATH_COLUMNS))}) to match predictions to cases "
            f"(columns present: {', '.join(header)})"
        )
    prob_col = find_column(header, ("probability",), path, required=True)
    error_col = find_column(header, ("error",), path, required=False)

    by_case: dict[str, float] = {}
    bad: list[str] = []
    conflicts: list[str] = []
    for line, row in enumerate(rows, start=2):
        case = row[id_col] if id_col else Path(row[path_col]).stem  # type: ignore[index]
        if (error_col and row[error_col]) or not row[prob_col]:
            continue
        try:
            value = float(row[prob_col])
        except ValueError:
            value = math.nan
        if not (0.0 <= value <= 1.0):
            bad.append(f"line {line}: {row[prob_col]!r}")
            continue
        if case in by_case and by_case[case] != value:
            conflicts.append(repr(case))
        by_case[case] = value
    if bad:
        raise BadValue(
            f"{path}: column 'probability' has {len(bad)} value(s) outside [0, 1] or not numbers "
            f"({line_list(bad)})"
        )
    if conflicts:
        raise BadValue(
            f"{path}: {len(conflicts)} case(s) have two different probabilities ({line_list(conflicts)})"
        )
    missing = [c for c in case_ids if c not in by_case]
    if missing:
        how = f"column {id_col!r}" if id_col else f"the file stem of column {path_col!r}"
        raise MissingAIPrediction(
            f"{path}: no usable AI probability for {len(missing)} of {len(case_ids)} study cases "
            f"({line_list(missing)}); cases are matched by {how}, and rows with an error are not usable"
        )
    extra = len(set(by_case) - set(case_ids))
    if extra:
        log.info("%s: %d prediction rows are for cases not in the reader study; ignored", path, extra)
    points, source, model_id = _operating_points(threshold, card)
    return AIPredictions(
        probability=np.array([by_case[c] for c in case_ids]),
        operating_points=points,
        threshold_source=source,
        source=str(path),
        model_id=model_id,
    )


def _operating_points(
    threshold: float | None, card: str | Path | None
) -> tuple[tuple[OperatingPoint, ...], str, str | None]:
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise BadValue(f"AI threshold {threshold} is outside [0, 1]")
        return (
            (OperatingPoint("given", float(threshold)),),
            "given on the command line (--ai-threshold)",
            None,
        )
    card_path = Path(card) if card is not None else default_card_path()
    if not card_path.is_file():
        if card is not None:
            raise FileNotFoundError(f"{card_path}: no such model card")
        log.warning(
            "no --ai-threshold and no default model card at %s: AI sensitivity/specificity unavailable",
            card_path,
        )
        return (), f"none: no --ai-threshold given and {card_path} is absent", None
    model_card = ModelCard.read(card_path)
    thresholds = model_card.thresholds
    names = [PRIMARY_OPERATING_POINT, "doubt"] + sorted(
        n for n in thresholds if n not in (PRIMARY_OPERATING_POINT, "doubt")
    )
    points = tuple(OperatingPoint(n, thresholds[n]) for n in names)
    source = f"model card {card_path}" + (
        f": {model_card['threshold_source']}" if model_card.get("threshold_source") else ""
    )
    return points, source, model_card.model_id
