"""Power and sample size for a two-modality reader study (Hillis, Obuchowski & Berbaum 2011).

The OR components of a pilot study with c* cases are carried to a planned study with r
readers and c cases by scaling the case-sampling components (Var, Cov1, Cov2, Cov3) by
s = c*/c; the reader x modality variance s2_TR = MS(T x R) - Var + Cov1 + max(Cov2 - Cov3, 0)
(their Eqn 9) stays, negative estimates set to 0. With D = max(Cov2 - Cov3, 0), under an
effect d (difference of reader-averaged FOMs) the OR statistic is non-central (their Eqn 10):
- RRRC: den = s2_TR + s (Var - Cov1 + (r - 1) D), ncp = r d^2 / (2 den),
  F(1, ddf) with ddf = den^2 / {[s2_TR + s (Var - Cov1 - D)]^2 / (r - 1)};
- FRRC: den = s (Var - Cov1 + (r - 1) D), chi-square(1) reference;
- RRFC: den = s2_TR + s (Var - Cov1 - D), F(1, r - 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from fracsight.reader_study.errors import ReaderStudyError
from fracsight.reader_study.or_analysis import Generalisation, ORComponents


@dataclass(frozen=True)
class PilotComponents:
    """OR components of a pilot study, the inputs of the power calculation."""

    var_tr: float
    var_error: float
    cov1: float
    cov2: float
    cov3: float
    n_cases: int  # c*: cases in the pilot, the size the case components belong to
    source: str  # where they come from, in words


def pilot_from_components(components: ORComponents, n_cases: int, source: str) -> PilotComponents:
    """Pilot inputs from an OR analysis of two modalities (s2_TR by Hillis et al. 2011, Eqn 9)."""
    if components.n_modalities != 2:
        raise ReaderStudyError(
            f"planning uses a two-modality pilot; {source} gives {components.n_modalities} modalities "
            "(choose two with --compare A:B)"
        )
    var_tr = (
        components.ms_tr
        - components.var_error
        + components.cov1
        + max(components.cov2 - components.cov3, 0.0)
    )
    return PilotComponents(
        var_tr, components.var_error, components.cov1, components.cov2, components.cov3, n_cases, source
    )


# Published OR components of the Van Dyke et al. (1993) study (114 cases, empirical AUC, jackknife;
# OR-DBM MRMC 2.51): the default pilot when the user has none of their own.
VAN_DYKE_PILOT = PilotComponents(
    var_tr=0.00020040,
    var_error=0.00080229,
    cov1=0.00034661,
    cov2=0.00034407,
    cov3=0.00023903,
    n_cases=114,
    source="Van Dyke et al. (1993) cine vs spin-echo MRI, 5 readers, 114 cases: published OR components "
    "(empirical AUC, jackknife)",
)


@dataclass(frozen=True)
class PowerResult:
    readers: int
    cases: int
    power: float
    ncp: float
    df_den: float


def power(
    pilot: PilotComponents,
    effect: float,
    readers: int,
    cases: int,
    *,
    alpha: float = 0.05,
    generalisation: Generalisation = Generalisation.RRRC,
) -> PowerResult:
    """Power of the two-sided OR F test at level ``alpha`` for the given size and effect."""
    if readers < 2 or cases < 2:
        raise ReaderStudyError(f"a study needs at least 2 readers and 2 cases, got {readers} and {cases}")
    scale = pilot.n_cases / cases
    between = max(pilot.cov2 - pilot.cov3, 0.0)
    var_tr = max(pilot.var_tr, 0.0)
    interaction = var_tr + scale * (pilot.var_error - pilot.cov1 - between)  # E[MS(T x R)]
    if generalisation is Generalisation.RRRC:
        denominator = var_tr + scale * (pilot.var_error - pilot.cov1 + (readers - 1) * between)
        df_den = denominator**2 / (interaction**2 / (readers - 1)) if interaction > 0 else math.inf
    elif generalisation is Generalisation.FRRC:
        denominator = scale * (pilot.var_error - pilot.cov1 + (readers - 1) * between)
        df_den = math.inf
    else:
        denominator = interaction
        df_den = float(readers - 1)
    if denominator <= 0:
        raise ReaderStudyError(
            f"the pilot's variance components ({pilot.source}) give a non-positive test variance "
            f"({denominator:.3g}) for {generalisation.value}; power cannot be computed"
        )
    ncp = readers * effect**2 / (2.0 * denominator)
    if math.isinf(df_den):
        critical = stats.chi2.isf(alpha, 1)
        achieved = stats.ncx2.sf(critical, 1, ncp)
    else:
        critical = stats.f.isf(alpha, 1, df_den)
        achieved = stats.ncf.sf(critical, 1, df_den, ncp)
    return PowerResult(readers, cases, float(achieved), float(ncp), float(df_den))


def cases_needed(
    pilot: PilotComponents,
    effect: float,
    readers: int,
    *,
    target: float = 0.8,
    alpha: float = 0.05,
    generalisation: Generalisation = Generalisation.RRRC,
    max_cases: int = 5000,
) -> PowerResult | None:
    """Fewest cases giving power >= ``target`` with ``readers`` readers, or None if > ``max_cases``.

    Power grows with cases towards a ceiling set by reader variability, so with too few
    readers no number of cases may suffice.
    """
    best = power(pilot, effect, readers, max_cases, alpha=alpha, generalisation=generalisation)
    if best.power < target:
        return None
    low, high = 2, max_cases  # power(low) may already suffice; power(high) does
    if power(pilot, effect, readers, low, alpha=alpha, generalisation=generalisation).power >= target:
        return power(pilot, effect, readers, low, alpha=alpha, generalisation=generalisation)
    while high - low > 1:
        middle = (low + high) // 2
        if power(pilot, effect, readers, middle, alpha=alpha, generalisation=generalisation).power >= target:
            high = middle
        else:
            low = middle
    return power(pilot, effect, readers, high, alpha=alpha, generalisation=generalisation)


def plan_study(
    pilot: PilotComponents,
    effect: float,
    *,
    target: float = 0.8,
    alpha: float = 0.05,
    readers: range = range(3, 21),
    generalisation: Generalisation = Generalisation.RRRC,
    max_cases: int = 5000,
) -> list[PowerResult]:
    """(readers, cases) pairs reaching ``target`` power: the fewest cases for each reader count."""
    if effect == 0:
        raise ReaderStudyError(
            "the effect size (difference in figure of merit) must be non-zero to plan for power"
        )
    plan = []
    for r in readers:
        row = cases_needed(
            pilot, effect, r, target=target, alpha=alpha, generalisation=generalisation, max_cases=max_cases
        )
        if row is not None:
            plan.append(row)
    return plan
