"""Plain-language sentences for a reader-study result: the test used, the numbers, the verdict.

Each sentence names the data it rests on (cases, readers) and gives the CI, so a
sentence copied out of the report still says what it means and how sure it is.
"""

from __future__ import annotations

import math

from fracsight.reader_study.results import Comparison, StudyAnalysis


def fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return "< 0.0001" if p < 0.0001 else f"{p:.4f}"


def fmt_df(df: float) -> str:
    return "inf" if math.isinf(df) else f"{df:.2f}"


def comparison_sentence(c: Comparison, alpha: float) -> str:
    """One paragraph on one comparison (random readers and cases)."""
    p = c.primary
    name = c.fom.label[0].upper() + c.fom.label[1:]
    subject = (
        "cases"
        if c.fom.value == "auc"
        else ("fractured cases" if c.fom.value == "sensitivity" else "non-fractured cases")
    )
    level = f"{100 * (1 - alpha):g}%"
    if c.kind == "readers_vs_ai":
        lead = (
            f"{name}, readers in modality {c.modality_a} versus the AI alone: readers averaged "
            f"{fmt(c.fom_a)}, the AI {fmt(c.fom_b)}"
        )
    else:
        lead = (
            f"{name}, modality {c.modality_a} versus {c.modality_b}: reader-averaged "
            f"{fmt(c.fom_a)} versus {fmt(c.fom_b)}"
        )
    if not math.isfinite(p.f):
        return (
            f"{lead}; difference {fmt(p.estimate)}. No test is possible: the figures do not vary across "
            f"readers or cases ({c.n_cases} {subject}, {c.n_readers} readers)."
        )
    verdict = "significant" if p.p < alpha else "not significant"
    sentence = (
        f"{lead}; difference {p.estimate:+.3f} ({level} CI {fmt(p.ci_low)} to {fmt(p.ci_high)}). "
        f"{'Paired one-modality ' if c.kind == 'readers_vs_ai' else ''}Obuchowski-Rockette test with Hillis "
        f"degrees of freedom, readers and cases random, {c.covariance.value} covariance: "
        f"F(1, {fmt_df(p.df_den)}) = {p.f:.2f}, p = {fmt_p(p.p)}, {verdict} at the {alpha:g} level "
        f"({c.n_cases} {subject}, {c.n_readers} readers)."
    )
    ni = c.non_inferiority
    if ni is not None:
        shown = "shown" if ni.passed else "not shown"
        # Name the direction: whether A is non-inferior to B or B to A depends on the file's order.
        first = f"readers in modality {c.modality_a}" if c.kind == "readers_vs_ai" else c.modality_a
        second = "the AI alone" if c.kind == "readers_vs_ai" else c.modality_b
        sentence += (
            f" Non-inferiority of {first} to {second} within {ni.margin:g}: {shown} (lower {level} limit "
            f"{fmt(p.ci_low)} versus -{ni.margin:g}; one-sided p = {fmt_p(ni.p)})."
        )
    return sentence


def plain_summary(analysis: StudyAnalysis) -> list[str]:
    """Sentences for the top of the report: the data, then every comparison on all cases."""
    study = analysis.study
    lines = [
        f"Data: {study.n_cases} cases ({study.n_diseased} fractured, {study.n_normal} not), "
        f"{len(study.readers)} readers, modalities {', '.join(study.modalities)} (source: {study.source})."
    ]
    lines += [comparison_sentence(c, analysis.alpha) for c in analysis.overall.comparisons]
    if not analysis.overall.comparisons:
        lines.append(
            "Only one modality and no AI predictions: there is nothing to compare; figures are descriptive."
        )
    return lines
