"""Discrimination statistics against scikit-learn/scipy references, and CI coverage by simulation."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy.stats import binom, binomtest
from sklearn.metrics import confusion_matrix, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from fracsight.evaluation.metrics import (
    auc_with_ci,
    binary_rates,
    bootstrap_auc,
    confusion_at_threshold,
    delong_ci,
    delong_variance,
    predictive_values_at_prevalence,
    roc_auc,
    roc_confidence_band,
    roc_curve,
    wilson_interval,
)


def _random_data(seed: int, n: int = 400, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = rng.normal(0.9 * y, 1.0)
    if ties:
        s = np.round(s, 1)  # many tied scores, across classes
    return s, y


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_auc_and_roc_match_sklearn(seed: int, ties: bool) -> None:
    s, y = _random_data(seed, ties=ties)
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    curve = roc_curve(s, y)
    fpr, tpr, thr = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)
    np.testing.assert_allclose(curve.thresholds[1:], thr[1:])
    # Trapezoidal area under the curve is the same AUC (ties count one half).
    assert np.trapezoid(curve.tpr, curve.fpr) == pytest.approx(roc_auc(s, y), abs=1e-12)


def _delong_brute_force(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """DeLong's variance from its definition, O(m*n): psi(x, z) = 1 if x > z, 1/2 if equal."""
    x, z = s[y == 1], s[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(psi.mean()), float(np.var(v10, ddof=1) / x.size + np.var(v01, ddof=1) / z.size)


@pytest.mark.parametrize("ties", [False, True])
def test_fast_delong_equals_definition(ties: bool) -> None:
    s, y = _random_data(7, n=300, ties=ties)
    auc, var = delong_variance(s, y)
    ref_auc, ref_var = _delong_brute_force(s, y)
    assert auc == pytest.approx(ref_auc, abs=1e-12)
    assert var == pytest.approx(ref_var, rel=1e-10)


def test_delong_and_bootstrap_agree_on_a_large_sample() -> None:
    s, y = _random_data(11, n=2000)
    delong = delong_ci(s, y)
    boot, aucs = bootstrap_auc(s, y, n_resamples=2000, seed=3)
    assert boot.value == delong.value
    assert abs(boot.lower - delong.lower) < 0.01
    assert abs(boot.upper - delong.upper) < 0.01
    assert np.std(aucs, ddof=1) == pytest.approx(math.sqrt(delong_variance(s, y)[1]), rel=0.1)


def test_bootstrap_is_reproducible_with_its_seed() -> None:
    s, y = _random_data(2, n=200)
    a = bootstrap_auc(s, y, n_resamples=300, seed=5)[1]
    b = bootstrap_auc(s, y, n_resamples=300, seed=5)[1]
    c = bootstrap_auc(s, y, n_resamples=300, seed=6)[1]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_delong_95_percent_intervals_cover_the_true_auc() -> None:
    # Binormal model: negatives N(0, 1), positives N(d, 1) -> AUC = Phi(d / sqrt(2)).
    d = 1.2
    true_auc = NormalDist().cdf(d / math.sqrt(2))
    rng = np.random.default_rng(2024)
    hits = 0
    n_sims = 400
    for _ in range(n_sims):
        s = np.r_[rng.normal(d, 1, 60), rng.normal(0, 1, 140)]
        y = np.r_[np.ones(60, int), np.zeros(140, int)]
        ci = delong_ci(s, y)
        hits += ci.lower <= true_auc <= ci.upper
    assert 0.92 <= hits / n_sims <= 0.98


@pytest.mark.parametrize("k,n", [(0, 1), (0, 10), (3, 10), (10, 10), (45, 50), (1, 200), (137, 251)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lower, upper = wilson_interval(k, n)
    assert lower == pytest.approx(ref.low, abs=1e-9)
    assert upper == pytest.approx(ref.high, abs=1e-9)


@pytest.mark.parametrize("p,n", [(0.5, 30), (0.85, 60), (0.92, 150), (0.2, 400)])
def test_wilson_coverage_is_close_to_95_percent(p: float, n: int) -> None:
    # Exact coverage: sum of binomial probabilities of every k whose interval contains p.
    coverage = sum(
        binom.pmf(k, n, p) for k in range(n + 1) if wilson_interval(k, n)[0] <= p <= wilson_interval(k, n)[1]
    )
    assert 0.92 <= coverage <= 0.98


def test_wilson_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(5, 3)


def test_confusion_and_rates_match_sklearn() -> None:
    s, y = _random_data(3, n=500)
    p = 1 / (1 + np.exp(-s))
    for threshold in (0.3, 0.5, float(p[17])):  # p[17] itself: ">=" counts it as positive
        tp, fp, tn, fn = confusion_at_threshold(p, y, threshold)
        tn_ref, fp_ref, fn_ref, tp_ref = confusion_matrix(y, (p >= threshold).astype(int)).ravel()
        assert (tp, fp, tn, fn) == (tp_ref, fp_ref, tn_ref, fn_ref)
        rates = binary_rates(p, y, threshold)
        assert rates.sensitivity.value == pytest.approx(tp / (tp + fn))
        assert rates.specificity.value == pytest.approx(tn / (tn + fp))
        assert rates.ppv.value == pytest.approx(tp / (tp + fp))
        assert rates.npv.value == pytest.approx(tn / (tn + fn))
        assert (rates.sensitivity.k, rates.sensitivity.n) == (tp, tp + fn)
        assert rates.sensitivity.lower < rates.sensitivity.value < rates.sensitivity.upper


def test_ppv_is_undefined_without_positive_calls() -> None:
    rates = binary_rates([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1], threshold=0.9)
    assert rates.ppv.value is None and rates.ppv.n == 0
    assert rates.sensitivity.value == 0.0


def test_predictive_values_at_the_data_prevalence_equal_the_sample_values() -> None:
    tp, fp, tn, fn = 80, 30, 270, 20
    pv = predictive_values_at_prevalence(tp, fp, tn, fn, prevalence=(tp + fn) / (tp + fp + tn + fn))
    assert pv.ppv.value == pytest.approx(tp / (tp + fp))
    assert pv.npv.value == pytest.approx(tn / (tn + fn))
    assert pv.ppv.lower < pv.ppv.value < pv.ppv.upper


def test_predictive_value_intervals_cover_at_least_95_percent() -> None:
    sens, spec, prevalence = 0.85, 0.9, 0.08
    true_ppv = sens * prevalence / (sens * prevalence + (1 - spec) * (1 - prevalence))
    true_npv = spec * (1 - prevalence) / (spec * (1 - prevalence) + (1 - sens) * prevalence)
    rng = np.random.default_rng(99)
    n_pos, n_neg, n_sims = 80, 200, 400
    ppv_hits = npv_hits = 0
    for _ in range(n_sims):
        tp = int(rng.binomial(n_pos, sens))
        tn = int(rng.binomial(n_neg, spec))
        pv = predictive_values_at_prevalence(tp, n_neg - tn, tn, n_pos - tp, prevalence)
        ppv_hits += pv.ppv.lower <= true_ppv <= pv.ppv.upper
        npv_hits += pv.npv.lower <= true_npv <= pv.npv.upper
    assert ppv_hits / n_sims >= 0.93
    assert npv_hits / n_sims >= 0.93


def test_roc_band_contains_the_curve_it_was_resampled_from() -> None:
    s, y = _random_data(5, n=600)
    grid = np.linspace(0, 1, 51)
    lower, upper = roc_confidence_band(s, y, grid, n_resamples=300, seed=1)
    observed = roc_curve(s, y).tpr_at(grid)
    assert np.all(lower <= upper)
    assert np.mean((lower <= observed + 1e-12) & (observed <= upper + 1e-12)) > 0.95


def test_invalid_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        roc_auc([0.1, float("nan"), 0.3], [0, 1, 1])
    with pytest.raises(ValueError, match="other than 0/1"):
        roc_auc([0.1, 0.2, 0.3], [0, 2, 1])
    with pytest.raises(ValueError, match="both classes"):
        auc_with_ci([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="at least 2 positives"):
        delong_ci([0.1, 0.2, 0.3], [0, 0, 1])
