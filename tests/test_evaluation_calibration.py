"""Calibration measures against references, and temperature fitting on simulated data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss

from fracsight.evaluation.calibration import (
    TemperatureFitError,
    brier_score,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
    reliability_bins,
)


def _simulate(n: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True logits z, outcomes y ~ Bernoulli(sigmoid(z)), and logits a model gives: z * temperature."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return z, y, z * temperature


def _ece_reference(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    total = 0.0
    for b in range(n_bins):
        low, high = b / n_bins, (b + 1) / n_bins
        inside = (p >= low) & ((p < high) if b < n_bins - 1 else (p <= high))
        if inside.any():
            total += inside.sum() / p.size * abs(y[inside].mean() - p[inside].mean())
    return total


def test_brier_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(1000)
    y = rng.integers(0, 2, 1000)
    assert brier_score(p, y) == pytest.approx(brier_score_loss(y, p), abs=1e-12)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_matches_a_direct_loop(n_bins: int) -> None:
    rng = np.random.default_rng(n_bins)
    p = np.r_[rng.random(997), 0.0, 1.0, 0.5]  # include the edges
    y = rng.integers(0, 2, p.size)
    assert expected_calibration_error(p, y, n_bins) == pytest.approx(_ece_reference(p, y, n_bins), abs=1e-12)


def test_ece_separates_calibrated_from_overconfident_predictions() -> None:
    z, y, overconfident = _simulate(20000, 3.0, seed=1)
    calibrated = 1 / (1 + np.exp(-z))
    assert expected_calibration_error(calibrated, y) < 0.02
    assert expected_calibration_error(1 / (1 + np.exp(-overconfident)), y) > 0.08


def test_reliability_bins_account_for_every_case() -> None:
    z, y, _ = _simulate(3000, 1.0, seed=2)
    p = 1 / (1 + np.exp(-z))
    bins = reliability_bins(p, y, n_bins=10)
    assert len(bins) == 10
    assert sum(b.n for b in bins) == p.size
    assert sum(b.observed.k for b in bins) == y.sum()
    for b in bins:
        if b.n:
            assert b.low <= b.mean_predicted <= b.high
            assert b.observed.lower <= b.observed.value <= b.observed.upper


def test_calibration_summary_gives_cis_around_its_values() -> None:
    z, y, _ = _simulate(2000, 1.5, seed=3)
    summary = calibration_summary(1 / (1 + np.exp(-z * 1.5)), y, n_bins=10, n_resamples=300, seed=0)
    assert summary.n == 2000 and summary.n_positive == int(y.sum())
    for estimate in (summary.brier, summary.ece):
        assert estimate.lower <= estimate.value <= estimate.upper
        assert estimate.n == 2000


@pytest.mark.parametrize("true_t", [0.6, 1.0, 2.5])
def test_temperature_fit_recovers_a_known_temperature(true_t: float) -> None:
    _, y, logits = _simulate(20000, true_t, seed=4)
    fit = fit_temperature(logits, y)
    assert fit.temperature == pytest.approx(true_t, rel=0.06)
    assert fit.nll_after <= fit.nll_before + 1e-12


def test_logits_from_probabilities_undo_the_temperature() -> None:
    raw = np.array([-6.0, -1.0, 0.0, 0.5, 4.0])
    for t in (0.5, 1.0, 2.0):
        p = 1 / (1 + np.exp(-raw / t))
        np.testing.assert_allclose(logits_from_probabilities(p, t), raw, atol=1e-9)
    assert np.all(np.isfinite(logits_from_probabilities([0.0, 1.0])))


def test_temperature_fit_refuses_separated_classes() -> None:
    logits = np.r_[np.linspace(-5, -1, 50), np.linspace(1, 5, 50)]
    labels = np.r_[np.zeros(50, int), np.ones(50, int)]
    with pytest.raises(TemperatureFitError, match="search bound"):
        fit_temperature(logits, labels)


def test_calibration_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        brier_score([0.2, 1.3], [0, 1])
    with pytest.raises(TemperatureFitError, match="both classes"):
        fit_temperature([0.1, 0.3], [1, 1])
