"""Reading and matching predictions and labels: bad input gets a message naming file, column and lines."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fracsight.data.ids import case_id
from fracsight.data.split_file import SplitFileError, split_ids
from fracsight.evaluation.errors import LabelsError, PredictionsError, SingleClassError
from fracsight.evaluation.groups import MIN_POSITIVES, group_table
from fracsight.evaluation.inputs import (
    match_cases,
    read_labels,
    read_predictions,
    restrict_labels,
)
from fracsight.evaluation.metrics import auc_with_ci
from fracsight.evaluation.operating_points import OperatingPoint

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FRACATLAS = SHARED / "data" / "fracatlas"


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _pair(tmp_path: Path, n: int = 40, seed: int = 0) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n // 2, int), np.zeros(n - n // 2, int)]
    p = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)
    regions = np.array(["hand", "leg"])[np.arange(n) % 2]
    preds = _write(
        tmp_path / "preds.csv",
        ["path", "probability", "category", "heatmap", "error"],
        [[f"/data/images/case{i:03d}.png", f"{p[i]:.5f}", "", "", ""] for i in range(n)],
    )
    labels = _write(
        tmp_path / "labels.csv",
        ["id", "fractured", "region"],
        [[f"case{i:03d}", y[i], regions[i]] for i in range(n)],
    )
    return preds, labels, p, y


def test_ids_match_by_file_stem() -> None:
    assert case_id("/a/b/IMG0000001.jpg", from_path=True) == "IMG0000001"
    assert case_id("IMG0000001.jpg") == "IMG0000001"
    assert case_id("C:\\scans\\case 7.dcm") == "case 7"
    assert case_id("patient.12") == "patient.12"  # not an image suffix: kept as is


def test_predictions_and_labels_are_matched(tmp_path: Path) -> None:
    preds, labels, p, y = _pair(tmp_path)
    cases = match_cases(read_predictions(preds), read_labels(labels), ["region"])
    assert cases.n == 40 and cases.n_positive == 20
    np.testing.assert_allclose(cases.probabilities, np.round(p, 5))
    np.testing.assert_array_equal(cases.labels, y)
    assert cases.groups["region"][:2] == ["hand", "leg"]


def test_rows_with_an_error_are_listed_not_dropped(tmp_path: Path) -> None:
    preds, labels, _, _ = _pair(tmp_path)
    rows = list(csv.reader(preds.open()))
    rows[3] = [rows[3][0], "", "", "", "not a radiograph: DICOM modality CT"]
    _write(preds, rows[0], rows[1:])
    cases = match_cases(read_predictions(preds), read_labels(labels))
    assert cases.n == 39
    assert [(e.id, e.reason) for e in cases.excluded] == [("case002", "not a radiograph: DICOM modality CT")]


@pytest.mark.parametrize(
    "bad_value,message",
    [
        ("nan", r"1 NaN values \(line 5\)"),
        ("1.7", r"outside \[0, 1\] \(line 5\)"),
        ("", r"not a number.*line 5"),
    ],
)
def test_bad_probabilities_are_named_with_their_line(tmp_path: Path, bad_value: str, message: str) -> None:
    preds, _, _, _ = _pair(tmp_path)
    rows = list(csv.reader(preds.open()))
    rows[4][1] = bad_value
    _write(preds, rows[0], rows[1:])
    with pytest.raises(PredictionsError, match=message):
        read_predictions(preds)


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    preds, _, _, _ = _pair(tmp_path)
    rows = list(csv.reader(preds.open()))
    rows[2][0] = ""
    rows[6][1] = "-0.2"
    rows[9][1] = "2"
    _write(preds, rows[0], rows[1:])
    with pytest.raises(PredictionsError) as info:
        read_predictions(preds)
    text = str(info.value)
    assert "column 'path' is empty in 1 rows (line 3)" in text
    assert "2 values outside [0, 1] (lines 7, 10)" in text
    assert str(preds) in text


def test_labelled_cases_without_prediction_are_an_error_unless_allowed(tmp_path: Path) -> None:
    preds, labels, _, _ = _pair(tmp_path)
    rows = list(csv.reader(preds.open()))
    _write(preds, rows[0], rows[1:-2])  # drop the last two predictions
    with pytest.raises(
        PredictionsError, match=r"no row for 2 of the 40 labelled cases \(ids case038, case039\)"
    ):
        match_cases(read_predictions(preds), read_labels(labels))
    cases = match_cases(read_predictions(preds), read_labels(labels), allow_missing=True)
    assert cases.n == 38
    assert {e.id for e in cases.excluded} == {"case038", "case039"}


def test_one_class_only_is_refused(tmp_path: Path) -> None:
    preds, labels, _, _ = _pair(tmp_path)
    rows = list(csv.reader(labels.open()))
    _write(labels, rows[0], [[r[0], "1", r[2]] for r in rows[1:]])
    with pytest.raises(SingleClassError, match=r"all 40 analysable cases are fractured \(1\)"):
        match_cases(read_predictions(preds), read_labels(labels))


def test_bad_labels_and_missing_columns_are_named(tmp_path: Path) -> None:
    labels = _write(tmp_path / "l.csv", ["id", "fractured"], [["a", "1"], ["b", "yes please"], ["c", "0"]])
    with pytest.raises(LabelsError, match=r"'fractured' is not a fracture label.*line 3: 'yes please'"):
        read_labels(labels)
    no_label = _write(tmp_path / "n.csv", ["id", "region"], [["a", "hand"]])
    with pytest.raises(LabelsError, match="no 'fractured'"):
        read_labels(no_label)
    dup = _write(tmp_path / "d.csv", ["id", "fractured"], [["a", "1"], ["a", "0"]])
    with pytest.raises(LabelsError, match=r"repeated ids: a \(lines 2 and 3\)"):
        read_labels(dup)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_predictions(tmp_path / "absent.csv")


def test_unknown_group_column_lists_the_available_ones(tmp_path: Path) -> None:
    preds, labels, _, _ = _pair(tmp_path)
    with pytest.raises(LabelsError, match="no column 'view'.*available: region"):
        match_cases(read_predictions(preds), read_labels(labels), ["view"])


def test_split_file_restricts_the_labels(tmp_path: Path) -> None:
    preds, labels, _, _ = _pair(tmp_path)
    split = _write(
        tmp_path / "split.csv",
        ["id", "split"],
        [[f"case{i:03d}", "test" if i < 24 else "train"] for i in range(40)],
    )
    table = restrict_labels(read_labels(labels), split_ids(split, "test"), "split test")
    cases = match_cases(read_predictions(preds), table)
    assert cases.n == 24 and cases.unmatched_predictions == 16
    with pytest.raises(
        SplitFileError, match=r"no case in split 'validation'; its splits are \['test', 'train'\]"
    ):
        split_ids(split, "validation")


def test_group_cells_withhold_values_from_too_few_cases(tmp_path: Path) -> None:
    preds, labels, p, y = _pair(tmp_path, n=60)
    rows = list(csv.reader(labels.open()))
    # Make 'hip' a small cell: 4 fractured and 3 non-fractured cases.
    small = [0, 2, 4, 6, 31, 33, 35]
    for i in small:
        rows[i + 1][2] = "hip"
    _write(labels, rows[0], rows[1:])
    cases = match_cases(read_predictions(preds), read_labels(labels), ["region"])
    points = [OperatingPoint("fracture", 0.5, "test")]
    table = group_table(cases, "region", points)
    cells = {c.value: c for c in table.cells}
    assert sum(c.n for c in table.cells) == 60
    hip = cells["hip"]
    assert (hip.n_positive, hip.n_negative) == (4, 3) and hip.too_small and hip.auc is None
    assert "too few cases" in hip.warning() and f"< {MIN_POSITIVES}" in hip.warning()
    assert hip.to_dict()["operating_points"]["fracture"]["sensitivity"] == {
        "withheld": "only 4 fractured cases"
    }
    hand = cells["hand"]
    mask = np.array(cases.groups["region"]) == "hand"
    assert not hand.too_small
    assert hand.auc.value == pytest.approx(auc_with_ci(cases.probabilities[mask], cases.labels[mask]).value)


@pytest.mark.skipif(not FRACATLAS.is_dir(), reason="shared FracAtlas data not present")
def test_fracatlas_dataset_csv_works_as_a_labels_file() -> None:
    labels = read_labels(FRACATLAS / "dataset.csv")
    assert len(labels.ids) == 3229 and labels.ids[0].startswith("IMG") and not labels.ids[0].endswith(".jpg")
    regions = set(labels.columns["region"])
    assert {"hand", "leg", "hip", "shoulder", "mixed"} <= regions
    n_fractured = sum(1 for _ in (FRACATLAS / "images" / "Fractured").glob("*.jpg"))
    assert int(labels.fractured.sum()) == n_fractured
