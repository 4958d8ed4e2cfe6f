"""The AI's live performance at this site, and drift alerts, from what the store keeps.

**Performance** rests on the readers' verdicts (the latest verdict per image is its label): the
AI's sensitivity and specificity with 95% Wilson intervals, overall, per month (of the image's
arrival) and per body region (the region head's answer kept in the result's ``scope``, else the
DICOM Body Part Examined), at two operating points: ``fracture`` (the AI's call is positive when
its category is fracture) and ``doubt_or_fracture`` (positive for doubt or fracture: the
high-sensitivity call). Images the AI set aside as out of scope are counted apart, never in the
rates. No rate is shown from fewer than :data:`MIN_CASES` cases in its denominator.

**Drift** rests on every analysed image, verdict or not: each month is compared with the
reference month (the first with at least :data:`MIN_DRIFT_CASES` analysed images) by the tests in
:data:`DRIFT_TESTS` (chi-square test of homogeneity for rates and mixes, two-sample
Kolmogorov-Smirnov for the probabilities), each at ``FAMILY_ALPHA / len(DRIFT_TESTS)``
(Bonferroni), so the chance of any false alarm in a month without drift is at most
:data:`FAMILY_ALPHA`. A month with fewer than :data:`MIN_DRIFT_CASES` images is not tested.

The tests are written with numpy and math here (scipy is not part of the service install).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fracsight.decide import Category
from fracsight.evaluation.metrics import CONFIDENCE, wilson_interval
from fracsight.service.store import Store

MIN_CASES = 10  # positives for a sensitivity, negatives for a specificity
MIN_DRIFT_CASES = 50  # analysed images in each of the two months compared
FAMILY_ALPHA = 0.01  # chance of any false alarm in one month without drift
OPERATING_POINTS = {
    "fracture": (Category.FRACTURE.value,),
    "doubt_or_fracture": (Category.FRACTURE.value, Category.DOUBT.value),
}
OPERATING_POINT_MEANING = {
    "fracture": "the AI's call is positive when its category is fracture (its high-specificity call)",
    "doubt_or_fracture": "the AI's call is positive for doubt or fracture (its high-sensitivity call)",
}
# Inputs not watched (each analysed image's manufacturer and mean brightness are kept since the
# store keeps them in its result; images analysed before that count as "not given").
NOT_MONITORED: dict[str, str] = {}
_OUT = Category.OUT_OF_SCOPE.value
_UNKNOWN = "unknown"


@dataclass(frozen=True)
class Case:
    """One analysed image as monitoring sees it."""

    month: str  # YYYY-MM of arrival (UTC)
    region: str  # the region head's answer, else the DICOM body part (lower case), else "unknown"
    body_part: str  # DICOM Body Part Examined as given (upper case), or "not given"
    category: str
    probability: float
    label: int | None  # the latest reader's verdict: 1 fracture, 0 none; None without a verdict
    manufacturer: str = "not given"  # DICOM Manufacturer as the equipment gives it
    brightness: float | None = None  # mean of the decoded image's pixels in [0, 1] (exposure, window)

    @property
    def out_of_scope(self) -> bool:
        return self.category == _OUT


def case_of(row: dict[str, Any]) -> Case:
    """A :meth:`Store.monitored_images` row as a :class:`Case`."""
    body_part = (row.get("body_part") or "").strip().upper()
    region = row.get("region") or body_part.lower() or _UNKNOWN
    label = row.get("reader_label")
    return Case(
        month=str(row["received_at"])[:7],
        region=str(region),
        body_part=body_part or "not given",
        category=str(row["category"]),
        probability=float(row["probability"]),
        label=None if label is None else int(label),
        manufacturer=str(row.get("manufacturer") or "not given"),
        brightness=None if row.get("brightness") is None else float(row["brightness"]),
    )


# -- rates ------------------------------------------------------------------------------


def estimate(k: int, n: int, minimum: int = MIN_CASES) -> dict[str, Any]:
    """k/n with its Wilson interval, or "too few cases" (no number) below ``minimum``."""
    if n < minimum:
        return {"value": None, "lower": None, "upper": None, "k": k, "n": n,
                "note": f"too few cases (n={n}, at least {minimum} needed)"}  # fmt: skip
    lower, upper = wilson_interval(k, n, CONFIDENCE)
    return {"value": k / n, "lower": lower, "upper": upper, "k": k, "n": n, "note": None}


def rates(cases: Sequence[Case]) -> dict[str, Any]:
    """Sensitivity and specificity at each operating point on the cases with a verdict, and the
    counts they rest on (out-of-scope images with a verdict counted apart)."""
    judged = [c for c in cases if c.label is not None]
    scored = [c for c in judged if not c.out_of_scope]
    positives = [c for c in scored if c.label == 1]
    negatives = [c for c in scored if c.label == 0]
    out: dict[str, Any] = {
        "analysed": len(cases),
        "with_verdict": len(judged),
        "scored_with_verdict": len(scored),
        "fractured": len(positives),
        "not_fractured": len(negatives),
        "out_of_scope_with_verdict": len(judged) - len(scored),
        "out_of_scope_fractured": sum(1 for c in judged if c.out_of_scope and c.label == 1),
        "operating_points": {},
    }
    for name, calls in OPERATING_POINTS.items():
        found = sum(1 for c in positives if c.category in calls)
        cleared = sum(1 for c in negatives if c.category not in calls)
        out["operating_points"][name] = {
            "sensitivity": estimate(found, len(positives)),
            "specificity": estimate(cleared, len(negatives)),
        }
    return out


# -- tests ------------------------------------------------------------------------------


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for a chi-square variable with ``dof`` degrees of freedom: the regularised upper
    incomplete gamma function Q(dof/2, x/2), by its series below a+1 and its continued fraction above."""
    if dof < 1:
        raise ValueError(f"chi-square needs dof >= 1, got {dof}")
    if x <= 0.0:
        return 1.0
    a, z = dof / 2.0, x / 2.0
    log_front = a * math.log(z) - z - math.lgamma(a)
    if z < a + 1.0:  # series for the lower function P
        term = total = 1.0 / a
        n = a
        for _ in range(10_000):
            n += 1.0
            term *= z / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300  # modified Lentz for Q
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)


def chi2_homogeneity(reference: Counter, current: Counter) -> tuple[float, int, float]:
    """Pearson's chi-square test that two samples share one distribution over categories (no
    continuity correction; categories absent from both dropped): (statistic, dof, p)."""
    keys = sorted(k for k in set(reference) | set(current) if reference[k] + current[k] > 0)
    if len(keys) < 2:
        return 0.0, 0, 1.0
    table = np.array([[reference[k] for k in keys], [current[k] for k in keys]], dtype=np.float64)
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    dof = len(keys) - 1
    return statistic, dof, chi2_sf(statistic, dof)


def kolmogorov_sf(x: float) -> float:
    """P(K >= x) for the Kolmogorov distribution (the limit of sqrt(n) times the KS statistic)."""
    if x <= 0.0:
        return 1.0
    if x < 1.0:  # the alternating series converges slowly here; use the dual (Jacobi theta) form
        t = math.exp(-math.pi**2 / (8.0 * x * x))
        cdf = math.sqrt(2.0 * math.pi) / x * sum(t ** ((2 * k - 1) ** 2) for k in range(1, 20))
        return min(1.0, max(0.0, 1.0 - cdf))
    total = sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * x * x) for k in range(1, 101))
    return min(1.0, max(0.0, 2.0 * total))


def ks_two_sample(reference: Sequence[float], current: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test, two-sided, asymptotic p: (statistic D, p)."""
    a = np.sort(np.asarray(reference, dtype=np.float64))
    b = np.sort(np.asarray(current, dtype=np.float64))
    if len(a) == 0 or len(b) == 0:
        return 0.0, 1.0
    points = np.concatenate([a, b])
    below_a = np.searchsorted(a, points, side="right") / len(a)
    gap = below_a - np.searchsorted(b, points, side="right") / len(b)
    d = float(np.max(np.abs(gap)))
    effective = len(a) * len(b) / (len(a) + len(b))
    return d, kolmogorov_sf(math.sqrt(effective) * d)


@dataclass(frozen=True)
class DriftTest:
    """One quantity watched for drift: what it is, whether input or output, and its test."""

    name: str
    kind: str  # "input" or "output"
    what: str  # in words
    test: str
    run: Callable[[Sequence[Case], Sequence[Case]], dict[str, Any]]


def _mix(of: Callable[[Case], str], only_scored: bool = False):
    def run(reference: Sequence[Case], current: Sequence[Case]) -> dict[str, Any]:
        ref = Counter(of(c) for c in reference if not (only_scored and c.out_of_scope))
        cur = Counter(of(c) for c in current if not (only_scored and c.out_of_scope))
        statistic, dof, p = chi2_homogeneity(ref, cur)
        return {"statistic": statistic, "dof": dof, "p_value": p,
                "reference": _shares(ref), "current": _shares(cur)}  # fmt: skip

    return run


def _shares(counts: Counter) -> dict[str, Any]:
    total = sum(counts.values())
    return {k: {"n": v, "share": v / total if total else None} for k, v in sorted(counts.items())}


def _probabilities(reference: Sequence[Case], current: Sequence[Case]) -> dict[str, Any]:
    ref = [c.probability for c in reference if not c.out_of_scope]
    cur = [c.probability for c in current if not c.out_of_scope]
    statistic, p = ks_two_sample(ref, cur)
    return {"statistic": statistic, "p_value": p,
            "reference": {"n": len(ref), "median": float(np.median(ref)) if ref else None},
            "current": {"n": len(cur), "median": float(np.median(cur)) if cur else None}}  # fmt: skip


def _brightness(reference: Sequence[Case], current: Sequence[Case]) -> dict[str, Any]:
    ref = [c.brightness for c in reference if c.brightness is not None]
    cur = [c.brightness for c in current if c.brightness is not None]
    statistic, p = ks_two_sample(ref, cur)
    return {"statistic": statistic, "p_value": p,
            "reference": {"n": len(ref), "median": float(np.median(ref)) if ref else None},
            "current": {"n": len(cur), "median": float(np.median(cur)) if cur else None}}  # fmt: skip


DRIFT_TESTS: tuple[DriftTest, ...] = (
    DriftTest("out_of_scope_rate", "input", "share of images set aside as out of scope",
              "chi-square test of homogeneity (2 x 2)",
              _mix(lambda c: "out_of_scope" if c.out_of_scope else "in_scope")),
    DriftTest("region_mix", "input", "mix of body regions (region head, else DICOM body part)",
              "chi-square test of homogeneity", _mix(lambda c: c.region)),
    DriftTest("body_part_mix", "input", "mix of DICOM Body Part Examined",
              "chi-square test of homogeneity", _mix(lambda c: c.body_part)),
    DriftTest("manufacturer_mix", "input", "mix of equipment manufacturers (DICOM Manufacturer)",
              "chi-square test of homogeneity", _mix(lambda c: c.manufacturer)),
    DriftTest("brightness", "input", "distribution of the images' mean brightness (exposure, window)",
              "two-sample Kolmogorov-Smirnov (two-sided, asymptotic)", _brightness),
    DriftTest("probability", "output", "distribution of the AI's probability (images in scope)",
              "two-sample Kolmogorov-Smirnov (two-sided, asymptotic)", _probabilities),
    DriftTest("category_rates", "output", "shares of fracture, doubt and no fracture (images in scope)",
              "chi-square test of homogeneity", _mix(lambda c: c.category, only_scored=True)),
)  # fmt: skip


def drift(
    cases: Sequence[Case], min_cases: int = MIN_DRIFT_CASES, family_alpha: float = FAMILY_ALPHA
) -> dict[str, Any]:
    """Each month against the reference month by every test of :data:`DRIFT_TESTS`; the alerts."""
    months = _by(cases, lambda c: c.month)
    level = family_alpha / len(DRIFT_TESTS)
    reference = next((m for m, group in months.items() if len(group) >= min_cases), None)
    out: dict[str, Any] = {"reference_month": reference, "per_test_alpha": level, "months": {}, "alerts": []}
    if reference is None:
        out["note"] = f"no month has {min_cases} analysed images yet: nothing is tested"
        return out
    for month, group in months.items():
        if month <= reference:
            continue
        if len(group) < min_cases:
            out["months"][month] = {"tested": False, "note": f"too few cases ({len(group)} < {min_cases})"}
            continue
        results = {}
        for test in DRIFT_TESTS:
            result = test.run(months[reference], group)
            result["alert"] = result["p_value"] < level
            results[test.name] = result
            if result["alert"]:
                out["alerts"].append({
                    "month": month, "name": test.name, "kind": test.kind, "what": test.what,
                    "test": test.test, "statistic": result["statistic"], "p_value": result["p_value"],
                    "alpha": level, "reference_month": reference, "n_reference": len(months[reference]),
                    "n_month": len(group), "reference": result["reference"], "current": result["current"],
                })  # fmt: skip
        out["months"][month] = {"tested": True, "n": len(group), "tests": results}
    return out


def _by(cases: Iterable[Case], key: Callable[[Case], str]) -> dict[str, list[Case]]:
    groups: dict[str, list[Case]] = {}
    for c in cases:
        groups.setdefault(key(c), []).append(c)
    return dict(sorted(groups.items()))


def _histogram(cases: Sequence[Case], bins: int = 10) -> list[int]:
    values = [c.probability for c in cases if not c.out_of_scope]
    return np.histogram(values, bins=bins, range=(0.0, 1.0))[0].astype(int).tolist()


def performance(cases: Sequence[Case]) -> dict[str, Any]:
    """The whole report ``GET /api/performance`` answers: rates, drift, data, methods."""
    months = _by(cases, lambda c: c.month)
    by_month = {}
    for month, group in months.items():
        by_month[month] = {
            **rates(group),
            "categories": dict(sorted(Counter(c.category for c in group).items())),
            "regions": dict(sorted(Counter(c.region for c in group).items())),
            "probability_histogram": _histogram(group),
        }
    return {
        "data": "readers' verdicts at this site (the latest per image) for the rates; every analysed "
        "image, with or without a verdict, for drift",
        "overall": rates(cases),
        "by_month": by_month,
        "by_region": {r: rates(group) for r, group in _by(cases, lambda c: c.region).items()},
        "by_month_region": {
            m: {r: rates(g) for r, g in _by(group, lambda c: c.region).items()} for m, group in months.items()
        },
        "drift": drift(cases),
        "method": {
            "operating_points": OPERATING_POINT_MEANING,
            "confidence_interval": f"Wilson score interval, {CONFIDENCE:.0%}",
            "min_cases": MIN_CASES,
            "min_cases_meaning": "a sensitivity needs this many fractured cases with a verdict, a "
            "specificity this many without fracture; fewer: 'too few cases', no number",
            "label": "the latest reader's verdict per image",
            "month": "the month (UTC) the image arrived",
            "region": "the region head's answer in the stored result, else DICOM Body Part Examined",
            "out_of_scope": "images the AI set aside as out of scope are counted apart, not in the rates",
            "drift_reference": f"the first month with at least {MIN_DRIFT_CASES} analysed images",
            "min_drift_cases": MIN_DRIFT_CASES,
            "family_alpha": FAMILY_ALPHA,
            "per_test_alpha": FAMILY_ALPHA / len(DRIFT_TESTS),
            "correction": f"Bonferroni over {len(DRIFT_TESTS)} tests per month",
            "tests": [{"name": t.name, "kind": t.kind, "what": t.what, "test": t.test} for t in DRIFT_TESTS],
            "not_monitored": NOT_MONITORED,
        },
    }


def site_performance(store: Store) -> dict[str, Any]:
    """:func:`performance` over everything the store keeps."""
    return performance([case_of(r) for r in store.monitored_images()])
