"""Figures of merit (AUC, sensitivity, specificity) and their case-sampling covariance.

Every function works on a matrix of scores with one row per "reading" (a reader in a
modality, or the AI) and one column per case, so that the covariance between readings
that share the same cases -- the quantity the Obuchowski-Rockette model is built on --
comes out of one computation.

Covariance methods:
- jackknife: leave one case out, recompute; cov = (n-1)/n * sum of products of deviations.
  For AUC the cases are all cases (as in OR-DBM MRMC and RJafroc); for sensitivity
  only the fractured cases and for specificity only the non-fractured ones, because the
  other cases do not enter the figure and would bias the (n-1)/n factor.
- delong: DeLong, DeLong & Clarke-Pearson (1988) structural components for AUC. For a
  proportion the structural component of a case is its own 0/1 call, and the DeLong
  estimate equals the binomial one, var = p(1-p)/(n-1) (identical to the jackknife).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from fracsight.reader_study.errors import NotEstimable


class FigureOfMerit(str, enum.Enum):
    """What is measured per reading."""

    AUC = "auc"  # empirical (trapezoidal / Mann-Whitney) ROC area, from ratings
    SENSITIVITY = "sensitivity"  # fraction of fractured cases called positive
    SPECIFICITY = "specificity"  # fraction of non-fractured cases called negative

    @property
    def label(self) -> str:
        return {"auc": "ROC AUC", "sensitivity": "sensitivity", "specificity": "specificity"}[self.value]


class CovarianceMethod(str, enum.Enum):
    """How the case-sampling covariance between readings is estimated."""

    JACKKNIFE = "jackknife"
    DELONG = "delong"


@dataclass(frozen=True)
class FomEstimate:
    """Figures of merit of K readings on the same cases, with their K x K covariance."""

    fom: FigureOfMerit
    values: np.ndarray  # (K,)
    covariance: np.ndarray  # (K, K)
    method: CovarianceMethod
    n_cases: int  # cases that enter the figure (all, fractured only or non-fractured only)


def estimate(
    scores: np.ndarray, truth: np.ndarray, fom: FigureOfMerit, method: CovarianceMethod
) -> FomEstimate:
    """Figure of merit of each row of ``scores`` (K x N) and their covariance over cases.

    ``scores`` are ratings for AUC and 0/1 calls for sensitivity and specificity.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    truth = np.asarray(truth).astype(bool)
    if fom is FigureOfMerit.AUC:
        return _auc_estimate(scores, truth, method)
    relevant = truth if fom is FigureOfMerit.SENSITIVITY else ~truth
    hits = scores[:, relevant] if fom is FigureOfMerit.SENSITIVITY else 1.0 - scores[:, relevant]
    n = hits.shape[1]
    if n < 2:
        kind = "fractured" if fom is FigureOfMerit.SENSITIVITY else "non-fractured"
        raise NotEstimable(f"{fom.value} needs at least 2 {kind} cases, got {n}")
    values = hits.mean(axis=1)
    if method is CovarianceMethod.JACKKNIFE:
        leave_one_out = (n * values[:, None] - hits) / (n - 1)
        covariance = _jackknife_covariance(leave_one_out)
    else:
        covariance = np.atleast_2d(np.cov(hits, ddof=1)) / n
    return FomEstimate(fom, values, covariance, method, n)


def _auc_estimate(scores: np.ndarray, truth: np.ndarray, method: CovarianceMethod) -> FomEstimate:
    n1, n0 = int(truth.sum()), int((~truth).sum())
    if n1 < 2 or n0 < 2:
        raise NotEstimable(f"AUC needs at least 2 fractured and 2 non-fractured cases, got {n1} and {n0}")
    v10, v01 = structural_components(scores, truth)
    values = v10.mean(axis=1)
    if method is CovarianceMethod.DELONG:
        covariance = np.atleast_2d(np.cov(v10, ddof=1)) / n1 + np.atleast_2d(np.cov(v01, ddof=1)) / n0
    else:
        # Leaving out one case removes its row (or column) of the Mann-Whitney kernel.
        leave_one_out = np.empty_like(scores)
        leave_one_out[:, truth] = (n1 * values[:, None] - v10) / (n1 - 1)
        leave_one_out[:, ~truth] = (n0 * values[:, None] - v01) / (n0 - 1)
        covariance = _jackknife_covariance(leave_one_out)
    return FomEstimate(FigureOfMerit.AUC, values, covariance, method, n1 + n0)


def structural_components(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placement values: V10 per fractured case (K x n1), V01 per non-fractured (K x n0).

    V10 of a fractured case is the fraction of non-fractured cases it out-scores (ties 1/2);
    V01 of a non-fractured case is the fraction of fractured cases that out-score it.
    Their means both equal the empirical AUC.
    """
    positives, negatives = scores[:, truth], scores[:, ~truth]
    n1, n0 = positives.shape[1], negatives.shape[1]
    v10 = np.empty_like(positives)
    v01 = np.empty_like(negatives)
    for k in range(scores.shape[0]):
        neg_sorted = np.sort(negatives[k])
        below = np.searchsorted(neg_sorted, positives[k], side="left")
        not_above = np.searchsorted(neg_sorted, positives[k], side="right")
        v10[k] = (below + 0.5 * (not_above - below)) / n0
        pos_sorted = np.sort(positives[k])
        below = np.searchsorted(pos_sorted, negatives[k], side="left")
        not_above = np.searchsorted(pos_sorted, negatives[k], side="right")
        v01[k] = (n1 - not_above + 0.5 * (not_above - below)) / n1
    return v10, v01


def _jackknife_covariance(leave_one_out: np.ndarray) -> np.ndarray:
    n = leave_one_out.shape[1]
    deviations = leave_one_out - leave_one_out.mean(axis=1, keepdims=True)
    return (n - 1) / n * (deviations @ deviations.T)


def roc_points(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical ROC curve: (false-positive fraction, true-positive fraction, threshold) per distinct score.

    The curve starts at (0, 0) with an infinite threshold and ends at (1, 1); a case is
    called positive when its score >= threshold.
    """
    scores = np.asarray(scores, dtype=float)
    truth = np.asarray(truth).astype(bool)
    thresholds = np.unique(scores)[::-1]
    tpr = np.array([(scores[truth] >= t).mean() for t in thresholds])
    fpr = np.array([(scores[~truth] >= t).mean() for t in thresholds])
    return (
        np.concatenate([[0.0], fpr]),
        np.concatenate([[0.0], tpr]),
        np.concatenate([[np.inf], thresholds]),
    )
