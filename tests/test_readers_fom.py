"""Figures of merit and their covariance against direct (slow, obvious) computations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fracsight.reader_study.fom import (
    CovarianceMethod,
    FigureOfMerit,
    estimate,
    roc_points,
    structural_components,
)


@pytest.fixture()
def ordinal_reads():
    """Three correlated readings on 40 cases with 5-point ratings (many ties), as in reader studies."""
    rng = np.random.default_rng(7)
    truth = np.array([0] * 22 + [1] * 18)
    latent = truth * 1.2 + rng.normal(0, 1, truth.size)
    readings = np.stack([latent + rng.normal(0, 0.6, truth.size) for _ in range(3)])
    return np.digitize(readings, [-0.5, 0.3, 1.0, 1.8]) + 1.0, truth


def test_auc_is_the_mann_whitney_area_with_ties_counted_half(ordinal_reads):
    ratings, truth = ordinal_reads
    est = estimate(ratings, truth, FigureOfMerit.AUC, CovarianceMethod.JACKKNIFE)
    assert est.values == pytest.approx([roc_auc_score(truth, row) for row in ratings])


def test_jackknife_covariance_equals_leave_one_out_recomputation(ordinal_reads):
    ratings, truth = ordinal_reads
    n = truth.size
    loo = np.array(
        [[roc_auc_score(np.delete(truth, k), np.delete(row, k)) for k in range(n)] for row in ratings]
    )
    dev = loo - loo.mean(axis=1, keepdims=True)
    expected = (n - 1) / n * dev @ dev.T
    est = estimate(ratings, truth, FigureOfMerit.AUC, CovarianceMethod.JACKKNIFE)
    assert est.covariance == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_delong_covariance_from_pairwise_kernel(ordinal_reads):
    ratings, truth = ordinal_reads
    pos, neg = ratings[:, truth == 1], ratings[:, truth == 0]
    kernel = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    v10, v01 = kernel.mean(axis=2), kernel.mean(axis=1)
    fast10, fast01 = structural_components(ratings, truth.astype(bool))
    assert fast10 == pytest.approx(v10) and fast01 == pytest.approx(v01)
    expected = np.cov(v10) / pos.shape[1] + np.cov(v01) / neg.shape[1]
    est = estimate(ratings, truth, FigureOfMerit.AUC, CovarianceMethod.DELONG)
    assert est.covariance == pytest.approx(expected)


@pytest.mark.parametrize("method", list(CovarianceMethod))
def test_proportion_variance_is_binomial_over_the_relevant_cases(method):
    truth = np.array([1] * 20 + [0] * 30)
    calls = np.zeros((1, 50))
    calls[0, :15] = 1  # 15 of 20 fractured called: sensitivity 0.75
    calls[0, 20:26] = 1  # 6 of 30 non-fractured called: specificity 0.8
    sens = estimate(calls, truth, FigureOfMerit.SENSITIVITY, method)
    spec = estimate(calls, truth, FigureOfMerit.SPECIFICITY, method)
    assert sens.values[0] == 0.75 and sens.n_cases == 20
    assert sens.covariance[0, 0] == pytest.approx(0.75 * 0.25 / 19)
    assert spec.values[0] == pytest.approx(0.8) and spec.n_cases == 30
    assert spec.covariance[0, 0] == pytest.approx(0.8 * 0.2 / 29)


def test_roc_points_run_from_origin_to_corner_and_reproduce_the_area(ordinal_reads):
    ratings, truth = ordinal_reads
    fpr, tpr, thresholds = roc_points(ratings[0], truth)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.isinf(thresholds[0])
    trapezoid = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert trapezoid == pytest.approx(roc_auc_score(truth, ratings[0]))
