"""``readers.json``: every number of a reader-study analysis, with what it was measured on.

Each comparison carries the flat keys a script reads first (fom, modality_a, modality_b,
fom_a, fom_b, difference, ci_low, ci_high, f, df_num, df_den, p: random readers and
random cases) and, nested, the fixed-reader and fixed-case variants and the one-sided
superiority / non-inferiority tests. JSON has no infinity: an infinite df (chi-square or
normal reference) is written as null, as are values that cannot be estimated.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fracsight.reader_study.analysis import AI_METHOD, MODALITY_METHOD
from fracsight.reader_study.or_analysis import MarginTest, TestResult
from fracsight.reader_study.results import Comparison, GroupResult, StudyAnalysis
from fracsight.reader_study.summary import plain_summary

FORMAT_VERSION = 1
REFERENCES = (
    "Obuchowski NA, Rockette HE. Commun Stat Simul Comput 24:285-308 (1995)",
    "Hillis SL, Obuchowski NA, Schartz KM, Berbaum KS. Stat Med 24:1579-1607 (2005)",
    "Hillis SL. Stat Med 26:596-619 (2007)",
    "Hillis SL, Berbaum KS, Metz CE. Acad Radiol 15:647-661 (2008)",
    "Hillis SL, Obuchowski NA, Berbaum KS. Acad Radiol 18:129-142 (2011) (power)",
    "DeLong ER, DeLong DM, Clarke-Pearson DL. Biometrics 44:837-845 (1988)",
    "Roe CA, Metz CE. Acad Radiol 4:298-303 (1997) (simulation model)",
)
CI_METHODS = {
    "reader_averaged": "one-modality OR analysis, random readers and cases, Hillis df (clipped to [0, 1])",
    "per_reader_auc": "normal approximation with the chosen case-sampling variance (clipped to [0, 1])",
    "per_reader_and_ai_proportions": "Wilson score interval",
    "ai_auc": "normal approximation with the chosen case-sampling variance (clipped to [0, 1])",
    "differences": "t interval with Hillis df (random readers and cases)",
}


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: dataclasses to dicts, enums to values, NaN and infinity to None."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {(k.value if isinstance(k, enum.Enum) else str(k)): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def _test(result: TestResult) -> dict[str, Any]:
    return to_jsonable(
        {
            "analysis": result.generalisation.value,
            "difference": result.estimate,
            "se": result.se,
            "ci_low": result.ci_low,
            "ci_high": result.ci_high,
            "f": result.f,
            "df_num": result.df_num,
            "df_den": result.df_den,
            "p": result.p,
        }
    )


def _margin(test: MarginTest | None) -> dict[str, Any] | None:
    if test is None:
        return None
    out = to_jsonable(test)
    out["alpha_one_sided"] = out.pop("alpha")
    out["null_hypothesis"] = f"difference <= {test.bound:g}"
    return out


def comparison_dict(c: Comparison) -> dict[str, Any]:
    """One entry of ``comparisons``: flat primary (random readers and cases) result, variants nested."""
    p = c.primary
    return to_jsonable(
        {
            "fom": c.fom,
            "modality_a": c.modality_a,
            "modality_b": c.modality_b,
            "fom_a": c.fom_a,
            "fom_b": c.fom_b,
            "difference": p.estimate,
            "ci_low": p.ci_low,
            "ci_high": p.ci_high,
            "f": p.f,
            "df_num": p.df_num,
            "df_den": p.df_den,
            "p": p.p,
            "se": p.se,
            "kind": c.kind,
            "analysis": p.generalisation.value,
            "method": c.method,
            "covariance": c.covariance,
            "n_cases": c.n_cases,
            "n_readers": c.n_readers,
            "fixed_readers": _test(c.fixed_readers),
            "fixed_cases": _test(c.fixed_cases),
            "superiority": _margin(c.superiority),
            "non_inferiority": _margin(c.non_inferiority),
        }
    )


def group_dict(group: GroupResult) -> dict[str, Any]:
    return {
        "label": group.label,
        "n_cases": group.n_cases,
        "n_fractured": group.n_fractured,
        "n_not_fractured": group.n_cases - group.n_fractured,
        "summaries": to_jsonable(group.summaries),
        "comparisons": [comparison_dict(c) for c in group.comparisons],
        "variance_components": to_jsonable(group.variance_components),
        "ai": to_jsonable(group.ai),
        "notes": list(group.notes),
    }


def analysis_dict(analysis: StudyAnalysis) -> dict[str, Any]:
    """The whole analysis as the ``readers.json`` document."""
    study = analysis.study
    overall = group_dict(analysis.overall)
    regions = None
    if study.regions is not None:
        regions = {r: study.regions.count(r) for r in sorted(set(study.regions))}
    return {
        "format_version": FORMAT_VERSION,
        "data": {
            "source": study.source,
            "n_cases": study.n_cases,
            "n_fractured": study.n_diseased,
            "n_not_fractured": study.n_normal,
            "readers": list(study.readers),
            "modalities": list(study.modalities),
            "binary_calls": study.call_rule or None,
            "cases_per_region": regions,
        },
        "settings": {
            "covariance": analysis.covariance.value,
            "alpha": analysis.alpha,
            "figures_of_merit": [f.value for f in analysis.foms],
            "non_inferiority_margins": {f.value: m for f, m in analysis.margins.items()},
        },
        "methods": {
            "modalities": MODALITY_METHOD,
            "readers_vs_ai": AI_METHOD,
            "pairs": "each compared pair of modalities is analysed as its own two-modality study",
            "variants": "also reported: fixed readers / random cases (chi-square reference, df_den null) and "
            "random readers / fixed cases (df_den = r - 1)",
            "covariance": (
                f"{analysis.covariance.value} estimate of the case-sampling covariance. For sensitivity and "
                "specificity it is computed over the fractured (resp. non-fractured) cases only; there the "
                "DeLong and jackknife estimates coincide with the binomial one"
            ),
            "one_sided_tests": "superiority (difference > 0) and non-inferiority (difference > -margin): "
            "one-sided t tests with Hillis df at alpha/2, agreeing with the two-sided CI",
            "confidence_intervals": CI_METHODS,
            "references": list(REFERENCES),
        },
        "summary": plain_summary(analysis),
        "summaries": overall["summaries"],
        "comparisons": overall["comparisons"],
        "variance_components": overall["variance_components"],
        "ai": overall["ai"],
        "notes": overall["notes"],
        "regions": [group_dict(g) for g in analysis.regions],
    }


def write_json(analysis: StudyAnalysis, path: str | Path) -> dict[str, Any]:
    """Write ``readers.json`` (strict JSON: no NaN or Infinity) and return the document."""
    document = analysis_dict(analysis)
    Path(path).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    return document
