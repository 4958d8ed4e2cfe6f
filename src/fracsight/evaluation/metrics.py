"""Discrimination statistics with confidence intervals: ROC, AUC (DeLong and bootstrap), and rates.

Pure functions on arrays (``scores``: probabilities, ``labels``: 1 = fractured, 0 = not).
A case is called positive when its score is ``>= threshold``, the same rule the model
uses for its categories.

Methods (so a reader of a report can check them):

* AUC is the Mann-Whitney statistic, ties between a positive and a negative counting
  one half (equal to the trapezoidal area under the empirical ROC curve).
* DeLong variance uses the midrank algorithm of Sun & Xu (IEEE Signal Processing
  Letters 21(11), 2014): O(n log n); the CI is AUC +/- z * SE, clipped to [0, 1]. When
  SE is 0 (AUC exactly 0 or 1, or all scores tied) no CI is given rather than a zero-width
  one; the same for a bootstrap whose resamples all give one AUC.
* Bootstrap CIs resample positives and negatives separately (stratified, so every
  resample has both classes and the same prevalence) with a fixed seed; percentile
  intervals.
* Proportions (sensitivity, specificity, PPV, NPV) use the Wilson score interval,
  which keeps its coverage for small n and for proportions near 0 or 1.
* PPV/NPV at a stated prevalence follow from Bayes' rule. Both are increasing in
  sensitivity and specificity, so evaluating them at the lower (upper) ends of the two
  Wilson intervals bounds them from below (above). Each of those two intervals is taken
  at level sqrt(0.95) (Sidak), so both hold together with probability >= 95% (positives
  and negatives are independent samples): the interval is conservative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "Estimate",
    "AucResult",
    "RocCurve",
    "BinaryRates",
    "PredictiveValues",
    "check_scores_labels",
    "roc_curve",
    "roc_auc",
    "delong_variance",
    "delong_ci",
    "stratified_bootstrap_indices",
    "bootstrap_auc",
    "auc_with_ci",
    "roc_confidence_band",
    "wilson_interval",
    "proportion",
    "confusion_at_threshold",
    "binary_rates",
    "predictive_values_at_prevalence",
    "z_for_level",
]

CONFIDENCE = 0.95
DEGENERATE = "no variation to estimate it from (e.g. AUC exactly 0 or 1, or every score tied)"


@dataclass(frozen=True)
class Estimate:
    """A number with its confidence interval and how both were obtained.

    ``k``/``n`` are the counts behind a proportion (``n`` = denominator); ``value`` is None
    when the quantity is undefined (e.g. PPV with no positive calls).
    """

    value: float | None
    lower: float | None
    upper: float | None
    method: str
    level: float = CONFIDENCE
    k: int | None = None
    n: int | None = None

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None or key == "value"}


@dataclass(frozen=True)
class RocCurve:
    """Empirical ROC: one point per distinct score, from (0, 0) to (1, 1); thresholds[0] is +inf."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray

    def tpr_at(self, fpr_grid: np.ndarray) -> np.ndarray:
        """TPR at given FPRs, linear between points (random tie-breaking): vertical averaging."""
        return _interpolate_roc(self.fpr, self.tpr, np.asarray(fpr_grid, dtype=float))


@dataclass(frozen=True)
class AucResult:
    """ROC AUC with a DeLong CI and, when computed, a bootstrap CI."""

    value: float
    n_positive: int
    n_negative: int
    delong: Estimate
    bootstrap: Estimate | None = None

    def to_dict(self) -> dict:
        out = {"value": self.value, "n_positive": self.n_positive, "n_negative": self.n_negative}
        out["delong"] = self.delong.to_dict()
        out["bootstrap"] = self.bootstrap.to_dict() if self.bootstrap else None
        return out


@dataclass(frozen=True)
class PredictiveValues:
    """PPV and NPV expected at a stated prevalence (not the one in the evaluation data)."""

    prevalence: float
    ppv: Estimate
    npv: Estimate

    def to_dict(self) -> dict:
        return {"prevalence": self.prevalence, "ppv": self.ppv.to_dict(), "npv": self.npv.to_dict()}


@dataclass(frozen=True)
class BinaryRates:
    """The 2x2 table at one threshold and the four rates, each with its Wilson CI."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: Estimate
    specificity: Estimate
    ppv: Estimate
    npv: Estimate
    at_prevalence: PredictiveValues | None = None

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "confusion": {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn},
            "sensitivity": self.sensitivity.to_dict(),
            "specificity": self.specificity.to_dict(),
            "ppv": self.ppv.to_dict(),
            "npv": self.npv.to_dict(),
            "at_prevalence": self.at_prevalence.to_dict() if self.at_prevalence else None,
        }


def z_for_level(level: float) -> float:
    """Two-sided standard-normal quantile for a confidence level (1.96 for 0.95)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level {level!r} is outside (0, 1)")
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


def check_scores_labels(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple:
    """Validate and convert: equal lengths, finite scores, labels exactly 0/1, both classes present."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores (shape {s.shape}) and labels (shape {y.shape}) must be 1-D of equal length")
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise ValueError(f"scores has {bad.size} non-finite values (indices {_first(bad)})")
    not_binary = np.flatnonzero((y != 0) & (y != 1))
    if not_binary.size:
        raise ValueError(f"labels has {not_binary.size} values other than 0/1 (indices {_first(not_binary)})")
    y = y.astype(np.int8)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "positive (1)" if n_pos else "negative (0)"
        raise ValueError(f"labels are all {only} ({y.size} cases): ROC analysis needs both classes")
    return s, y


def _first(indices: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    return shown + (f" and {indices.size - limit} more" if indices.size > limit else "")


def roc_curve(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> RocCurve:
    """Empirical ROC curve with one point per distinct score (tied scores move together)."""
    s, y = check_scores_labels(scores, labels)
    fpr, tpr = _roc_points(s, y)
    distinct = np.unique(s)[::-1]  # the same order as the points: one per distinct score, highest first
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=np.r_[np.inf, distinct])


def _interpolate_roc(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray) -> np.ndarray:
    index = np.searchsorted(fpr, grid, side="right") - 1
    index = np.clip(index, 0, fpr.size - 1)
    nxt = np.minimum(index + 1, fpr.size - 1)
    span = fpr[nxt] - fpr[index]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(span > 0, (grid - fpr[index]) / span, 0.0)
    return tpr[index] + frac * (tpr[nxt] - tpr[index])


def _midranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values, method="average")


def _delong_components(s: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and the structural components V10 (per positive) and V01 (per negative), Sun & Xu 2014."""
    x = s[y == 1]
    z = s[y == 0]
    m, n = x.size, z.size
    tx = _midranks(x)
    tz = _midranks(z)
    t_all = _midranks(np.r_[x, z])
    auc = (t_all[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (t_all[:m] - tx) / n  # for each positive: fraction of negatives below it (ties 1/2)
    v01 = 1.0 - (t_all[m:] - tz) / m  # for each negative: fraction of positives above it
    return float(auc), v10, v01


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the empirical ROC curve (Mann-Whitney, ties count 1/2)."""
    s, y = check_scores_labels(scores, labels)
    return _delong_components(s, y)[0]


def delong_variance(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple:
    """(AUC, variance of the AUC estimate) by DeLong's method; needs >= 2 cases of each class."""
    s, y = check_scores_labels(scores, labels)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos < 2 or n_neg < 2:
        raise ValueError(
            f"DeLong variance needs at least 2 positives and 2 negatives, got {n_pos} and {n_neg}"
        )
    auc, v10, v01 = _delong_components(s, y)
    variance = float(np.var(v10, ddof=1) / n_pos + np.var(v01, ddof=1) / n_neg)
    return auc, variance


def delong_ci(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, level: float = CONFIDENCE
) -> Estimate:
    """AUC with a DeLong (Wald) CI, clipped to [0, 1]; no CI when the variance is 0.

    A zero variance (AUC exactly 0 or 1, or every score tied) would give a zero-width
    interval that claims certainty the data cannot give, so the bounds are left out.
    """
    auc, variance = delong_variance(scores, labels)
    if variance <= 0.0:
        return Estimate(
            value=auc, lower=None, upper=None, method=f"no CI: {DEGENERATE} (DeLong variance 0)", level=level
        )
    half = z_for_level(level) * math.sqrt(variance)
    return Estimate(
        value=auc,
        lower=max(0.0, auc - half),
        upper=min(1.0, auc + half),
        method="DeLong (Sun & Xu midrank algorithm), Wald interval clipped to [0, 1]",
        level=level,
    )


def stratified_bootstrap_indices(
    labels: np.ndarray, n_resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resampled row indices (positives, negatives), each of shape (n_resamples, class size).

    Stratifying keeps both classes in every resample and the prevalence fixed, which is
    what a case-control style evaluation set has.
    """
    if n_resamples < 1:
        raise ValueError(f"number of bootstrap resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(labels == 1)
    neg = np.flatnonzero(labels == 0)
    pos_idx = pos[rng.integers(0, pos.size, size=(n_resamples, pos.size))]
    neg_idx = neg[rng.integers(0, neg.size, size=(n_resamples, neg.size))]
    return pos_idx, neg_idx


def _batched_auc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> np.ndarray:
    """AUC of each row of (B, m) positive and (B, n) negative score arrays, via midranks."""
    from scipy.stats import rankdata

    m, n = pos_scores.shape[1], neg_scores.shape[1]
    ranks = rankdata(np.concatenate([pos_scores, neg_scores], axis=1), method="average", axis=1)
    return (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)


def bootstrap_auc(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = CONFIDENCE,
) -> tuple[Estimate, np.ndarray]:
    """AUC with a stratified percentile-bootstrap CI; also returns the resampled AUCs."""
    s, y = check_scores_labels(scores, labels)
    pos_idx, neg_idx = stratified_bootstrap_indices(y, n_resamples, seed)
    aucs = np.empty(n_resamples)
    chunk = max(1, 4_000_000 // y.size)  # bound memory of the rank matrix
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        aucs[start:stop] = _batched_auc(s[pos_idx[start:stop]], s[neg_idx[start:stop]])
    alpha = (1 - level) / 2
    lower, upper = np.quantile(aucs, [alpha, 1 - alpha])
    method = f"stratified bootstrap, {n_resamples} resamples, seed {seed}, percentile interval"
    if aucs.min() == aucs.max():  # every resample the same: a zero-width interval would claim certainty
        lower = upper = None
        method = f"no CI: {DEGENERATE} (every bootstrap resample gives the same AUC)"
    estimate = Estimate(
        value=roc_auc(s, y),
        lower=None if lower is None else float(lower),
        upper=None if upper is None else float(upper),
        method=method,
        level=level,
    )
    return estimate, aucs


def _roc_points(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last_of_each]
    fps = (last_of_each + 1) - tps
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def roc_confidence_band(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    fpr_grid: np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = CONFIDENCE,
) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile band of TPR at each FPR of ``fpr_grid`` over stratified bootstrap resamples.

    Pointwise: each FPR's interval holds with the stated level on its own, not the whole
    curve at once. Uses the same resamples (same seed) as :func:`bootstrap_auc`.
    """
    s, y = check_scores_labels(scores, labels)
    grid = np.asarray(fpr_grid, dtype=float)
    pos_idx, neg_idx = stratified_bootstrap_indices(y, n_resamples, seed)
    ones, zeros = np.ones(pos_idx.shape[1], np.int8), np.zeros(neg_idx.shape[1], np.int8)
    yy = np.r_[ones, zeros]
    curves = np.empty((n_resamples, grid.size))
    for b in range(n_resamples):
        fpr, tpr = _roc_points(np.r_[s[pos_idx[b]], s[neg_idx[b]]], yy)
        curves[b] = _interpolate_roc(fpr, tpr, grid)
    alpha = (1 - level) / 2
    lower, upper = np.quantile(curves, [alpha, 1 - alpha], axis=0)
    return lower, upper


def auc_with_ci(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    n_resamples: int = 0,
    seed: int = 0,
    level: float = CONFIDENCE,
) -> AucResult:
    """AUC with its DeLong CI, plus a bootstrap CI when ``n_resamples`` > 0."""
    s, y = check_scores_labels(scores, labels)
    delong = delong_ci(s, y, level)
    boot = bootstrap_auc(s, y, n_resamples, seed, level)[0] if n_resamples > 0 else None
    return AucResult(
        value=float(delong.value),
        n_positive=int(y.sum()),
        n_negative=int(y.size - y.sum()),
        delong=delong,
        bootstrap=boot,
    )


def wilson_interval(k: int, n: int, level: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (no continuity correction)."""
    if n <= 0:
        raise ValueError(f"Wilson interval needs n >= 1, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"Wilson interval needs 0 <= k <= n, got k={k}, n={n}")
    z = z_for_level(level)
    p = k / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0/n and n/n the bound is exactly 0 (1); rounding must not leave the estimate outside its CI.
    lower = 0.0 if k == 0 else max(0.0, center - half)
    upper = 1.0 if k == n else min(1.0, center + half)
    return lower, upper


def proportion(k: int, n: int, level: float = CONFIDENCE) -> Estimate:
    """k/n with its Wilson CI; value None (undefined) when n == 0."""
    if n == 0:
        return Estimate(None, None, None, "undefined: no cases in the denominator", level, k=k, n=n)
    lower, upper = wilson_interval(k, n, level)
    return Estimate(k / n, lower, upper, "Wilson score interval", level, k=k, n=n)


def confusion_at_threshold(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float
) -> tuple[int, int, int, int]:
    """(tp, fp, tn, fn) calling a case positive when score >= threshold."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels).astype(bool)
    called = s >= threshold
    tp = int(np.sum(called & y))
    fp = int(np.sum(called & ~y))
    tn = int(np.sum(~called & ~y))
    fn = int(np.sum(~called & y))
    return tp, fp, tn, fn


def _ppv(sens: float, spec: float, prevalence: float) -> float:
    true_pos = sens * prevalence
    false_pos = (1 - spec) * (1 - prevalence)
    return true_pos / (true_pos + false_pos) if true_pos + false_pos > 0 else float("nan")


def _npv(sens: float, spec: float, prevalence: float) -> float:
    true_neg = spec * (1 - prevalence)
    false_neg = (1 - sens) * prevalence
    return true_neg / (true_neg + false_neg) if true_neg + false_neg > 0 else float("nan")


def predictive_values_at_prevalence(
    tp: int, fp: int, tn: int, fn: int, prevalence: float, level: float = CONFIDENCE
) -> PredictiveValues:
    """PPV and NPV at a stated prevalence, by Bayes' rule, with conservative CIs (see module doc)."""
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence {prevalence!r} must be strictly between 0 and 1")
    n_pos, n_neg = tp + fn, tn + fp
    method = "Bayes' rule from sensitivity and specificity; CI from their Sidak-adjusted Wilson bounds"
    if n_pos == 0 or n_neg == 0:
        undefined = Estimate(
            None, None, None, "undefined: needs both fractured and non-fractured cases", level
        )
        return PredictiveValues(prevalence, undefined, undefined)
    sens, spec = tp / n_pos, tn / n_neg
    joint = math.sqrt(level)  # two independent intervals, both holding with probability `level`
    sens_lo, sens_hi = wilson_interval(tp, n_pos, joint)
    spec_lo, spec_hi = wilson_interval(tn, n_neg, joint)

    def estimate(func) -> Estimate:
        value = func(sens, spec, prevalence)
        low = func(sens_lo, spec_lo, prevalence)
        high = func(sens_hi, spec_hi, prevalence)
        if math.isnan(value):
            return Estimate(None, None, None, "undefined at this prevalence", level)
        return Estimate(
            value, None if math.isnan(low) else low, None if math.isnan(high) else high, method, level
        )

    return PredictiveValues(prevalence, estimate(_ppv), estimate(_npv))


def binary_rates(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    threshold: float,
    prevalence: float | None = None,
    level: float = CONFIDENCE,
) -> BinaryRates:
    """Sensitivity, specificity, PPV and NPV at ``threshold``, each with a Wilson CI.

    PPV and NPV here are at the prevalence of the evaluation data; pass ``prevalence``
    to also get them at the prevalence of the population where the model will be used.
    """
    tp, fp, tn, fn = confusion_at_threshold(scores, labels, threshold)
    return BinaryRates(
        threshold=float(threshold),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        sensitivity=proportion(tp, tp + fn, level),
        specificity=proportion(tn, tn + fp, level),
        ppv=proportion(tp, tp + fp, level),
        npv=proportion(tn, tn + fn, level),
        at_prevalence=(
            predictive_values_at_prevalence(tp, fp, tn, fn, prevalence, level)
            if prevalence is not None
            else None
        ),
    )
