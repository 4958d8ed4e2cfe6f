"""Calibration: does a probability of 0.3 mean a fracture in about 3 of 10 such cases?

* Reliability bins: equal-width bins of predicted probability; per bin the mean
  prediction and the observed fraction of fractures with its Wilson CI.
* Brier score: mean squared difference between probability and outcome (0 is perfect).
* Expected calibration error (ECE): bin-size-weighted mean |observed - predicted| over
  the reliability bins (it depends on the binning, which is therefore reported).
* Temperature scaling: probability = sigmoid(logit / T). One parameter, fitted by
  maximum likelihood on validation data; it changes calibration but never the ranking
  of cases (so not the ROC curve or AUC).

Prediction files hold probabilities, not logits. With the temperature ``T0`` that
produced them, the network's raw logit is ``T0 * logit(p)``; probabilities are clipped
to [1e-7, 1 - 1e-7] first so that a rounded 0 or 1 gives a large finite logit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fracsight.evaluation.metrics import CONFIDENCE, Estimate, proportion, stratified_bootstrap_indices

__all__ = [
    "ReliabilityBin",
    "CalibrationSummary",
    "TemperatureFit",
    "TemperatureFitError",
    "reliability_bins",
    "brier_score",
    "expected_calibration_error",
    "calibration_summary",
    "logits_from_probabilities",
    "fit_temperature",
]

PROBABILITY_CLIP = 1e-7
TEMPERATURE_BOUNDS = (0.01, 100.0)


class TemperatureFitError(ValueError):
    """The temperature could not be estimated from the data given (e.g. perfectly separated classes)."""


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of the reliability curve: predicted range, n, mean prediction, observed rate (Wilson CI)."""

    low: float
    high: float
    n: int
    mean_predicted: float | None
    observed: Estimate

    def to_dict(self) -> dict:
        return {
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "mean_predicted": self.mean_predicted,
            "observed": self.observed.to_dict(),
        }


@dataclass(frozen=True)
class CalibrationSummary:
    """Reliability bins, Brier score and ECE (each score with a bootstrap CI) on n cases."""

    n: int
    n_positive: int
    bins: list[ReliabilityBin]
    brier: Estimate
    ece: Estimate

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "n_positive": self.n_positive,
            "n_bins": len(self.bins),
            "binning": "equal-width bins of predicted probability over [0, 1]",
            "brier": self.brier.to_dict(),
            "ece": self.ece.to_dict(),
            "bins": [b.to_dict() for b in self.bins],
        }


@dataclass(frozen=True)
class TemperatureFit:
    """Fitted temperature and how much it improved the validation negative log-likelihood."""

    temperature: float
    n: int
    n_positive: int
    nll_before: float
    nll_after: float
    previous_temperature: float

    def to_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "previous_temperature": self.previous_temperature,
            "n": self.n,
            "n_positive": self.n_positive,
            "nll_before": self.nll_before,
            "nll_after": self.nll_after,
            "method": "maximum likelihood of sigmoid(logit / T) on the validation cases (1-D bounded search)",
        }


def _as_arrays(probabilities: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple:
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(labels)
    if p.ndim != 1 or p.shape != y.shape or p.size == 0:
        raise ValueError(
            f"probabilities (shape {p.shape}) and labels (shape {y.shape}) must be 1-D, equal, non-empty"
        )
    outside = np.flatnonzero(~((p >= 0) & (p <= 1)))
    if outside.size:
        raise ValueError(
            f"{outside.size} probabilities are outside [0, 1] or NaN (indices {outside[:10].tolist()})"
        )
    not_binary = np.flatnonzero((y != 0) & (y != 1))
    if not_binary.size:
        raise ValueError(
            f"labels has {not_binary.size} values other than 0/1 (indices {not_binary[:10].tolist()})"
        )
    return p, y.astype(float)


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    # Bins [0, 1/k), [1/k, 2/k), ..., [(k-1)/k, 1]: probability 1.0 belongs to the last bin.
    return np.minimum((p * n_bins).astype(int), n_bins - 1)


def reliability_bins(
    probabilities: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    n_bins: int = 10,
    level: float = CONFIDENCE,
) -> list[ReliabilityBin]:
    """Equal-width reliability bins (empty bins kept, with n = 0 and no values)."""
    if n_bins < 1:
        raise ValueError(f"number of calibration bins must be >= 1, got {n_bins}")
    p, y = _as_arrays(probabilities, labels)
    index = _bin_index(p, n_bins)
    bins = []
    for b in range(n_bins):
        inside = index == b
        n = int(inside.sum())
        k = int(y[inside].sum())
        mean_p = float(p[inside].mean()) if n else None
        bins.append(ReliabilityBin(b / n_bins, (b + 1) / n_bins, n, mean_p, proportion(k, n, level)))
    return bins


def brier_score(probabilities: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Mean squared error of the probabilities against 0/1 outcomes."""
    p, y = _as_arrays(probabilities, labels)
    return float(np.mean((p - y) ** 2))


def expected_calibration_error(
    probabilities: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, n_bins: int = 10
) -> float:
    """Sum over equal-width bins of (bin size / n) * |observed rate - mean predicted probability|."""
    p, y = _as_arrays(probabilities, labels)
    return float(_ece_rows(p[None, :], y[None, :], n_bins)[0])


def _ece_rows(p: np.ndarray, y: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE of each row of (B, n) probability and label arrays."""
    rows, n = p.shape
    index = _bin_index(p, n_bins) + n_bins * np.arange(rows)[:, None]
    sum_p = np.bincount(index.ravel(), weights=p.ravel(), minlength=rows * n_bins).reshape(rows, n_bins)
    sum_y = np.bincount(index.ravel(), weights=y.ravel(), minlength=rows * n_bins).reshape(rows, n_bins)
    return np.abs(sum_y - sum_p).sum(axis=1) / n  # |mean_y - mean_p| * size / n == |sum_y - sum_p| / n


def calibration_summary(
    probabilities: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    n_bins: int = 10,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = CONFIDENCE,
) -> CalibrationSummary:
    """Reliability bins, Brier score and ECE, the two scores with stratified percentile-bootstrap CIs."""
    p, y = _as_arrays(probabilities, labels)
    n_pos = int(y.sum())
    brier = brier_score(p, y)
    ece = expected_calibration_error(p, y, n_bins)
    method = f"stratified bootstrap, {n_resamples} resamples, seed {seed}, percentile interval"
    if 0 < n_pos < y.size and n_resamples > 0:
        pos_idx, neg_idx = stratified_bootstrap_indices(y, n_resamples, seed)
        idx = np.concatenate([pos_idx, neg_idx], axis=1)
        alpha = (1 - level) / 2
        briers = np.mean((p[idx] - y[idx]) ** 2, axis=1)
        eces = _ece_rows(p[idx], y[idx], n_bins)
        b_lo, b_hi = np.quantile(briers, [alpha, 1 - alpha])
        e_lo, e_hi = np.quantile(eces, [alpha, 1 - alpha])
        brier_est = Estimate(brier, float(b_lo), float(b_hi), method, level, n=int(y.size))
        ece_est = Estimate(
            ece, float(e_lo), float(e_hi), method + f"; {n_bins} equal-width bins", level, n=y.size
        )
    else:
        reason = "no CI: needs both classes and bootstrap resamples"
        brier_est = Estimate(brier, None, None, reason, level, n=int(y.size))
        ece_est = Estimate(ece, None, None, reason, level, n=int(y.size))
    return CalibrationSummary(
        n=int(y.size),
        n_positive=n_pos,
        bins=reliability_bins(p, y, n_bins, level),
        brier=brier_est,
        ece=ece_est,
    )


def logits_from_probabilities(
    probabilities: Sequence[float] | np.ndarray, temperature: float = 1.0
) -> np.ndarray:
    """The network's raw logits, ``temperature * logit(p)``, from probabilities made at that temperature."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature {temperature!r} must be a positive finite number")
    p = np.clip(np.asarray(probabilities, dtype=float), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return temperature * (np.log(p) - np.log1p(-p))


def _mean_nll(logits: np.ndarray, y: np.ndarray, inverse_t: float) -> float:
    z = logits * inverse_t
    # -log sigmoid(z) = log(1 + e^-z) for positives, -log(1 - sigmoid(z)) = log(1 + e^z) for negatives.
    return float(np.mean(np.where(y == 1, np.logaddexp(0.0, -z), np.logaddexp(0.0, z))))


def fit_temperature(
    logits: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    previous_temperature: float = 1.0,
) -> TemperatureFit:
    """Temperature T minimising the negative log-likelihood of sigmoid(logits / T).

    The NLL is convex in 1/T, so a bounded 1-D search finds the global minimum. A fit
    that ends on the search bound means the data cannot pin T down (e.g. classes
    perfectly separated, where T -> 0 always lowers the NLL): that raises
    :class:`TemperatureFitError` rather than writing an extreme value into a model.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=float)
    y = np.asarray(labels)
    if z.ndim != 1 or z.shape != y.shape or z.size == 0:
        raise ValueError(
            f"logits (shape {z.shape}) and labels (shape {y.shape}) must be 1-D, equal, non-empty"
        )
    if not np.all(np.isfinite(z)):
        raise ValueError(f"logits has {int(np.sum(~np.isfinite(z)))} non-finite values")
    n_pos = int(np.sum(y == 1))
    if n_pos == 0 or n_pos == y.size:
        raise TemperatureFitError(
            f"temperature fitting needs both classes, got {n_pos} positives of {y.size}"
        )
    low, high = TEMPERATURE_BOUNDS
    result = minimize_scalar(
        lambda log_inv_t: _mean_nll(z, y, math.exp(log_inv_t)),
        bounds=(math.log(1 / high), math.log(1 / low)),
        method="bounded",
        options={"xatol": 1e-7},
    )
    temperature = 1.0 / math.exp(result.x)
    if temperature <= low * 1.001 or temperature >= high * 0.999:
        raise TemperatureFitError(
            f"fitted temperature {temperature:.4g} is at the search bound [{low}, {high}]: the "
            f"{y.size} validation cases do not determine it (classes perfectly separated, "
            "or scores uninformative)"
        )
    return TemperatureFit(
        temperature=temperature,
        n=int(y.size),
        n_positive=n_pos,
        nll_before=_mean_nll(z, y, 1.0 / previous_temperature),
        nll_after=_mean_nll(z, y, 1.0 / temperature),
        previous_temperature=previous_temperature,
    )
