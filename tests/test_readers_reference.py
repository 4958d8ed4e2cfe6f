"""Reader-study analysis reproduces published results on the classic MRMC datasets.

References (see ../shared/data/readers/README.md): OR-DBM MRMC 2.51 for Van Dyke with the
jackknife, MRMCaov's User Guide with DeLong; sample-size values from RJafroc's test suite
(SsPowerGivenJK / SsSampleSizeKGivenJ, method "OR", Hillis et al. 2011).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fracsight.reader_study import CovarianceMethod, FigureOfMerit, analyse_study, load_reads
from fracsight.reader_study.fom import estimate
from fracsight.reader_study.or_analysis import Generalisation, components
from fracsight.reader_study.power import VAN_DYKE_PILOT, cases_needed, pilot_from_components, power

READERS_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "readers"


def _dataset(name: str) -> Path:
    path = READERS_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not available (needs ../shared)")
    return path


@pytest.fixture(scope="module")
def van_dyke():
    return load_reads(_dataset("vandyke.csv"))


@pytest.fixture(scope="module")
def franken():
    return load_reads(_dataset("franken.csv"))


def _auc_comparison(study, covariance):
    result = analyse_study(study, foms=[FigureOfMerit.AUC], covariance=covariance)
    [comparison] = [c for c in result.overall.comparisons if c.kind == "modalities"]
    [variance] = result.overall.variance_components
    return comparison, variance


def test_van_dyke_design_is_read_as_published(van_dyke):
    assert (van_dyke.n_cases, van_dyke.n_normal, van_dyke.n_diseased) == (114, 69, 45)
    assert len(van_dyke.readers) == 5 and van_dyke.modalities == ("1", "2")


def test_van_dyke_jackknife_reproduces_or_dbm_mrmc(van_dyke):
    c, v = _auc_comparison(van_dyke, CovarianceMethod.JACKKNIFE)
    assert c.fom_a == pytest.approx(0.89703704, abs=1e-7)
    assert c.fom_b == pytest.approx(0.94083736, abs=1e-7)
    assert c.primary.estimate == pytest.approx(-0.04380032, abs=1e-7)
    for key, published in {
        "cov1": 0.00034661,
        "cov2": 0.00034407,
        "cov3": 0.00023903,
        "var_error": 0.00080229,
        "var_r": 0.00153500,
        "var_tr": 0.00020040,
        "ms_t": 0.00479617,
        "ms_tr": 0.00055103,
    }.items():
        assert v[key] == pytest.approx(published, abs=6e-9), key
    p = c.primary
    assert p.generalisation is Generalisation.RRRC
    assert (p.df_num, round(p.f, 2), round(p.df_den, 2), round(p.p, 4)) == (1.0, 4.46, 15.26, 0.0517)
    assert p.se == pytest.approx(0.02075, abs=5e-6)
    assert p.ci_low == pytest.approx(-0.08796, abs=5e-6)
    assert p.ci_high == pytest.approx(0.00036, abs=5e-6)


def test_van_dyke_delong_reproduces_mrmcaov(van_dyke):
    c, _ = _auc_comparison(van_dyke, CovarianceMethod.DELONG)
    p = c.primary
    assert p.f == pytest.approx(4.484854, abs=1e-6)
    assert p.df_den == pytest.approx(15.06611, abs=1e-5)
    assert p.p == pytest.approx(0.05123303, abs=1e-8)
    assert p.ci_low == pytest.approx(-0.0878672, abs=1e-7)
    assert p.ci_high == pytest.approx(0.0002666, abs=1e-7)


def test_fixed_factor_variants_follow_from_the_same_components(van_dyke):
    c, v = _auc_comparison(van_dyke, CovarianceMethod.JACKKNIFE)
    r = 5
    frrc_den = v["var_error"] - v["cov1"] + (r - 1) * (v["cov2"] - v["cov3"])
    assert c.fixed_readers.f == pytest.approx(v["ms_t"] / frrc_den)
    assert math.isinf(c.fixed_readers.df_den)
    assert c.fixed_cases.f == pytest.approx(v["ms_t"] / v["ms_tr"])
    assert c.fixed_cases.df_den == r - 1
    # Fixing a random factor removes variance: both variants are narrower than RRRC here.
    assert c.fixed_readers.se < c.primary.se and c.fixed_cases.se < c.primary.se


def _pilot(study):
    est = estimate(
        study.ratings.reshape(-1, study.n_cases), study.truth, FigureOfMerit.AUC, CovarianceMethod.JACKKNIFE
    )
    comp = components(est.values.reshape(len(study.modalities), len(study.readers)), est.covariance)
    return pilot_from_components(comp, study.n_cases, study.source)


def test_power_reproduces_rjafroc_for_van_dyke(van_dyke):
    pilot = _pilot(van_dyke)
    effect = -0.043800322
    assert power(pilot, effect, 10, 165).power == pytest.approx(0.80541995, abs=1e-7)
    assert power(pilot, effect, 10, 131, generalisation=Generalisation.FRRC).power == pytest.approx(
        0.80091813, abs=1e-7
    )
    assert power(pilot, effect, 10, 53, generalisation=Generalisation.RRFC).power == pytest.approx(
        0.80496663, abs=1e-7
    )
    assert power(pilot, effect, 6, 111).power == pytest.approx(0.5526116, abs=1e-7)
    needed = cases_needed(pilot, effect, 6)
    assert needed is not None and needed.cases == 251 and round(needed.power, 3) == 0.801


def test_published_van_dyke_pilot_constants_agree_with_the_data(van_dyke):
    pilot = _pilot(van_dyke)
    for key in ("var_tr", "var_error", "cov1", "cov2", "cov3"):
        assert getattr(VAN_DYKE_PILOT, key) == pytest.approx(getattr(pilot, key), abs=6e-9), key


def test_sample_size_reproduces_rjafroc_for_franken(franken):
    needed = cases_needed(_pilot(franken), 0.05, 6)
    assert needed is not None
    assert needed.power == pytest.approx(0.8004469, abs=1e-7)


def test_franken_runs_with_every_figure_of_merit(franken):
    assert (franken.n_cases, franken.n_normal, franken.n_diseased, len(franken.readers)) == (100, 33, 67, 4)
    rated = load_reads(_dataset("franken.csv"), cutoff=3)
    for covariance in CovarianceMethod:
        result = analyse_study(rated, covariance=covariance, margins={FigureOfMerit.SPECIFICITY: 0.05})
        assert {c.fom for c in result.overall.comparisons} == set(FigureOfMerit)
        for c in result.overall.comparisons:
            p = c.primary
            assert 0 < p.p < 1 and p.df_den > 0 and p.ci_low < p.estimate < p.ci_high
            assert p.estimate == pytest.approx(c.fom_a - c.fom_b)
        for s in result.overall.summaries:
            assert 0 <= s.ci_low <= s.value <= s.ci_high <= 1
            assert all(0 <= r.ci_low <= r.value <= r.ci_high <= 1 for r in s.per_reader)
        [spec] = [c for c in result.overall.comparisons if c.fom is FigureOfMerit.SPECIFICITY]
        assert spec.non_inferiority is not None and spec.non_inferiority.bound == -0.05
    # For proportions the two covariance methods are the same estimator.
    jack = analyse_study(rated, foms=[FigureOfMerit.SENSITIVITY], covariance=CovarianceMethod.JACKKNIFE)
    delong = analyse_study(rated, foms=[FigureOfMerit.SENSITIVITY], covariance=CovarianceMethod.DELONG)
    assert jack.overall.comparisons[0].primary.f == pytest.approx(delong.overall.comparisons[0].primary.f)
