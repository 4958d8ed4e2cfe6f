"""Errors for evaluation inputs: each message names the file, the column, the rule and the rows."""

from __future__ import annotations

from collections.abc import Sequence


class EvaluationInputError(ValueError):
    """An input to an evaluation (predictions, labels, split, model card) breaks a rule."""


class PredictionsError(EvaluationInputError):
    """The predictions file is unusable: missing column, missing ids, NaN or out-of-range probabilities."""


class LabelsError(EvaluationInputError):
    """The labels file (or dataset) is unusable: missing column, unknown label spelling or group column."""


class SingleClassError(LabelsError):
    """Only one class remains to evaluate: ROC, sensitivity and specificity need both."""


def describe_lines(lines: Sequence[int], limit: int = 10) -> str:
    """'line 4' / 'lines 4, 9, 12' / 'lines 4, 9, ... and 30 more' (file line numbers, header = line 1)."""
    if len(lines) == 1:
        return f"line {lines[0]}"
    shown = ", ".join(str(n) for n in lines[:limit])
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return f"lines {shown}{more}"


def describe_ids(ids: Sequence[str], limit: int = 10) -> str:
    """A short list of ids for a message: 'a, b, c and 12 more'."""
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
