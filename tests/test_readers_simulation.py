"""Roe-Metz simulations: the tests hold their size under the null, and power predictions are close.

Seeds are fixed so the tests are reproducible; the acceptance bounds are the binomial
99% interval around the nominal 5%, so a correct test fails about once in a hundred seeds.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fracsight.reader_study import (
    CovarianceMethod,
    FigureOfMerit,
    RoeMetzConfig,
    analyse_study,
    simulate_roe_metz,
    simulate_roe_metz_with_ai,
)
from fracsight.reader_study.ai_arm import AIPredictions
from fracsight.reader_study.fom import estimate
from fracsight.reader_study.or_analysis import Generalisation, compare_modalities, components
from fracsight.reader_study.power import PilotComponents, power

ALPHA = 0.05


def _binomial_99(n: int) -> tuple[float, float]:
    low, high = stats.binom.interval(0.99, n, ALPHA)
    return low / n, high / n


def test_simulated_auc_matches_the_model():
    config = RoeMetzConfig(n_readers=5, n_normal=60, n_diseased=60, delta=(0.0, 0.5))
    rng = np.random.default_rng(3)
    aucs = []
    for _ in range(60):
        study = simulate_roe_metz(config, rng)
        est = estimate(
            study.ratings.reshape(-1, study.n_cases), study.truth, FigureOfMerit.AUC, CovarianceMethod.DELONG
        )
        aucs.append(est.values.reshape(2, 5).mean(axis=1))
    mean = np.mean(aucs, axis=0)
    assert mean[0] == pytest.approx(config.expected_auc(0), abs=0.01)
    assert mean[1] == pytest.approx(config.expected_auc(1), abs=0.01)


def test_type_one_error_between_modalities_is_nominal():
    """1000 null studies (4 readers, 30 + 30 cases): AUC, sensitivity and specificity tests."""
    n_studies = 1000
    config = RoeMetzConfig(n_readers=4, n_normal=30, n_diseased=30)
    rng = np.random.default_rng(2024)
    rejections = dict.fromkeys(FigureOfMerit, 0)
    for _ in range(n_studies):
        for c in analyse_study(simulate_roe_metz(config, rng), by_region=False).overall.comparisons:
            rejections[c.fom] += c.primary.p < ALPHA
    low, high = _binomial_99(n_studies)
    rates = {fom.value: count / n_studies for fom, count in rejections.items()}
    assert all(low <= rate <= high for rate in rates.values()), rates


def test_type_one_error_readers_versus_ai_is_nominal():
    """600 studies where the readers' expected AUC equals the AI's (the AI shares the case effects)."""
    n_studies = 600
    config = RoeMetzConfig(n_readers=4, n_normal=30, n_diseased=30, delta=(0.0,))
    rng = np.random.default_rng(77)
    rejections = 0
    for _ in range(n_studies):
        study, probability = simulate_roe_metz_with_ai(config, rng)
        ai = AIPredictions(probability, (), "none", "simulated AI", None)
        [c] = analyse_study(study, ai=ai, foms=[FigureOfMerit.AUC]).overall.comparisons
        assert c.kind == "readers_vs_ai"
        rejections += c.primary.p < ALPHA
    low, high = _binomial_99(n_studies)
    assert low <= rejections / n_studies <= high, rejections / n_studies


def test_readers_versus_ai_detects_a_better_ai():
    config = RoeMetzConfig(n_readers=5, n_normal=60, n_diseased=60, delta=(0.0,))
    rng = np.random.default_rng(5)
    significant = 0
    for _ in range(100):
        study, probability = simulate_roe_metz_with_ai(config, rng, ai_auc_shift=0.08)
        ai = AIPredictions(probability, (), "none", "simulated AI", None)
        [c] = analyse_study(study, ai=ai, foms=[FigureOfMerit.AUC]).overall.comparisons
        significant += c.primary.p < ALPHA and c.primary.estimate < 0
    assert significant >= 60


def test_power_prediction_agrees_roughly_with_simulation():
    """Hillis et al. (2011) power from the average OR components vs the simulated rejection rate."""
    readers, per_class, n_studies = 6, 50, 400
    config = RoeMetzConfig(n_readers=readers, n_normal=per_class, n_diseased=per_class, delta=(0.0, 0.4))
    rng = np.random.default_rng(11)
    found, rejections = [], 0
    for _ in range(n_studies):
        study = simulate_roe_metz(config, rng)
        est = estimate(
            study.ratings.reshape(-1, study.n_cases),
            study.truth,
            FigureOfMerit.AUC,
            CovarianceMethod.JACKKNIFE,
        )
        theta = est.values.reshape(2, readers)
        found.append(components(theta, est.covariance))
        rejections += compare_modalities(theta, est.covariance, Generalisation.RRRC).p < ALPHA
    pilot = PilotComponents(
        *(
            float(np.mean([getattr(c, k) for c in found]))
            for k in ("var_tr", "var_error", "cov1", "cov2", "cov3")
        ),
        n_cases=2 * per_class,
        source="simulation",
    )
    effect = config.expected_auc(1) - config.expected_auc(0)
    predicted = power(pilot, effect, readers, 2 * per_class).power
    assert 0.2 < predicted < 0.9
    assert abs(predicted - rejections / n_studies) < 0.1
