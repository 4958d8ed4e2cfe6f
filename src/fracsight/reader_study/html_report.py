"""The reader-study HTML report: one self-contained page (inline SVG, no scripts, no requests).

Shows the "without AI / with AI / AI alone" bars with CIs, each reader's ROC operating
point over the AI's ROC curve, a plain-language summary stating the test and its result,
and the tables behind them; with a clicks CSV, the reading times and clicks per modality.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fracsight.reader_study.analysis import AI_LABEL, AI_METHOD, MODALITY_METHOD
from fracsight.reader_study.clicks import CLICK_MEANING, TIME_MEANING
from fracsight.reader_study.fom import FigureOfMerit, roc_points
from fracsight.reader_study.report import REFERENCES
from fracsight.reader_study.results import GroupResult, StudyAnalysis
from fracsight.reader_study.summary import fmt, fmt_df, fmt_p, plain_summary
from fracsight.reporting import (
    BarSeries,
    LineSeries,
    MarkedPoint,
    Markup,
    NoteKind,
    bar_chart,
    facts,
    figure,
    line_chart,
    note,
    page,
    paragraph,
    row_of,
    section,
    table,
)
from fracsight.reporting.svg import PALETTE

AI_COLOUR = "#000000"


def _ci(low: float, high: float) -> str:
    return f"{fmt(low)} to {fmt(high)}"


def _level(alpha: float) -> str:
    """'95% CI' at alpha 0.05: every CI label must state the level the CIs were computed at."""
    return f"{100 * (1 - alpha):g}% CI"


def _colour(index: int) -> str:
    return PALETTE[index % (len(PALETTE) - 1)]  # the last palette entry (black) is the AI's


def bars(analysis: StudyAnalysis) -> Markup:
    """Grouped bars per figure of merit: each modality (reader-averaged, CI) and the AI alone."""
    group = analysis.overall
    foms = [
        f
        for f in (FigureOfMerit.SENSITIVITY, FigureOfMerit.SPECIFICITY, FigureOfMerit.AUC)
        if f in analysis.foms
    ]
    by_key = {(s.fom, s.modality): s for s in group.summaries}
    series = []
    for i, modality in enumerate(analysis.study.modalities):
        found = [by_key.get((f, modality)) for f in foms]
        series.append(
            BarSeries(
                f"readers, {modality} (mean of {len(analysis.study.readers)})",
                [s.value if s else None for s in found],
                [s.ci_low if s else None for s in found],
                [s.ci_high if s else None for s in found],
                color=_colour(i),
            )
        )
    if group.ai is not None:
        ai = group.ai
        op = ai.operating_points[0] if ai.operating_points else None
        triples: list[tuple[float | None, float | None, float | None]] = []
        for f in foms:
            if f is FigureOfMerit.AUC:
                triples.append((ai.auc, *ai.auc_ci))
            elif op is None:
                triples.append((None, None, None))
            elif f is FigureOfMerit.SENSITIVITY:
                triples.append((op.sensitivity, *op.sensitivity_ci))
            else:
                triples.append((op.specificity, *op.specificity_ci))
        values, lows, highs = ([t[k] for t in triples] for k in range(3))
        name = AI_LABEL + (f" (threshold {op.threshold:g})" if op else "")
        series.append(BarSeries(name, values, lows, highs, color=AI_COLOUR))
    notes = [
        {
            FigureOfMerit.SENSITIVITY: f"{group.n_fractured} fractured",
            FigureOfMerit.SPECIFICITY: f"{group.n_cases - group.n_fractured} not fractured",
            FigureOfMerit.AUC: f"{group.n_cases} cases",
        }[f]
        for f in foms
    ]
    chart = bar_chart(
        [f.label for f in foms],
        series,
        title="Readers by modality" + (" and the AI alone" if group.ai else ""),
        y_label=f"value ({_level(analysis.alpha)})",
        category_notes=notes,
        element_id="bars",
        ci_label=_level(analysis.alpha),
    )
    return figure(
        chart,
        "Bars: reader-averaged values per modality (CI from the one-modality OR analysis, readers and cases "
        "random)" + (" and the AI alone (Wilson CI for proportions)." if group.ai else "."),
    )


def roc_chart(analysis: StudyAnalysis) -> Markup:
    """The AI's empirical ROC curve with each reader's operating point (or curve) per modality."""
    group, study = analysis.overall, analysis.study
    series: list[LineSeries] = []
    points: list[MarkedPoint] = []
    if group.ai is not None:
        series.append(
            LineSeries(
                f"{AI_LABEL} (AUC {fmt(group.ai.auc)})", group.ai.roc_fpr, group.ai.roc_tpr, color=AI_COLOUR
            )
        )
    sens = {(s.modality): s for s in group.summaries if s.fom is FigureOfMerit.SENSITIVITY}
    spec = {(s.modality): s for s in group.summaries if s.fom is FigureOfMerit.SPECIFICITY}
    for i, modality in enumerate(study.modalities):
        colour = _colour(i)
        if modality in sens and modality in spec:
            se, sp = sens[modality], spec[modality]
            for r_se, r_sp in zip(se.per_reader, sp.per_reader, strict=True):
                points.append(
                    MarkedPoint(1 - r_sp.value, r_se.value, f"{modality}: reader {r_se.reader}", color=colour)
                )
            points.append(
                MarkedPoint(
                    1 - sp.value,
                    se.value,
                    f"{modality}: reader average ({_level(analysis.alpha)})",
                    x_lower=1 - sp.ci_high,
                    x_upper=1 - sp.ci_low,
                    y_lower=se.ci_low,
                    y_upper=se.ci_high,
                    color=colour,
                )
            )
        elif study.ratings is not None:
            for j, reader in enumerate(study.readers):
                fpr, tpr, _ = roc_points(study.ratings[i, j], study.truth)
                series.append(
                    LineSeries(f"{modality}: reader {reader}", fpr, tpr, color=colour, dashed=i > 0)
                )
    chart = line_chart(
        series,
        title="Readers' ROC points over the AI's ROC curve" if group.ai else "Readers' ROC",
        x_label="1 - specificity (false-positive fraction)",
        y_label="sensitivity (true-positive fraction)",
        points=points,
        diagonal="chance",
        element_id="roc",
        ci_label=_level(analysis.alpha),
    )
    caption = (
        f"Each point is one reader's binary call ({study.call_rule}) on {study.n_cases} cases."
        if sens
        else "Each line is one reader's empirical ROC curve from the ratings (no binary calls given)."
    )
    return figure(chart, caption)


def _summary_table(group: GroupResult, alpha: float) -> Markup:
    rows = [
        [s.fom.label, s.modality, fmt(s.value), _ci(s.ci_low, s.ci_high), fmt_df(s.df), s.n_cases]
        for s in group.summaries
    ]
    return table(
        ["figure of merit", "modality", "reader average", _level(alpha), "Hillis df", "cases used"],
        rows,
        caption=f"Reader-averaged figures of merit ({group.label})",
    )


def _reader_table(group: GroupResult, alpha: float) -> Markup:
    rows = [
        [r.reader, s.fom.label, s.modality, fmt(r.value), _ci(r.ci_low, r.ci_high)]
        for s in group.summaries
        for r in s.per_reader
    ]
    return table(
        ["reader", "figure of merit", "modality", "value", _level(alpha)],
        rows,
        caption=f"Per reader ({group.label})",
    )


def _comparison_table(group: GroupResult, alpha: float) -> Markup:
    rows = []
    for c in group.comparisons:
        for label, t in (
            ("random readers, random cases", c.primary),
            ("fixed readers", c.fixed_readers),
            ("fixed cases", c.fixed_cases),
        ):
            rows.append(
                [
                    f"{c.fom.label}: {c.modality_a} - {c.modality_b}",
                    label,
                    f"{fmt(c.fom_a)} / {fmt(c.fom_b)}",
                    f"{t.estimate:+.4f}",
                    _ci(t.ci_low, t.ci_high),
                    fmt(t.f, 3),
                    fmt_df(t.df_den),
                    fmt_p(t.p),
                ]
            )
    return table(
        ["comparison", "readers / cases", "a / b", "difference", _level(alpha), "F", "df (den)", "p"],
        rows,
        caption=f"Comparisons ({group.label}); df numerator 1; df inf = chi-square reference",
    )


def _margin_table(group: GroupResult) -> Markup:
    rows = []
    for c in group.comparisons:
        for test in (c.superiority, c.non_inferiority):
            if test is None:
                continue
            rows.append(
                [
                    f"{c.fom.label}: {c.modality_a} - {c.modality_b}",
                    test.hypothesis,
                    f"{test.bound:+g}",
                    fmt(test.t, 3),
                    fmt_df(test.df),
                    fmt_p(test.p),
                    "yes" if test.passed else "no",
                ]
            )
    return table(
        ["comparison", "test", "difference must exceed", "t", "df", "one-sided p", "shown"],
        rows,
        caption="One-sided tests at alpha/2 (random readers and cases)",
    )


def _variance_table(group: GroupResult) -> Markup:
    keys = ("var_error", "cov1", "cov2", "cov3", "var_r", "var_tr", "ms_t", "ms_r", "ms_tr")
    rows = []
    for v in group.variance_components:
        rows.append(
            [f"{v['fom'].label}: {' vs '.join(v['modalities'])}"]
            + [f"{v[k]:.8f}" if isinstance(v.get(k), float) and math.isfinite(v[k]) else "" for k in keys]
        )
    return table(
        [
            "figure of merit, arms",
            "Var(error)",
            "Cov1",
            "Cov2",
            "Cov3",
            "Var(R)",
            "Var(TxR)",
            "MS(T)",
            "MS(R)",
            "MS(TxR)",
        ],
        rows,
        caption="Obuchowski-Rockette variance components (for readers vs AI: of the per-reader differences)",
    )


def _ai_table(group: GroupResult, alpha: float) -> Markup:
    ai = group.ai
    if ai is None:
        return Markup("")
    rows = [["ROC AUC (all thresholds)", "", f"{fmt(ai.auc)} ({_ci(*ai.auc_ci)})", ""]]
    for op in ai.operating_points:
        rows.append(
            [
                f"operating point '{op.name}'",
                f"{op.threshold:g}",
                f"sensitivity {fmt(op.sensitivity)} ({_ci(*op.sensitivity_ci)})",
                f"specificity {fmt(op.specificity)} ({_ci(*op.specificity_ci)})",
            ]
        )
    return table(
        ["AI alone", "threshold", f"value ({_level(alpha)})", ""],
        rows,
        caption=f"AI alone on the same {group.n_cases} cases ({group.n_fractured} fractured)",
    )


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def reading_section(reading: dict[str, Any], source: str) -> Markup:
    """Per modality (arm): the median reading time with its quartiles and range, and the clicks
    (:func:`fracsight.reader_study.clicks.summarise_clicks`), naming the file they come from."""
    times, clicks = [], []
    for name, s in reading.items():
        iqr, span = s.get("iqr_seconds"), s.get("range_seconds")
        times.append([name, s["reads"], s.get("readers", ""), _seconds(s["median_seconds"]),
                      f"{_seconds(iqr[0])} to {_seconds(iqr[1])}" if iqr else "n/a",
                      f"{_seconds(span[0])} to {_seconds(span[1])}" if span else "n/a"])  # fmt: skip
        where = s["localised"]
        rate = "n/a" if where["rate"] is None else f"{100 * where['rate']:.0f}%"
        clicked = s.get("clicked")
        clicked = "n/a" if clicked is None else clicked
        clicks.append([name, s["reads"], clicked, where["scored"], where["hits"], rate])
    readers = {who for s in reading.values() for who in s["median_seconds_by_reader"]}
    data = f"{source}: {sum(s['reads'] for s in reading.values())} reads, {len(readers)} readers"
    by_reader = [
        [name, who, _seconds(seconds)]
        for name, s in reading.items()
        for who, seconds in s["median_seconds_by_reader"].items()
    ]
    return section(
        "Reading time and clicks",
        [
            facts([("data", data), ("reading time", TIME_MEANING), ("clicks", CLICK_MEANING)]),
            table(
                ["modality", "reads", "readers", "median s per read", "IQR, s", "range, s"],
                times,
                caption="Seconds per read, by modality (all reads)",
                element_id="reading-times",
            ),
            table(
                ["modality", "reads", "reads with a click", "clicks scored", "in a fracture box", "share"],
                clicks,
                caption="Clicks on the suspected site, by modality",
                element_id="reading-clicks",
            ),
            table(
                ["modality", "reader", "median s per read"],
                by_reader,
                caption="Median seconds per read, by reader",
            ),
            note(
                "Reading times are descriptive: they are not part of the ROC test, and a second session "
                "is read by readers who have seen the cases before (after the washout).",
            ),
        ],
        element_id="reading",
    )


def _group_tables(group: GroupResult, alpha: float) -> list[Markup]:
    parts = [_summary_table(group, alpha)]
    if group.comparisons:
        parts += [_comparison_table(group, alpha), _margin_table(group)]
    if group.ai is not None:
        parts.append(_ai_table(group, alpha))
    parts += [note(n, NoteKind.WARNING) for n in group.notes]
    return parts


def render(analysis: StudyAnalysis, reading: dict[str, Any] | None = None, reading_source: str = "") -> str:
    """The complete HTML page; ``reading``: the clicks CSV's summary (from ``reading_source``)."""
    study = analysis.study
    summary = plain_summary(analysis)
    data_facts = [
        ("data", study.source),
        ("cases", f"{study.n_cases} ({study.n_diseased} fractured, {study.n_normal} not)"),
        ("readers", f"{len(study.readers)}: {', '.join(study.readers)}"),
        ("modalities", ", ".join(study.modalities)),
        ("binary calls", study.call_rule or "none (AUC only)"),
        ("covariance", f"{analysis.covariance.value}"),
        ("test", MODALITY_METHOD),
    ]
    if analysis.overall.ai is not None:
        ai = analysis.overall.ai
        data_facts += [
            ("AI predictions", ai.source + (f" (model {ai.model_id})" if ai.model_id else "")),
            ("AI thresholds", ai.threshold_source),
            ("readers vs AI", AI_METHOD),
        ]
    body = [
        section("Summary", [*(paragraph(s) for s in summary), facts(data_facts)], element_id="summary"),
        section(
            "Readers and the AI" if analysis.overall.ai else "Readers",
            [row_of([bars(analysis), roc_chart(analysis)])],
            element_id="charts",
        ),
        section(
            "Results on all cases", _group_tables(analysis.overall, analysis.alpha), element_id="results"
        ),
        section("Variance components", [_variance_table(analysis.overall)], element_id="variance"),
        section("Per reader", [_reader_table(analysis.overall, analysis.alpha)], element_id="readers"),
    ]
    if reading:
        body.append(reading_section(reading, reading_source))
    if analysis.regions:
        body.append(
            section(
                "By region",
                [
                    note(
                        "Regions split the cases: each region's figures rest on fewer cases and have "
                        "wider CIs. They describe where readers and the AI differ; they are not separate "
                        "confirmatory tests.",
                        NoteKind.WARNING,
                    )
                ]
                + [
                    section(
                        f"{g.label}: {g.n_cases} cases ({g.n_fractured} fractured)",
                        _group_tables(g, analysis.alpha),
                        level=3,
                    )
                    for g in analysis.regions
                ],
                element_id="regions",
            )
        )
    footer = ["Generated by fracsight readers. References: ", "; ".join(REFERENCES), "."]
    return page("Reader study", body, subtitle=study.describe(), footer=footer)


def write_html(
    analysis: StudyAnalysis, path: str | Path, reading: dict[str, Any] | None = None, reading_source: str = ""
) -> None:
    Path(path).write_text(render(analysis, reading, reading_source), encoding="utf-8")
