"""Analyse a reader study: per-reader and reader-averaged figures of merit, OR comparisons.

Comparisons between modalities use the two-modality OR analysis (``or_analysis``).
Readers versus the AI alone: the AI is one fixed, reader-independent reading of the same
cases, so for each reader j the paired difference D_j = FOM(reader j) - FOM(AI) is formed;
its case-sampling covariance comes from the joint jackknife/DeLong covariance of the
readers and the AI on the same cases (so the AI's own case-sampling variance and its
covariance with the readers are accounted for), and the reader-averaged D is tested
against 0 with the one-modality OR analysis and Hillis' df for one treatment.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import numpy as np
from scipy import stats

from fracsight.evaluation.metrics import wilson_interval
from fracsight.reader_study.ai_arm import AIPredictions
from fracsight.reader_study.data import UNSPECIFIED_REGION, ReadStudy
from fracsight.reader_study.errors import NotEstimable, ReaderStudyError
from fracsight.reader_study.fom import CovarianceMethod, FigureOfMerit, estimate, roc_points
from fracsight.reader_study.or_analysis import (
    Generalisation,
    TestResult,
    compare_modalities,
    components,
    margin_test,
    one_modality,
    one_modality_components,
)
from fracsight.reader_study.results import (
    AIOperatingResult,
    AISummary,
    Comparison,
    GroupResult,
    ModalitySummary,
    ReaderValue,
    StudyAnalysis,
)

AI_LABEL = "AI alone"
MODALITY_METHOD = (
    "Obuchowski-Rockette analysis with Hillis (2007) denominator degrees of freedom, readers and cases random"
)
AI_METHOD = (
    "paired one-modality Obuchowski-Rockette analysis of reader-minus-AI differences (AI as a fixed, "
    "reader-independent reading of the same cases; joint case-sampling covariance of readers and AI), "
    "Hillis denominator degrees of freedom for one treatment, readers and cases random"
)


def available_foms(study: ReadStudy) -> tuple[FigureOfMerit, ...]:
    """Figures of merit the data supports: AUC from ratings, sensitivity/specificity from calls."""
    foms = []
    if study.ratings is not None:
        foms.append(FigureOfMerit.AUC)
    if study.calls is not None:
        foms += [FigureOfMerit.SENSITIVITY, FigureOfMerit.SPECIFICITY]
    return tuple(foms)


def analyse_study(
    study: ReadStudy,
    *,
    ai: AIPredictions | None = None,
    foms: Sequence[FigureOfMerit] | None = None,
    covariance: CovarianceMethod = CovarianceMethod.JACKKNIFE,
    comparisons: Sequence[tuple[str, str]] | None = None,
    alpha: float = 0.05,
    margins: Mapping[FigureOfMerit, float] | None = None,
    by_region: bool = True,
) -> StudyAnalysis:
    """Run the whole analysis; ``comparisons`` are (a, b) pairs tested as a - b (default: all pairs)."""
    supported = available_foms(study)
    foms = tuple(foms) if foms else supported
    for fom in foms:
        if fom not in supported:
            need = (
                "ratings"
                if fom is FigureOfMerit.AUC
                else "binary calls (a call column, or --cutoff on ratings)"
            )
            raise NotEstimable(
                f"{study.source}: {fom.value} needs {need}, which the reads file does not have"
            )
    pairs = list(comparisons) if comparisons else list(itertools.combinations(study.modalities, 2))
    for a, b in pairs:
        study.select_modalities((a, b))  # raises for unknown names
        if a == b:
            raise ReaderStudyError(f"comparison {a}:{b} compares a modality with itself")
    if ai is not None and any(f is not FigureOfMerit.AUC for f in foms) and ai.primary is None:
        ai.calls()  # raises the clear "give --ai-threshold" error
    margins = dict(margins or {})
    _check_margins(margins, foms, study.source)
    overall = _analyse_group(study, "all cases", ai, foms, covariance, pairs, alpha, margins, strict=True)
    regions: list[GroupResult] = []
    if by_region and study.regions is not None and set(study.regions) != {UNSPECIFIED_REGION}:
        for region in sorted(set(study.regions)):
            mask = np.array([r == region for r in study.regions])
            sub = study.select_cases(mask, f"region {region}")
            sub_ai = None if ai is None else _subset_ai(ai, mask)
            regions.append(
                _analyse_group(
                    sub, f"region {region}", sub_ai, foms, covariance, pairs, alpha, margins, strict=False
                )
            )
    return StudyAnalysis(study, covariance, alpha, foms, margins, overall, tuple(regions))


def _check_margins(
    margins: Mapping[FigureOfMerit, float], foms: Sequence[FigureOfMerit], source: str
) -> None:
    """Refuse a non-inferiority margin for a figure not analysed: it would be silently never tested."""
    unused = [f.value for f in margins if f not in foms]
    if unused:
        raise ReaderStudyError(
            f"{source}: a non-inferiority margin was given for {', '.join(unused)}, which is not analysed "
            f"(figures of merit analysed: {', '.join(f.value for f in foms)}); add it to --fom or give the "
            "data it needs"
        )


def _subset_ai(ai: AIPredictions, mask: np.ndarray) -> AIPredictions:
    return AIPredictions(
        ai.probability[mask], ai.operating_points, ai.threshold_source, ai.source, ai.model_id
    )


def _clip(value: float) -> float:
    """Clip a CI limit of a proportion-like figure to [0, 1], keeping NaN (not estimable) as NaN."""
    return value if math.isnan(value) else min(1.0, max(0.0, value))


def _scores(study: ReadStudy, fom: FigureOfMerit) -> np.ndarray:
    return study.ratings if fom is FigureOfMerit.AUC else study.calls  # type: ignore[return-value]


def _analyse_group(
    study: ReadStudy,
    label: str,
    ai: AIPredictions | None,
    foms: Sequence[FigureOfMerit],
    covariance: CovarianceMethod,
    pairs: Sequence[tuple[str, str]],
    alpha: float,
    margins: Mapping[FigureOfMerit, float],
    *,
    strict: bool,
) -> GroupResult:
    summaries: list[ModalitySummary] = []
    results: list[Comparison] = []
    variance: list[dict] = []
    notes: list[str] = []
    for fom in foms:
        try:
            summaries += _summaries(study, fom, covariance, alpha)
            results_fom, variance_fom = _comparisons(
                study, fom, covariance, pairs, ai, alpha, margins.get(fom)
            )
        except NotEstimable as exc:
            if strict:
                raise
            notes.append(f"{fom.value} not estimable for {label}: {exc}")
            continue
        results += results_fom
        variance += variance_fom
    ai_summary = None
    if ai is not None:
        try:
            ai_summary = _ai_summary(study, ai, covariance, alpha)
        except NotEstimable as exc:
            if strict:
                raise
            notes.append(f"AI alone not estimable for {label}: {exc}")
    return GroupResult(
        label,
        study.n_cases,
        study.n_diseased,
        tuple(summaries),
        tuple(results),
        tuple(variance),
        ai_summary,
        tuple(notes),
    )


def _summaries(
    study: ReadStudy, fom: FigureOfMerit, covariance: CovarianceMethod, alpha: float
) -> list[ModalitySummary]:
    scores = _scores(study, fom)
    n_m, n_r = len(study.modalities), len(study.readers)
    est = estimate(scores.reshape(n_m * n_r, study.n_cases), study.truth, fom, covariance)
    theta = est.values.reshape(n_m, n_r)
    z = stats.norm.ppf(1 - alpha / 2)
    out = []
    for i, modality in enumerate(study.modalities):
        block = slice(i * n_r, (i + 1) * n_r)
        mean = one_modality(theta[i], est.covariance[block, block], Generalisation.RRRC, alpha=alpha)
        readers = []
        for j, reader in enumerate(study.readers):
            value = float(theta[i, j])
            if fom is FigureOfMerit.AUC:
                half = z * math.sqrt(max(est.covariance[i * n_r + j, i * n_r + j], 0.0))
                low, high = _clip(value - half), _clip(value + half)
            else:
                low, high = wilson_interval(round(value * est.n_cases), est.n_cases, 1 - alpha)
            readers.append(ReaderValue(reader, value, low, high))
        out.append(
            ModalitySummary(
                fom,
                modality,
                mean.estimate,
                _clip(mean.ci_low),
                _clip(mean.ci_high),
                mean.se,
                mean.df_den,
                est.n_cases,
                tuple(readers),
            )
        )
    return out


def _comparisons(
    study: ReadStudy,
    fom: FigureOfMerit,
    covariance: CovarianceMethod,
    pairs: Sequence[tuple[str, str]],
    ai: AIPredictions | None,
    alpha: float,
    margin: float | None,
) -> tuple[list[Comparison], list[dict]]:
    results: list[Comparison] = []
    variance: list[dict] = []
    n_r = len(study.readers)
    for a, b in pairs:
        pair = study.select_modalities((a, b))
        est = estimate(_scores(pair, fom).reshape(2 * n_r, pair.n_cases), pair.truth, fom, covariance)
        theta = est.values.reshape(2, n_r)
        tests = {g: compare_modalities(theta, est.covariance, g, alpha) for g in Generalisation}
        comp = components(theta, est.covariance)
        variance.append(
            {"kind": "modalities", "fom": fom, "modalities": [a, b], "covariance": covariance, **asdict(comp)}
        )
        results.append(
            _comparison(
                "modalities",
                fom,
                a,
                b,
                theta[0].mean(),
                theta[1].mean(),
                tests,
                MODALITY_METHOD,
                covariance,
                est.n_cases,
                n_r,
                alpha,
                margin,
            )
        )
    if ai is None:
        return results, variance
    ai_scores = ai.probability if fom is FigureOfMerit.AUC else ai.calls()
    contrast = np.hstack([np.eye(n_r), -np.ones((n_r, 1))])
    for i, modality in enumerate(study.modalities):
        rows = np.vstack([_scores(study, fom)[i], ai_scores[None, :]])
        est = estimate(rows, study.truth, fom, covariance)
        differences = contrast @ est.values
        cov_diff = contrast @ est.covariance @ contrast.T
        tests = {g: one_modality(differences, cov_diff, g, alpha=alpha) for g in Generalisation}
        variance.append(
            {
                "kind": "readers_vs_ai",
                "fom": fom,
                "modalities": [modality, AI_LABEL],
                "covariance": covariance,
                "of": "per-reader differences reader - AI",
                **one_modality_components(differences, cov_diff),
            }
        )
        results.append(
            _comparison(
                "readers_vs_ai",
                fom,
                modality,
                AI_LABEL,
                est.values[:n_r].mean(),
                est.values[n_r],
                tests,
                AI_METHOD,
                covariance,
                est.n_cases,
                n_r,
                alpha,
                margin,
            )
        )
    return results, variance


def _comparison(
    kind: str,
    fom: FigureOfMerit,
    a: str,
    b: str,
    fom_a: float,
    fom_b: float,
    tests: dict[Generalisation, TestResult],
    method: str,
    covariance: CovarianceMethod,
    n_cases: int,
    n_readers: int,
    alpha: float,
    margin: float | None,
) -> Comparison:
    primary = tests[Generalisation.RRRC]
    return Comparison(
        kind=kind,
        fom=fom,
        modality_a=a,
        modality_b=b,
        fom_a=float(fom_a),
        fom_b=float(fom_b),
        primary=primary,
        fixed_readers=tests[Generalisation.FRRC],
        fixed_cases=tests[Generalisation.RRFC],
        superiority=margin_test(primary, 0.0, alpha),
        non_inferiority=None if margin is None else margin_test(primary, margin, alpha),
        method=method,
        covariance=covariance,
        n_cases=n_cases,
        n_readers=n_readers,
    )


def _ai_summary(study: ReadStudy, ai: AIPredictions, covariance: CovarianceMethod, alpha: float) -> AISummary:
    z = stats.norm.ppf(1 - alpha / 2)
    est = estimate(ai.probability[None, :], study.truth, FigureOfMerit.AUC, covariance)
    auc = float(est.values[0])
    half = z * math.sqrt(max(float(est.covariance[0, 0]), 0.0))
    positives, negatives = study.truth == 1, study.truth == 0
    points = []
    for point in ai.operating_points:
        calls = ai.calls(point)
        sens, spec = calls[positives].mean(), 1.0 - calls[negatives].mean()
        points.append(
            AIOperatingResult(
                point.name,
                point.threshold,
                float(sens),
                wilson_interval(round(sens * positives.sum()), int(positives.sum()), 1 - alpha),
                float(spec),
                wilson_interval(round(spec * negatives.sum()), int(negatives.sum()), 1 - alpha),
            )
        )
    fpr, tpr, _ = roc_points(ai.probability, study.truth)
    return AISummary(
        ai.source,
        ai.model_id,
        ai.threshold_source,
        auc,
        (_clip(auc - half), _clip(auc + half)),
        tuple(points),
        tuple(float(v) for v in fpr),
        tuple(float(v) for v in tpr),
    )
