"""Bad reader-study input gives one clear error naming the thing, the value and the rule."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fracsight.cli import main
from fracsight.reader_study import (
    FigureOfMerit,
    IncompletePolicy,
    RoeMetzConfig,
    ai_arm,
    analyse_study,
    load_reads,
    simulate_roe_metz,
)
from fracsight.reader_study.ai_arm import load_ai_predictions
from fracsight.reader_study.errors import (
    BadValue,
    DuplicateRead,
    IncompleteDesign,
    InconsistentTruth,
    MissingAIPrediction,
    MissingColumn,
    NotEstimable,
    ReaderStudyError,
    SingleClass,
)
from fracsight.reader_study.simulate import write_reads_csv


@pytest.fixture()
def reads_rows(tmp_path):
    """A small, valid, fully crossed study (3 readers, 2 modalities, 24 cases) as CSV rows."""
    study = simulate_roe_metz(
        RoeMetzConfig(n_readers=3, n_normal=12, n_diseased=12), np.random.default_rng(1)
    )
    path = tmp_path / "valid.csv"
    write_reads_csv(study, str(path))
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _write(tmp_path: Path, rows: list[dict], name: str = "reads.csv") -> Path:
    path = tmp_path / name
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_valid_file_loads_fully_crossed(tmp_path, reads_rows):
    study = load_reads(_write(tmp_path, reads_rows))
    assert study.ratings.shape == (2, 3, 24) and not np.isnan(study.ratings).any()
    assert study.call_rule == "column 'call'"


def test_case_with_two_truths(tmp_path, reads_rows):
    target = next(r for r in reads_rows if r["case_id"] == "c5" and r["reader"] == "r2")
    target["truth"] = "1"
    with pytest.raises(InconsistentTruth, match=r"case 'c5' has truth 0 \(line 6\) and truth 1 \(line \d+\)"):
        load_reads(_write(tmp_path, reads_rows))


def test_reader_missing_a_modality_says_what_is_missing(tmp_path, reads_rows):
    rows = [r for r in reads_rows if not (r["reader"] == "r3" and r["modality"] == "m2")]
    path = _write(tmp_path, rows)
    with pytest.raises(IncompleteDesign, match=r"reader 'r3' has no reads in modality 'm2'.*--incomplete"):
        load_reads(path)
    kept = load_reads(path, incomplete=IncompletePolicy.DROP_READERS)
    assert kept.readers == ("r1", "r2")
    assert analyse_study(kept).overall.comparisons


def test_reader_missing_some_cases_can_drop_those_cases(tmp_path, reads_rows):
    rows = [
        r
        for r in reads_rows
        if not (r["reader"] == "r1" and r["modality"] == "m1" and r["case_id"] in ("c2", "c3"))
    ]
    path = _write(tmp_path, rows)
    with pytest.raises(
        IncompleteDesign, match=r"reader 'r1' in modality 'm1' lacks 2 of 24 cases \(c2, c3\)"
    ):
        load_reads(path)
    kept = load_reads(path, incomplete=IncompletePolicy.DROP_CASES)
    assert kept.n_cases == 22 and "c2" not in kept.case_ids and len(kept.readers) == 3


def test_non_numeric_rating_names_line_and_value(tmp_path, reads_rows):
    reads_rows[6]["rating"] = "high"
    with pytest.raises(BadValue, match=r"'rating'.*line 8: 'high'"):
        load_reads(_write(tmp_path, reads_rows))


def test_call_other_than_zero_or_one(tmp_path, reads_rows):
    reads_rows[0]["call"] = "2"
    with pytest.raises(BadValue, match=r"'call' has 1 value\(s\) other than 0 or 1 \(lines 2\)"):
        load_reads(_write(tmp_path, reads_rows))


def test_truth_reads_label_spellings(tmp_path, reads_rows):
    """Truth follows the labels rule of train/evaluate/audit, so one labels column works in both."""
    expected = load_reads(_write(tmp_path, reads_rows, "plain.csv")).truth
    for row in reads_rows:
        row["truth"] = {"1": "Fractured", "0": "0.0"}[row["truth"]]
    study = load_reads(_write(tmp_path, reads_rows))
    np.testing.assert_array_equal(study.truth, expected)


@pytest.mark.parametrize("bad", ["2", "maybe"])
def test_truth_other_than_a_label_names_line_and_value(tmp_path, reads_rows, bad):
    reads_rows[3]["truth"] = bad
    with pytest.raises(
        BadValue, match=rf"reads.csv: column 'truth' .*line 5: '{bad}'.*accepted: fractured: 1"
    ):
        load_reads(_write(tmp_path, reads_rows))


def test_one_class_only(tmp_path, reads_rows):
    rows = [r for r in reads_rows if r["truth"] == "1"]
    with pytest.raises(SingleClass, match=r"all 12 cases are fractured"):
        load_reads(_write(tmp_path, rows))


def test_duplicate_read(tmp_path, reads_rows):
    rows = reads_rows + [dict(reads_rows[3])]
    with pytest.raises(DuplicateRead, match=r"case 'c4' reader 'r1' modality 'm1' \(lines 5 and 146\)"):
        load_reads(_write(tmp_path, rows))


def test_missing_column_lists_the_columns_present(tmp_path, reads_rows):
    rows = [{k: v for k, v in r.items() if k != "truth"} for r in reads_rows]
    with pytest.raises(MissingColumn, match=r"no column named 'truth'.*columns present: case_id, reader"):
        load_reads(_write(tmp_path, rows))


def test_single_reader_is_refused(tmp_path, reads_rows):
    rows = [r for r in reads_rows if r["reader"] == "r1"]
    with pytest.raises(IncompleteDesign, match="at least 2 readers"):
        load_reads(_write(tmp_path, rows))


def test_cutoff_makes_calls_and_missing_calls_block_sensitivity(tmp_path, reads_rows):
    rows = [{k: v for k, v in r.items() if k != "call"} for r in reads_rows]
    path = _write(tmp_path, rows)
    study = load_reads(path)
    with pytest.raises(NotEstimable, match="sensitivity needs binary calls"):
        analyse_study(study, foms=[FigureOfMerit.SENSITIVITY])
    cut = load_reads(path, cutoff=0.75)
    assert cut.call_rule == "rating >= 0.75"
    assert np.array_equal(cut.calls, (cut.ratings >= 0.75).astype(float))


def test_region_disagreeing_within_a_case(tmp_path, reads_rows):
    for r in reads_rows:
        r["region"] = "hand"
    reads_rows[30]["region"] = "hip"
    case = reads_rows[30]["case_id"]
    with pytest.raises(InconsistentTruth, match=rf"'{case}' \(hand / hip\)"):
        load_reads(_write(tmp_path, reads_rows))


def test_region_with_one_class_is_described_not_fatal(tmp_path, reads_rows):
    for r in reads_rows:
        fractured = r["truth"] == "1"
        r["region"] = (
            "hip" if fractured and int(r["case_id"][1:]) % 2 else ("hand" if not fractured else "leg")
        )
    result = analyse_study(load_reads(_write(tmp_path, reads_rows)))
    regions = {g.label: g for g in result.regions}
    assert set(regions) == {"region hand", "region hip", "region leg"}
    hip = regions["region hip"]
    assert hip.n_fractured == hip.n_cases > 0
    assert {s.fom for s in hip.summaries} == {FigureOfMerit.SENSITIVITY}
    assert any("auc not estimable" in n for n in hip.notes) and any(
        "specificity not estimable" in n for n in hip.notes
    )
    assert result.overall.notes == ()


def _ai_rows(case_ids, probability=0.5):
    return [
        {"path": f"/images/{c}.png", "probability": str(probability), "category": "", "error": ""}
        for c in case_ids
    ]


def test_ai_rows_are_matched_by_file_stem_and_errors_count_as_missing(tmp_path, reads_rows):
    study = load_reads(_write(tmp_path, reads_rows))
    rows = _ai_rows(study.case_ids)
    rows[4]["probability"], rows[4]["error"] = "", "not a radiograph: CT slice"
    path = _write(tmp_path, rows, "ai.csv")
    with pytest.raises(MissingAIPrediction, match=r"1 of 24 study cases \(c5\).*file stem of column 'path'"):
        load_ai_predictions(path, study.case_ids, threshold=0.5)
    rows[4]["probability"], rows[4]["error"] = "0.9", ""
    ai = load_ai_predictions(_write(tmp_path, rows, "ai.csv"), study.case_ids, threshold=0.5)
    assert ai.probability[4] == 0.9 and ai.primary.threshold == 0.5


def test_ai_probability_outside_unit_interval(tmp_path, reads_rows):
    study = load_reads(_write(tmp_path, reads_rows))
    rows = _ai_rows(study.case_ids)
    rows[2]["probability"] = "1.7"
    with pytest.raises(BadValue, match=r"outside \[0, 1\].*line 4: '1.7'"):
        load_ai_predictions(_write(tmp_path, rows, "ai.csv"), study.case_ids, threshold=0.5)


def test_ai_thresholds_come_from_a_model_card(tmp_path, reads_rows):
    study = load_reads(_write(tmp_path, reads_rows))
    card = tmp_path / "model.card.json"
    card.write_text(
        json.dumps(
            {
                "model_id": "m-1",
                "thresholds": {"doubt": 0.2, "fracture": 0.6},
                "threshold_source": "out-of-fold predictions",
            }
        )
    )
    ai = load_ai_predictions(_write(tmp_path, _ai_rows(study.case_ids), "ai.csv"), study.case_ids, card=card)
    assert [(p.name, p.threshold) for p in ai.operating_points] == [("fracture", 0.6), ("doubt", 0.2)]
    assert ai.model_id == "m-1" and "out-of-fold" in ai.threshold_source


def test_without_threshold_or_card_sensitivity_needs_ai_threshold(tmp_path, reads_rows, monkeypatch):
    monkeypatch.setattr(ai_arm, "default_card_path", lambda: tmp_path / "absent.card.json")
    study = load_reads(_write(tmp_path, reads_rows))
    ai = load_ai_predictions(_write(tmp_path, _ai_rows(study.case_ids), "ai.csv"), study.case_ids)
    assert ai.primary is None
    assert (
        analyse_study(study, ai=ai, foms=[FigureOfMerit.AUC]).overall.ai is not None
    )  # AUC needs no threshold
    with pytest.raises(ReaderStudyError, match="--ai-threshold"):
        analyse_study(study, ai=ai)


def test_unknown_comparison_modality(tmp_path, reads_rows):
    study = load_reads(_write(tmp_path, reads_rows))
    with pytest.raises(
        ReaderStudyError, match=r"modality 'aided' is not in the study \(modalities present: m1, m2\)"
    ):
        analyse_study(study, comparisons=[("aided", "m1")])


def test_cli_prints_one_line_and_exits_2_on_bad_input(tmp_path, reads_rows, capsys):
    reads_rows[0]["rating"] = "n/a"
    code = main(["readers", str(_write(tmp_path, reads_rows)), "--report", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "fracsight readers: error:" in err and "'n/a'" in err
    assert not (tmp_path / "out").exists()
