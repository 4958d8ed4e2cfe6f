"""Results broken down by a column (body region, view, hardware...), with n in every cell.

The "too small" rule: a rate estimated from fewer than 10 cases is not shown as a
number. Sensitivity needs at least 10 fractured cases in the cell, specificity at least
10 non-fractured cases, and AUC, PPV and NPV (which rest on both classes) both. Below
that the cell says how many cases it has and that this is too few; the raw counts stay
in metrics.json. (With 9 cases a Wilson 95% CI on a sensitivity of 9/9 still runs from
0.70 to 1.0: too wide to tell a clinician anything, and too easily read as "100%".)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fracsight.evaluation.inputs import MISSING_VALUE, CaseTable
from fracsight.evaluation.metrics import CONFIDENCE, AucResult, BinaryRates, auc_with_ci, binary_rates
from fracsight.evaluation.operating_points import OperatingPoint

__all__ = ["MIN_POSITIVES", "MIN_NEGATIVES", "SMALL_CELL_RULE", "GroupCell", "GroupTable", "group_table"]

MIN_POSITIVES = 10
MIN_NEGATIVES = 10
SMALL_CELL_RULE = (
    f"values from fewer than {MIN_POSITIVES} fractured cases (sensitivity, AUC, PPV, NPV) or fewer "
    f"than {MIN_NEGATIVES} non-fractured cases (specificity, AUC, PPV, NPV) are withheld as too few "
    "to say anything"
)


@dataclass(frozen=True)
class GroupCell:
    """Results for the cases where ``column`` equals ``value``."""

    column: str
    value: str
    n: int
    n_positive: int
    n_negative: int
    auc: AucResult | None  # None when withheld
    rates: dict[str, BinaryRates]  # by operating point name
    enough_positives: bool
    enough_negatives: bool

    @property
    def too_small(self) -> bool:
        return not (self.enough_positives and self.enough_negatives)

    def warning(self) -> str | None:
        """Why values are withheld in this cell, in words; None when nothing is."""
        if not self.too_small:
            return None
        parts = []
        if not self.enough_positives:
            parts.append(
                f"{self.n_positive} fractured (< {MIN_POSITIVES}): sensitivity, AUC, PPV and NPV withheld"
            )
        if not self.enough_negatives:
            parts.append(
                f"{self.n_negative} non-fractured (< {MIN_NEGATIVES}): specificity, AUC, PPV and NPV withheld"
            )
        return f"{self.column} = {self.value}: too few cases; " + "; ".join(parts)

    def to_dict(self) -> dict:
        rates = {}
        for name, r in self.rates.items():
            entry = r.to_dict()
            if not self.enough_positives:
                entry["sensitivity"] = {"withheld": f"only {self.n_positive} fractured cases"}
            if not self.enough_negatives:
                entry["specificity"] = {"withheld": f"only {self.n_negative} non-fractured cases"}
            if self.too_small:  # PPV and NPV rest on both classes (at a stated prevalence: on sens and spec)
                why = {
                    "withheld": f"only {self.n_positive} fractured and {self.n_negative} non-fractured cases"
                }
                entry["ppv"], entry["npv"] = dict(why), dict(why)
                if entry.get("at_prevalence"):
                    entry["at_prevalence"] = {**entry["at_prevalence"], "ppv": dict(why), "npv": dict(why)}
            rates[name] = entry
        return {
            "value": self.value,
            "n": self.n,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "too_small": self.too_small,
            "warning": self.warning(),
            "auc": self.auc.to_dict() if self.auc else None,
            "operating_points": rates,
        }


@dataclass(frozen=True)
class GroupTable:
    """One breakdown: a cell per distinct value of ``column``."""

    column: str
    cells: list[GroupCell]

    def to_dict(self) -> dict:
        return {"column": self.column, "rule": SMALL_CELL_RULE, "cells": [c.to_dict() for c in self.cells]}


def _order(values: Sequence[str]) -> list[str]:
    def key(value: str) -> tuple:
        if value == MISSING_VALUE:
            return (2, 0.0, value)
        try:
            return (0, float(value), value)
        except ValueError:
            return (1, 0.0, value)

    return sorted(set(values), key=key)


def group_table(
    cases: CaseTable,
    column: str,
    operating_points: Sequence[OperatingPoint],
    prevalence: float | None = None,
    level: float = CONFIDENCE,
) -> GroupTable:
    """Per-value AUC (DeLong CI) and rates at each operating point (Wilson CIs), small cells withheld."""
    if column not in cases.groups:
        raise ValueError(f"column {column!r} is not among the grouping columns {list(cases.groups)}")
    values = np.asarray(cases.groups[column], dtype=object)
    cells = []
    for value in _order(cases.groups[column]):
        mask = values == value
        y = cases.labels[mask]
        p = cases.probabilities[mask]
        n_pos = int(y.sum())
        n_neg = int(y.size - n_pos)
        enough_pos, enough_neg = n_pos >= MIN_POSITIVES, n_neg >= MIN_NEGATIVES
        auc = auc_with_ci(p, y, level=level) if enough_pos and enough_neg else None
        rates = {op.name: binary_rates(p, y, op.threshold, prevalence, level) for op in operating_points}
        cells.append(
            GroupCell(column, str(value), int(y.size), n_pos, n_neg, auc, rates, enough_pos, enough_neg)
        )
    return GroupTable(column, cells)
