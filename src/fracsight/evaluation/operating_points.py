"""Operating points: thresholds on the probability where the model's categories change.

A model has two named operating points (see :mod:`fracsight.decide`, which owns them):

* ``doubt``: the high-sensitivity threshold; below it the answer is "no fracture", so it
  is chosen for a target *sensitivity* (few missed fractures).
* ``fracture``: the high-specificity threshold; at or above it the answer is "fracture",
  so it is chosen for a target *specificity* (few false alarms).

Between the two lies "doubt: look again". Thresholds are chosen on a site's own
validation predictions; the achieved sensitivity and specificity are reported with
Wilson CIs. They are measured on the same cases used to choose the threshold, so they
are slightly optimistic: confirm them on independent cases with ``fracsight evaluate``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fracsight.decide import OperatingPoint, OperatingPointName
from fracsight.evaluation.metrics import CONFIDENCE, BinaryRates, binary_rates, check_scores_labels

__all__ = [
    "OperatingPointName",
    "OperatingPoint",
    "ChosenThreshold",
    "ThresholdChoice",
    "threshold_for_sensitivity",
    "threshold_for_specificity",
    "choose_thresholds",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChosenThreshold:
    """A threshold chosen for a target rate, with what it achieved on the data used to choose it."""

    name: OperatingPointName
    target_metric: str  # "sensitivity" or "specificity"
    target: float
    threshold: float
    rates: BinaryRates

    def achieved(self):
        """The Estimate of the targeted rate (sensitivity or specificity) at the chosen threshold."""
        return getattr(self.rates, self.target_metric)

    def to_dict(self) -> dict:
        return {
            "name": self.name.value,
            "target_metric": self.target_metric,
            "target": self.target,
            "threshold": self.threshold,
            "achieved": self.achieved().to_dict(),
            "rates": self.rates.to_dict(),
        }


@dataclass(frozen=True)
class ThresholdChoice:
    """Both operating points chosen on one validation set."""

    doubt: ChosenThreshold
    fracture: ChosenThreshold
    n: int
    n_positive: int
    collapsed: bool  # True when both targets were met by one threshold (no "doubt" band)

    def thresholds(self) -> dict[str, float]:
        return {"fracture": self.fracture.threshold, "doubt": self.doubt.threshold}

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "n_positive": self.n_positive,
            "collapsed": self.collapsed,
            "doubt": self.doubt.to_dict(),
            "fracture": self.fracture.to_dict(),
        }


def _check_target(name: str, target: float) -> None:
    if not 0.0 < target <= 1.0 or math.isnan(target):
        raise ValueError(f"target {name} {target!r} must be in (0, 1]")


def threshold_for_sensitivity(scores: np.ndarray, labels: np.ndarray, target: float) -> float:
    """A threshold whose sensitivity (score >= threshold) is at least ``target``, as high as possible.

    With k = ceil(target * n_positive), the k-th highest score of a fractured case must stay at
    or above it. The threshold sits halfway between that score and the next lower score of
    any case, so every case falls on the same side as on the data, and a score written with
    a few decimals (``fracsight predict``) and rounded up cannot slip below it at run time.
    """
    _check_target("sensitivity", target)
    s, y = check_scores_labels(scores, labels)
    positives = np.sort(s[y == 1])[::-1]
    k = math.ceil(target * positives.size - 1e-9)
    kth = positives[max(k, 1) - 1]
    below = s[s < kth]
    return float((kth + below.max()) / 2) if below.size else float(kth)


def threshold_for_specificity(scores: np.ndarray, labels: np.ndarray, target: float) -> float:
    """A threshold whose specificity (score < threshold) is at least ``target``, as low as possible.

    With k = ceil(target * n_negative), the k lowest non-fractured scores must fall below
    it: it sits halfway between the k-th lowest one and the next higher score of any case
    (or just above it when there is none), so every case falls on the same side as on the data.
    When the k-th lowest is already 1, no threshold a model card allows (<= 1) reaches the
    target: that is an error, not a threshold above 1 that no model could load.
    """
    _check_target("specificity", target)
    s, y = check_scores_labels(scores, labels)
    negatives = np.sort(s[y == 0])
    k = math.ceil(target * negatives.size - 1e-9)
    kth = negatives[max(k, 1) - 1]
    if kth >= 1.0:
        at_one = int(np.sum(negatives >= 1.0))
        raise ValueError(
            f"target specificity {target} cannot be reached: {at_one} of the {negatives.size} non-fractured "
            "cases have probability 1, which every threshold <= 1 calls fractured; lower the target"
        )
    above = s[s > kth]
    return float((kth + above.min()) / 2) if above.size else float(np.nextafter(kth, np.inf))


def choose_thresholds(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    target_sensitivity: float,
    target_specificity: float,
    level: float = CONFIDENCE,
) -> ThresholdChoice:
    """Choose the ``doubt`` threshold for a target sensitivity and ``fracture`` for a target specificity.

    If one threshold meets both targets (the doubt threshold would lie above the
    fracture threshold), both are set to the specificity threshold, which keeps the
    sensitivity target too and leaves no "doubt" band; ``collapsed`` says so.
    """
    s, y = check_scores_labels(scores, labels)
    doubt = threshold_for_sensitivity(s, y, target_sensitivity)
    fracture = threshold_for_specificity(s, y, target_specificity)
    collapsed = doubt > fracture
    if collapsed:
        log.info(
            "one threshold (%.4g) meets both the sensitivity and the specificity target: no doubt band",
            fracture,
        )
        doubt = fracture

    def chosen(name: OperatingPointName, metric: str, target: float, threshold: float) -> ChosenThreshold:
        return ChosenThreshold(name, metric, target, threshold, binary_rates(s, y, threshold, None, level))

    return ThresholdChoice(
        doubt=chosen(OperatingPointName.DOUBT, "sensitivity", target_sensitivity, doubt),
        fracture=chosen(OperatingPointName.FRACTURE, "specificity", target_specificity, fracture),
        n=int(y.size),
        n_positive=int(y.sum()),
        collapsed=collapsed,
    )
