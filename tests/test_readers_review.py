"""Regressions found in review: CI labels, CLI option checks, AI case column, margins, NI wording."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest

from fracsight.cli import main
from fracsight.reader_study import (
    FigureOfMerit,
    RoeMetzConfig,
    analyse_study,
    load_ai_predictions,
    simulate_roe_metz,
)
from fracsight.reader_study.errors import ReaderStudyError
from fracsight.reader_study.html_report import render
from fracsight.reader_study.simulate import write_reads_csv
from fracsight.reader_study.summary import plain_summary


@pytest.fixture()
def study():
    simulated = simulate_roe_metz(
        RoeMetzConfig(n_readers=3, n_normal=12, n_diseased=12), np.random.default_rng(4)
    )
    return replace(simulated, modalities=("unaided", "aided"))


def test_html_ci_labels_state_the_level_computed(study):
    page = render(analyse_study(study, alpha=0.10, by_region=False))
    assert "90% CI" in page and "whiskers: 90% CI" in page
    assert "95% CI" not in page


def test_plan_pilot_without_calls_for_sensitivity_is_a_clear_error(study, tmp_path, capsys):
    path = tmp_path / "ratings_only.csv"
    write_reads_csv(replace(study, calls=None), str(path))
    code = main(["readers", str(path), "--plan", "--fom", "sensitivity", "--readers", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "sensitivity pilot needs binary calls" in err and str(path) in err


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        (["--plan", "--power", "0"], "--power"),
        (["--plan", "--power", "80"], "--power"),
        (["--alpha", "5"], "--alpha"),
    ],
)
def test_level_and_power_outside_unit_interval_are_refused(study, tmp_path, capsys, extra, option):
    path = tmp_path / "reads.csv"
    write_reads_csv(study, str(path))
    code = main(["readers", str(path), "--report", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and f"argument {option}:" in err and "(0, 1)" in err
    assert not (tmp_path / "out").exists()


def test_ai_file_matches_cases_with_the_same_header_spellings_as_the_reads_file(study, tmp_path):
    path = tmp_path / "ai.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Case ID", "probability"])
        writer.writerows([c, "0.5"] for c in study.case_ids)
    ai = load_ai_predictions(path, study.case_ids, threshold=0.5)
    assert ai.probability.shape == (study.n_cases,)


def test_margin_for_a_figure_not_analysed_is_refused(study):
    with pytest.raises(ReaderStudyError, match=r"margin was given for sensitivity, which is not analysed"):
        analyse_study(study, foms=[FigureOfMerit.AUC], margins={FigureOfMerit.SENSITIVITY: 0.05})


def test_non_inferiority_sentence_says_which_arm_is_non_inferior_to_which(study):
    result = analyse_study(
        study, foms=[FigureOfMerit.AUC], margins={FigureOfMerit.AUC: 0.05}, by_region=False
    )
    [sentence] = [s for s in plain_summary(result) if "Non-inferiority" in s]
    assert "Non-inferiority of unaided to aided within 0.05" in sentence
