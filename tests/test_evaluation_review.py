"""Regression tests for edge cases found in review: degenerate CIs, unreachable targets, small cells,
JSON that must stay valid, and boxes that localisation cannot score."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fracsight.cli import main
from fracsight.data.audit import audit
from fracsight.data.manifest import ManifestError
from fracsight.decide import categorise
from fracsight.evaluation.adapt import card_with_temperature
from fracsight.evaluation.calibration import TemperatureFit
from fracsight.evaluation.datasets import load_dataset
from fracsight.evaluation.evaluate import EvaluationSettings, evaluate_predictions, user_operating_points
from fracsight.evaluation.expert_boxes import OUTLINE_LEVEL, box_results
from fracsight.evaluation.groups import group_table
from fracsight.evaluation.inputs import match_cases, read_labels, read_predictions
from fracsight.evaluation.metrics import auc_with_ci, bootstrap_auc, delong_ci, wilson_interval
from fracsight.evaluation.operating_points import OperatingPoint, threshold_for_specificity
from fracsight.evaluation.report import write_report
from fracsight.finding import Finding
from fracsight.model_card import ModelIdentity
from fracsight.preprocess import letterbox_geometry


def _pair(tmp_path: Path, p: list[float], y: list[int], extra: str = "", values: list[str] = ()) -> tuple:
    preds, labels = tmp_path / "p.csv", tmp_path / "l.csv"
    preds.write_text("id,probability\n" + "".join(f"c{i},{v!r}\n" for i, v in enumerate(p)))
    head = "id,fractured" + (f",{extra}" if extra else "") + "\n"
    rows = [f"c{i},{label}" + (f",{values[i]}" if extra else "") for i, label in enumerate(y)]
    labels.write_text(head + "\n".join(rows) + "\n")
    return preds, labels


@pytest.mark.parametrize("kind", ["separated", "inverted", "all tied"])
def test_auc_of_0_1_or_all_ties_has_no_zero_width_ci(kind: str) -> None:
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    p = {"separated": y * 0.5 + 0.2, "inverted": 0.7 - y * 0.5, "all tied": np.full(40, 0.4)}[kind]
    delong = delong_ci(p, y)
    boot = bootstrap_auc(p, y, n_resamples=200)[0]
    for estimate in (delong, boot):
        assert estimate.lower is None and estimate.upper is None, estimate
        assert estimate.method.startswith("no CI")
    both = auc_with_ci(p, y, n_resamples=200)
    assert both.to_dict()["delong"]["value"] == delong.value


def test_perfect_separation_reports_and_prints_without_a_ci(tmp_path: Path, capsys) -> None:
    y = [i % 2 for i in range(40)]
    preds, labels = _pair(tmp_path, [0.9 if v else 0.1 for v in y], y)
    args = ["evaluate", "--predictions", str(preds), "--labels", str(labels), "--bootstrap", "200"]
    assert main([*args, "--report", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "ROC AUC 1.000 (no CI" in err and "1.000-1.000" not in err
    assert str(labels) in err  # the printed AUC names the data it was measured on
    html = (tmp_path / "r" / "report.html").read_text()
    assert "1.000 (no CI: no variation" in html and "no CI: no CI" not in html
    assert "1.000\u20131.000" not in html


@pytest.mark.parametrize("n", [1, 2, 7, 10, 49, 50, 51, 99, 100, 1000])
def test_wilson_interval_holds_its_estimate_at_0_and_n(n: int) -> None:
    assert wilson_interval(0, n)[0] == 0.0  # was 2.8e-17 for n = 10: above the estimate 0
    assert wilson_interval(n, n)[1] == 1.0
    for k in range(0, n + 1, max(1, n // 7)):
        low, high = wilson_interval(k, n)
        assert low <= k / n <= high


def test_specificity_target_unreachable_below_1_is_refused_not_written_above_1() -> None:
    p = np.r_[np.full(19, 0.2), 1.0, np.full(20, 0.8)]  # one non-fractured case at probability 1
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    with pytest.raises(ValueError, match="specificity 1.0 cannot be reached: 1 of the 20 non-fractured"):
        threshold_for_specificity(p, y, 1.0)
    assert threshold_for_specificity(p, y, 0.95) == 0.5  # reachable targets still work (between 0.2 and 0.8)
    p[19] = 0.999
    assert 0.999 < threshold_for_specificity(p, y, 1.0) <= 1.0


def test_thresholds_command_writes_no_unloadable_card(tmp_path: Path, capsys) -> None:
    y = [i % 2 for i in range(40)]
    p = [0.8 if v else 0.2 for v in y]
    p[0] = 1.0
    preds, labels = _pair(tmp_path, p, y)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"stand-in")
    card = {"model_id": "m", "input_size": 64, "thresholds": {"fracture": 0.7, "doubt": 0.3}}
    (tmp_path / "m.card.json").write_text(json.dumps(card))
    args = ["thresholds", "--predictions", str(preds), "--labels", str(labels), "--model", str(model)]
    code = main([*args, "--sensitivity", "0.9", "--specificity", "1", "--out", str(tmp_path / "s.onnx")])
    assert code == 2 and "cannot be reached" in capsys.readouterr().err
    assert not (tmp_path / "s.card.json").exists()


def test_small_cells_withhold_ppv_and_npv_too(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = [int(v) for v in np.r_[np.ones(30), np.zeros(30)]]
    p = [float(v) for v in np.round(rng.random(60) * 0.5 + 0.4 * np.array(y), 4)]
    region = ["hip" if i in (0, 1, 2, 30, 31, 32, 33) else "hand" for i in range(60)]
    preds, labels = _pair(tmp_path, p, y, "region", region)
    cases = match_cases(read_predictions(preds), read_labels(labels), ["region"])
    table = group_table(cases, "region", [OperatingPoint("t", 0.5, "test")], prevalence=0.1)
    cells = {c.value: c.to_dict() for c in table.cells}
    hip = cells["hip"]["operating_points"]["t"]
    assert cells["hip"]["too_small"]
    for key in ("sensitivity", "specificity", "ppv", "npv"):
        assert set(hip[key]) == {"withheld"}, key
    assert set(hip["at_prevalence"]["ppv"]) == {"withheld"} and set(hip["at_prevalence"]["npv"]) == {
        "withheld"
    }
    assert hip["confusion"]["tp"] + hip["confusion"]["fn"] == 3  # raw counts stay
    hand = cells["hand"]["operating_points"]["t"]
    assert hand["ppv"]["value"] is not None and hand["at_prevalence"]["ppv"]["value"] is not None


def test_close_user_thresholds_get_distinct_names(tmp_path: Path) -> None:
    points = user_operating_points([0.1234567, 0.1234568, 0.4, 0.4])
    assert [op.name for op in points] == ["threshold 0.1234567", "threshold 0.1234568", "threshold 0.4"]
    y = [i % 2 for i in range(40)]
    preds, labels = _pair(tmp_path, [round(0.2 + 0.4 * v + 0.005 * i, 4) for i, v in enumerate(y)], y)
    evaluation = evaluate_predictions(
        preds, labels, thresholds=[0.1234567, 0.1234568], settings=EvaluationSettings(n_resamples=100)
    )
    assert len(evaluation.rates) == 2


def test_audit_json_stays_valid_when_a_duplicate_pair_has_no_correlation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pair linked by dHash whose correlation is undefined (NaN: the pixels both hold are flat, as
    in the decoded part of a truncated copy) must not make the JSON unreadable."""
    from fracsight.data import audit as audit_module
    from fracsight.data.duplicates import DuplicateKind, DuplicatePair

    pair = DuplicatePair(0, 1, DuplicateKind.NEAR, 3.0, float("nan"))
    monkeypatch.setattr(audit_module, "find_duplicate_pairs", lambda *args: [pair])
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((64, 64), 140, np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,1\nb.png,0\n")
    report = audit(tmp_path / "m.csv", workers=1)
    pairs = [p for g in report.to_json()["duplicate_groups"] for p in g["pairs"]]
    assert pairs, "the planted pair should be found"
    json.dumps(report.to_json(), allow_nan=False)  # raised on NaN before the fix
    assert pairs[0]["correlation"] is None


@pytest.mark.parametrize(
    "boxes,message",
    [
        ("[[10, 10, 10, 30]]", "box 0 [10.0, 10.0, 10.0, 30.0] has no area"),
        ("[[5, 5, 20, 20], [30, 40, 20, 50]]", "box 1 [30.0, 40.0, 20.0, 50.0] has no area"),
        ("[[100, 10, 120, 30]]", "box 0 [100.0, 10.0, 120.0, 30.0] lies wholly outside the 64x48 image"),
    ],
)
def test_manifest_boxes_localisation_cannot_score_are_refused_with_their_line(
    tmp_path: Path, boxes: str, message: str
) -> None:
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(tmp_path / "b.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f'path,label,boxes\nb.png,0,\na.png,1,"{boxes}"\n')
    with pytest.raises(ManifestError, match=rf"m.csv line 3: column 'boxes': {re.escape(message)}"):
        load_dataset(manifest)
    manifest.write_text('path,label,boxes\nb.png,0,\na.png,1,"[[-5, 40, 10, 60]]"\n')  # overhang is fine
    assert load_dataset(manifest).boxes["a"] == [(-5.0, 40.0, 10.0, 60.0)]


def test_metrics_json_of_a_degenerate_evaluation_is_valid_json(tmp_path: Path) -> None:
    y = [i % 2 for i in range(40)]
    preds, labels = _pair(tmp_path, [0.5] * 40, y)
    evaluation = evaluate_predictions(preds, labels, settings=EvaluationSettings(n_resamples=100))
    files = write_report(evaluation, tmp_path / "out")
    metrics = json.loads(files.metrics_json.read_text())
    assert metrics["overall"]["auc"]["delong"].get("lower") is None


def test_temperature_keeps_categories_at_thresholds_0_and_1() -> None:
    card = {
        "model_id": "m",
        "input_size": 64,
        "thresholds": {"fracture": 1.0, "doubt": 0.0},
        "temperature": 1.0,
    }
    fit = TemperatureFit(0.5, 10, 5, 0.0, 0.0, 1.0)
    moved = card_with_temperature(card, fit, "validation.csv", "2025-01-01")["thresholds"]
    assert moved == {"fracture": 1.0, "doubt": 0.0}  # was 1e-14 and 1 - 1e-14 from clipped logits
    raw = np.array([-40.0, -20.0, 5.0])
    before = [categorise(1 / (1 + np.exp(-r)), card["thresholds"]) for r in raw]
    after = [categorise(1 / (1 + np.exp(-r / fit.temperature)), moved) for r in raw]
    assert before == after
    tiny = {**card, "thresholds": {"fracture": 1 - 1e-16, "doubt": 1e-300}}
    assert card_with_temperature(tiny, TemperatureFit(0.01, 10, 5, 0.0, 0.0, 1.0), "v", "d")  # no overflow


def test_thresholds_and_calibrate_name_the_data_their_numbers_come_from(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(2)
    y = [i % 2 for i in range(60)]
    preds, labels = _pair(tmp_path, [round(float(v), 4) for v in rng.random(60) * 0.6 + 0.3 * np.array(y)], y)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"stand-in")
    card = {"model_id": "m", "input_size": 64, "thresholds": {"fracture": 0.7, "doubt": 0.3}}
    (tmp_path / "m.card.json").write_text(json.dumps(card))
    data = ["--predictions", str(preds), "--labels", str(labels), "--model", str(model)]
    assert (
        main(
            [
                "thresholds",
                *data,
                "--sensitivity",
                "0.9",
                "--specificity",
                "0.8",
                "--out",
                str(tmp_path / "t.onnx"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    adapted = json.loads((tmp_path / "t.card.json").read_text())["adaptations"][-1]
    assert str(labels) in err and str(labels) in adapted["data"]
    assert main(["calibrate", *data, "--out", str(tmp_path / "c.onnx")]) == 0
    err = capsys.readouterr().err
    adapted = json.loads((tmp_path / "c.card.json").read_text())["adaptations"][-1]
    assert str(labels) in err and str(labels) in adapted["data"]


THRESHOLDS = {"fracture": 0.6, "doubt": 0.3}


def _finding(grid: np.ndarray, probability: float, height: int = 64, width: int = 64) -> Finding:
    """A real Finding of a hand-made cell map over a 64 px model input (what box_results reads: the
    map on the image, its peak, its outline, its grid and letterbox, the probability)."""
    return Finding(
        probability=probability,
        category=categorise(probability, THRESHOLDS),
        heatmap=np.asarray(grid, dtype=np.float32),
        letterbox=letterbox_geometry(height, width, 64),
        model=ModelIdentity("test-model", None, None, THRESHOLDS),
    )


def test_froc_leaves_out_fractured_images_without_boxes() -> None:
    """A mark on a fractured image whose fracture was not boxed is no false positive."""
    heat = np.zeros((64, 64))
    heat[10:20, 10:20] = 1.0
    cases = SimpleNamespace(ids=["boxed", "unboxed", "normal"], labels=np.array([1, 1, 0]))
    findings = {case: _finding(heat, 0.9) for case in cases.ids}  # a 64 x 64 grid: one cell per image px
    findings["normal"] = _finding(np.zeros((64, 64)), 0.1)  # flat map: no mark
    result = box_results(cases, findings, {"boxed": [(8.0, 8.0, 22.0, 22.0)]}, n_bootstrap=50)
    froc = result["froc"]
    assert froc["n_images"] == 2 and froc["normalised_area"]["value"] == 1.0  # found before any false mark
    assert froc["curve"]["fp_per_image"] == [0.0]
    assert "1 fractured cases without boxes are left out" in result["data"]
    outline = result["outline"]["touches_box"]  # the hot square lies inside the box
    assert (outline["k"], outline["n"]) == (1, 1)
    assert result["outline"]["median_area_fraction"]["value"] == pytest.approx(100 / 64**2)


def test_outline_of_boxed_fractured_images_in_metrics_and_report(tmp_path: Path) -> None:
    """The outline the viewer draws, scored against the boxes: three fractured images on a 128 x 64
    image (a 4 x 4 map over a 64 px input: a cell is 32 image px, the image fills grid rows 1 and 2)."""
    y = [i % 2 for i in range(40)]
    preds, labels = _pair(tmp_path, [0.2 + 0.5 * v + 0.005 * i for i, v in enumerate(y)], y)
    evaluation = evaluate_predictions(preds, labels, settings=EvaluationSettings(n_resamples=100))

    def grid(*cells: tuple[int, int]) -> np.ndarray:
        out = np.full((4, 4), 0.1)
        for cell in cells:
            out[cell] = 1.0
        return out

    findings = {
        "c1": _finding(grid((1, 0)), 0.9, 64, 128),  # x 0..32, y 0..32
        "c3": _finding(grid((1, 0), (1, 1)), 0.9, 64, 128),  # x 0..64, y 0..32
        "c5": _finding(grid((1, 0), (1, 1), (2, 0)), 0.9, 64, 128),  # an L: x 0..64 above, 0..32 below
        "c0": _finding(grid(), 0.1, 64, 128),
        "c2": _finding(grid((2, 3)), 0.2, 64, 128),
    }
    boxes = {
        "c1": [(32.0, 10.0, 50.0, 20.0)],  # on the outline's right edge: touches
        "c3": [(70.0, 0.0, 90.0, 20.0)],  # 6 px to the right: misses
        "c5": [(40.0, 40.0, 50.0, 50.0)],  # in the notch of the L, inside its bounding box: misses
    }
    evaluation.localisation = box_results(evaluation.cases, findings, boxes, n_bootstrap=200)
    outline = evaluation.localisation["outline"]
    assert inspect.signature(Finding.outline).parameters["level"].default == OUTLINE_LEVEL
    assert f"{OUTLINE_LEVEL} x the peak" in outline["description"]
    assert "presentation state" in outline["description"]
    touches = outline["touches_box"]
    assert (touches["k"], touches["n"], touches["value"]) == (1, 3, pytest.approx(1 / 3))
    assert (touches["lower"], touches["upper"]) == pytest.approx(wilson_interval(1, 3))
    area = outline["median_area_fraction"]  # areas 1, 2 and 3 cells of 32 x 32 px on 128 x 64 px
    assert area["value"] == pytest.approx(0.25)
    assert area["quartiles"] == pytest.approx([0.1875, 0.3125])
    assert 0.125 <= area["lower"] <= 0.25 <= area["upper"] <= 0.375

    files = write_report(evaluation, tmp_path / "out")
    written = json.loads(files.metrics_json.read_text())["localisation"]["outline"]
    assert written["touches_box"]["k"] == 1
    assert written["median_area_fraction"]["value"] == pytest.approx(0.25)
    html = files.html.read_text()
    table = html[html.index('id="localisation-table"') :]
    assert "Outline contains or touches an expert box" in table
    assert "33.3% (95% CI" in table and "1/3)" in table
    assert "Outline area, % of the image: median" in table and "25.0% (95% CI" in table
    assert "quartiles 18.8\u201331.2%" in table


def test_one_fractured_case_is_a_clear_error_naming_the_labels(tmp_path: Path) -> None:
    predictions, labels = tmp_path / "p.csv", tmp_path / "labels.csv"
    predictions.write_text("id,probability\n" + "".join(f"c{i},{i / 40:.3f}\n" for i in range(40)))
    labels.write_text("id,label\n" + "".join(f"c{i},{int(i == 7)}\n" for i in range(40)))
    with pytest.raises(
        ValueError, match=r"labels .*labels.csv: 1 fractured and 39 non-fractured .* at least 2"
    ):
        evaluate_predictions(predictions, labels)
