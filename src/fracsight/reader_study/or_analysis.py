"""Obuchowski-Rockette (OR) analysis of reader-study figures of merit, with Hillis' df.

Model (Obuchowski & Rockette 1995): the figure of merit of reader j in modality i is
theta_ij = mu + tau_i + R_j + (tau R)_ij + e_ij, where the error e_ij comes from case
sampling and has variance Var, covariance Cov1 between modalities for the same reader,
Cov2 between readers in the same modality and Cov3 between both different. Those four
come from the case-sampling covariance matrix (jackknife or DeLong, see ``fom``).

Three generalisations are reported, as in OR-DBM MRMC and RJafroc:
- random readers and random cases (RRRC): Hillis (2007) F test,
  F = MS(T) / [MS(T x R) + r max(Cov2 - Cov3, 0)], with Hillis' denominator df
  ddf = [MS(T x R) + r max(Cov2 - Cov3, 0)]^2 / {MS(T x R)^2 / [(t - 1)(r - 1)]};
- fixed readers, random cases (FRRC): F = MS(T) / [Var - Cov1 + (r - 1)(Cov2 - Cov3)], ddf = inf;
- random readers, fixed cases (RRFC): F = MS(T) / MS(T x R), ddf = (t - 1)(r - 1).

One-modality analysis (Hillis 2007, single-treatment form) tests a reader-averaged
figure of merit against a value: var = [MS(R) + r max(Cov2, 0)] / r with
ddf = [MS(R) + r max(Cov2, 0)]^2 / [MS(R)^2 / (r - 1)].
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


class Generalisation(str, enum.Enum):
    """Which factors are treated as random samples from a population."""

    RRRC = "random readers, random cases"
    FRRC = "fixed readers, random cases"
    RRFC = "random readers, fixed cases"


@dataclass(frozen=True)
class ORComponents:
    """OR variance/covariance components and the modality x reader mean squares."""

    var_error: float
    cov1: float  # same reader, different modalities
    cov2: float  # different readers, same modality
    cov3: float  # different readers, different modalities
    var_r: float  # reader variance
    var_tr: float  # modality x reader variance
    ms_t: float
    ms_r: float
    ms_tr: float
    n_modalities: int
    n_readers: int


@dataclass(frozen=True)
class TestResult:
    """An estimate (difference or mean), its standard error, CI and F test against ``null``."""

    generalisation: Generalisation
    estimate: float
    null: float
    se: float
    ci_low: float
    ci_high: float
    f: float
    df_num: float
    df_den: float  # math.inf when the reference distribution is chi-square / normal
    p: float


@dataclass(frozen=True)
class MarginTest:
    """One-sided test that a difference exceeds ``bound`` (0 for superiority, -margin for non-inferiority)."""

    hypothesis: str  # "superiority" or "non-inferiority"
    margin: float
    bound: float
    t: float
    df: float
    p: float
    alpha: float
    passed: bool


def components(theta: np.ndarray, covariance: np.ndarray) -> ORComponents:
    """OR components from FOMs ``theta`` (modalities x readers) and their case covariance.

    ``covariance`` is indexed modality-major: row i * r + j is modality i, reader j.
    """
    t, r = theta.shape
    cov = covariance.reshape(t, r, t, r)
    same_m = np.eye(t, dtype=bool)[:, None, :, None]
    same_r = np.eye(r, dtype=bool)[None, :, None, :]
    var_error = float(cov[same_m & same_r].mean())
    cov1 = float(cov[~same_m & same_r].mean()) if t > 1 else math.nan
    cov2 = float(cov[same_m & ~same_r].mean())
    cov3 = float(cov[~same_m & ~same_r].mean()) if t > 1 else math.nan
    grand = theta.mean()
    modality_means = theta.mean(axis=1)
    reader_means = theta.mean(axis=0)
    ms_t = r * float(((modality_means - grand) ** 2).sum()) / (t - 1) if t > 1 else math.nan
    ms_r = t * float(((reader_means - grand) ** 2).sum()) / (r - 1)
    interaction = theta - modality_means[:, None] - reader_means[None, :] + grand
    ms_tr = float((interaction**2).sum()) / ((t - 1) * (r - 1)) if t > 1 else math.nan
    if t > 1:
        # From E[MS(T x R)] = s2_TR + Var - Cov1 - Cov2 + Cov3 and
        # E[MS(R)] = t s2_R + s2_TR + Var + (t - 1) Cov1 - Cov2 - (t - 1) Cov3.
        var_tr = ms_tr - var_error + cov1 + cov2 - cov3
        var_r = (ms_r - var_tr - var_error - (t - 1) * cov1 + cov2 + (t - 1) * cov3) / t
    else:
        var_tr = math.nan
        var_r = ms_r - var_error + cov2
    return ORComponents(var_error, cov1, cov2, cov3, var_r, var_tr, ms_t, ms_r, ms_tr, t, r)


def compare_modalities(
    theta: np.ndarray, covariance: np.ndarray, generalisation: Generalisation, alpha: float = 0.05
) -> TestResult:
    """Test equality of the modalities' reader-averaged FOMs (rows of ``theta``).

    With two modalities the estimate is row 0 minus row 1 and the CI is for that
    difference; with more, the F test is the omnibus one and the estimate is the range.
    """
    c = components(theta, covariance)
    t, r = theta.shape
    if t < 2:
        raise ValueError(f"comparing modalities needs at least 2, got {t}")
    if generalisation is Generalisation.RRRC:
        denominator = c.ms_tr + r * max(c.cov2 - c.cov3, 0.0)
        df_den = denominator**2 / (c.ms_tr**2 / ((t - 1) * (r - 1))) if c.ms_tr > 0 else math.inf
    elif generalisation is Generalisation.FRRC:
        denominator = c.var_error - c.cov1 + (r - 1) * (c.cov2 - c.cov3)
        df_den = math.inf
    else:
        denominator = c.ms_tr
        df_den = float((t - 1) * (r - 1))
    means = theta.mean(axis=1)
    estimate = float(means[0] - means[1]) if t == 2 else float(means.max() - means.min())
    se = math.sqrt(2.0 * denominator / r) if denominator > 0 else math.nan
    f = c.ms_t / denominator if denominator > 0 else math.nan
    return _finish(generalisation, estimate, 0.0, se, f, float(t - 1), df_den, alpha, two_sided_ci=t == 2)


def one_modality(
    theta: np.ndarray,
    covariance: np.ndarray,
    generalisation: Generalisation,
    null: float = 0.0,
    alpha: float = 0.05,
) -> TestResult:
    """Reader-averaged FOM of one modality (``theta``: readers) with CI, tested against ``null``.

    Applied to per-reader differences (reader minus a fixed reference such as the AI on
    the same cases) it is the paired single-treatment OR analysis.
    """
    r = theta.size
    mean = float(theta.mean())
    ms_r = float(theta.var(ddof=1))
    off_diagonal = ~np.eye(r, dtype=bool)
    cov2 = float(covariance[off_diagonal].mean())
    if generalisation is Generalisation.RRRC:
        denominator = ms_r + r * max(cov2, 0.0)
        df_den = denominator**2 / (ms_r**2 / (r - 1)) if ms_r > 0 else math.inf
    elif generalisation is Generalisation.FRRC:
        denominator = float(np.diag(covariance).mean()) + (r - 1) * cov2
        df_den = math.inf
    else:
        denominator = ms_r
        df_den = float(r - 1)
    se = math.sqrt(denominator / r) if denominator > 0 else math.nan
    f = (mean - null) ** 2 / se**2 if se > 0 else math.nan
    return _finish(generalisation, mean, null, se, f, 1.0, df_den, alpha, two_sided_ci=True)


def one_modality_components(theta: np.ndarray, covariance: np.ndarray) -> dict[str, float]:
    """Var, Cov2 and MS(R) for a one-modality analysis (reported with AI comparisons)."""
    r = theta.size
    return {
        "var_error": float(np.diag(covariance).mean()),
        "cov2": float(covariance[~np.eye(r, dtype=bool)].mean()),
        "ms_r": float(theta.var(ddof=1)),
        "n_readers": r,
    }


def margin_test(result: TestResult, margin: float, alpha: float = 0.05) -> MarginTest:
    """One-sided t test (Hillis df) that the difference exceeds -margin (or 0 when margin is 0).

    Uses alpha/2 one-sided, so the verdict agrees with the two-sided (1 - alpha) CI's lower
    limit lying above the bound, the usual convention for non-inferiority trials.
    """
    bound = -abs(margin) if margin else 0.0
    hypothesis = "non-inferiority" if margin else "superiority"
    if not (result.se > 0):
        return MarginTest(hypothesis, abs(margin), bound, math.nan, result.df_den, math.nan, alpha / 2, False)
    t_stat = (result.estimate - bound) / result.se
    p = float(_t_sf(t_stat, result.df_den))
    return MarginTest(
        hypothesis, abs(margin), bound, float(t_stat), result.df_den, p, alpha / 2, p < alpha / 2
    )


def _finish(
    generalisation: Generalisation,
    estimate: float,
    null: float,
    se: float,
    f: float,
    df_num: float,
    df_den: float,
    alpha: float,
    *,
    two_sided_ci: bool,
) -> TestResult:
    if math.isnan(f):
        p = math.nan
    elif math.isinf(df_den):
        p = float(stats.chi2.sf(f * df_num, df_num))
    else:
        p = float(stats.f.sf(f, df_num, df_den))
    if two_sided_ci and se > 0:
        quantile = stats.norm.ppf(1 - alpha / 2) if math.isinf(df_den) else stats.t.ppf(1 - alpha / 2, df_den)
        low, high = estimate - quantile * se, estimate + quantile * se
    else:
        low = high = math.nan
    return TestResult(
        generalisation, estimate, null, se, float(low), float(high), float(f), df_num, df_den, p
    )


def _t_sf(value: float, df: float) -> float:
    return float(stats.norm.sf(value) if math.isinf(df) else stats.t.sf(value, df))
