"""``fracsight evaluate``, ``thresholds`` and ``calibrate`` end to end, on FracAtlas labels and images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fracsight.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FRACATLAS = SHARED / "data" / "fracatlas"
needs_data = pytest.mark.skipif(not FRACATLAS.is_dir(), reason="shared FracAtlas data not present")


def _fracatlas_rows() -> list[dict[str, str]]:
    with (FRACATLAS / "dataset.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _predictions(tmp_path: Path, seed: int = 0, refuse_every: int = 400) -> tuple[Path, dict[str, float]]:
    """A predictions file over all FracAtlas images: noisy scores that depend on the label, some refusals."""
    rng = np.random.default_rng(seed)
    path = tmp_path / "predictions.csv"
    kept: dict[str, float] = {}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "probability", "category", "heatmap", "error"])
        for i, row in enumerate(_fracatlas_rows()):
            folder = "Fractured" if row["fractured"] == "1" else "Non_fractured"
            image = FRACATLAS / "images" / folder / row["image_id"]
            if i % refuse_every == 3:
                writer.writerow([image, "", "", "", "could not be read: truncated JPEG"])
                continue
            p = 1 / (1 + np.exp(-rng.normal(2.0 * int(row["fractured"]) - 1.5, 1.3)))
            writer.writerow([image, f"{p:.6f}", "", "", ""])
            kept[row["image_id"][:-4]] = round(float(p), 6)
    return path, kept


@needs_data
def test_evaluate_predictions_and_labels_writes_consistent_metrics(tmp_path: Path) -> None:
    predictions, kept = _predictions(tmp_path)
    report = tmp_path / "report"
    code = main(
        [
            "evaluate",
            "--predictions", str(predictions),
            "--labels", str(FRACATLAS / "dataset.csv"),
            "--report", str(report),
            "--threshold", "0.4",
            "--prevalence", "0.1",
            "--bootstrap", "300",
        ]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((report / "metrics.json").read_text())
    labels = {r["image_id"][:-4]: int(r["fractured"]) for r in _fracatlas_rows()}
    ids = sorted(kept)
    y = np.array([labels[i] for i in ids])
    p = np.array([kept[i] for i in ids])
    assert metrics["data"]["n_cases"] == len(ids) and metrics["data"]["n_positive"] == int(y.sum())
    assert metrics["data"]["n_not_analysed"] == len(labels) - len(ids)
    assert all(e["reason"] == "could not be read: truncated JPEG" for e in metrics["data"]["not_analysed"])
    assert metrics["overall"]["auc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    auc = metrics["overall"]["auc"]
    assert auc["delong"]["lower"] < auc["value"] < auc["delong"]["upper"]
    point = metrics["overall"]["operating_points"][0]
    assert point["name"] == "threshold 0.4"
    assert point["confusion"]["tp"] == int(np.sum((p >= 0.4) & (y == 1)))
    assert point["at_prevalence"]["prevalence"] == 0.1
    regions = metrics["groups"]["region"]["cells"]
    assert {c["value"] for c in regions} >= {"hand", "leg", "hip", "shoulder"}
    assert sum(c["n"] for c in regions) == len(ids)
    assert set(metrics["groups"]) == {"region", "hardware"}
    assert metrics["model"]["description"].startswith("predictions file")
    html = (report / "report.html").read_text()
    assert "could not be read: truncated JPEG" in html and "Results by region" in html


def _run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def _small_pair(tmp_path: Path) -> tuple[Path, Path]:
    preds = tmp_path / "p.csv"
    labels = tmp_path / "l.csv"
    rng = np.random.default_rng(1)
    with preds.open("w") as ph, labels.open("w") as lh:
        ph.write("id,probability\n")
        lh.write("id,fractured\n")
        for i in range(30):
            ph.write(f"c{i},{rng.random():.4f}\n")
            lh.write(f"c{i},{i % 2}\n")
    return preds, labels


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda rows: rows.__setitem__(4, "c3,nan"), "NaN values (line 5)"),
        (lambda rows: rows.__setitem__(2, "c1,1.5"), "outside [0, 1] (line 3)"),
        (lambda rows: rows.__setitem__(6, ",0.3"), "column 'id' is empty in 1 rows (line 7)"),
        (lambda rows: rows.pop(), "no row for 1 of the 30 labelled cases (ids c29)"),
    ],
)
def test_bad_predictions_give_one_clear_line(tmp_path: Path, capsys, edit, message: str) -> None:
    preds, labels = _small_pair(tmp_path)
    rows = preds.read_text().splitlines()
    edit(rows)
    preds.write_text("\n".join(rows) + "\n")
    code, err = _run(
        capsys,
        ["evaluate", "--predictions", str(preds), "--labels", str(labels), "--report", str(tmp_path / "r")],
    )
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r" / "report.html").exists()


def test_single_class_labels_are_refused(tmp_path: Path, capsys) -> None:
    preds, labels = _small_pair(tmp_path)
    labels.write_text("id,fractured\n" + "".join(f"c{i},0\n" for i in range(30)))
    code, err = _run(
        capsys,
        ["evaluate", "--predictions", str(preds), "--labels", str(labels), "--report", str(tmp_path / "r")],
    )
    assert code == 2 and "all 30 analysable cases are not fractured (0)" in err


def test_dataset_and_prediction_files_are_not_mixed(tmp_path: Path, capsys) -> None:
    preds, labels = _small_pair(tmp_path)
    code, err = _run(
        capsys, ["evaluate", str(tmp_path), "--predictions", str(preds), "--report", str(tmp_path / "r")]
    )
    assert code == 2 and "not both" in err


# ---------------------------------------------------------------- model runs


def _tiny_model(folder: Path, thresholds: dict[str, float] | None = None) -> Path:
    """A small real ONNX model with fracsight's interface: brightest 16-px cell drives the logit."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    size = 64
    graph = helper.make_graph(
        [
            helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]),
            helper.make_node("Squeeze", ["pooled", "axis1"], ["cells"]),
            helper.make_node("Mul", ["cells", "gain"], ["heatmap"]),
            helper.make_node("ReduceMax", ["heatmap"], ["peak"], keepdims=0, axes=[1, 2]),
            helper.make_node("Add", ["peak", "bias"], ["logit"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, size, size])],
        [
            helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, ["batch", size // 16, size // 16]),
        ],
        [
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("gain", TensorProto.FLOAT, [], [4.0]),
            helper.make_tensor("bias", TensorProto.FLOAT, [], [-2.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.onnx"
    onnx.save(model, str(path))
    card = {
        "model_id": "tiny-test-model",
        "input_size": size,
        "thresholds": thresholds or {"fracture": 0.6, "doubt": 0.3},
        "temperature": 1.0,
        "threshold_source": "fixed for the test",
        "data": {},
        "metrics": {},
    }
    path.with_suffix(".card.json").write_text(json.dumps(card))
    return path


def _split_file(tmp_path: Path, n_each: int = 15) -> tuple[Path, list[str]]:
    rows = _fracatlas_rows()
    fractured = [r["image_id"] for r in rows if r["fractured"] == "1"][:n_each]
    intact = [r["image_id"] for r in rows if r["fractured"] == "0"][:n_each]
    path = tmp_path / "split.csv"
    with path.open("w") as handle:
        handle.write("id,split\n")
        for image_id in fractured + intact:
            handle.write(f"{image_id},test\n")
        for r in rows[200:260]:
            handle.write(f"{r['image_id']},train\n")
    return path, fractured + intact


@needs_data
def test_evaluate_runs_the_model_on_a_fracatlas_split(tmp_path: Path) -> None:
    pytest.importorskip("fracsight.inference")
    model = _tiny_model(tmp_path / "model")
    split, ids = _split_file(tmp_path)
    report = tmp_path / "report"
    args = ["evaluate", str(FRACATLAS), "--model", str(model), "--split-file", str(split), "--split", "test"]
    assert main([*args, "--report", str(report), "--bootstrap", "200", "--no-progress"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["data"]["n_cases"] + metrics["data"]["n_not_analysed"] == len(ids)
    assert metrics["model"]["model_id"] == "tiny-test-model"
    assert [p["name"] for p in metrics["overall"]["operating_points"]] == ["fracture", "doubt"]
    assert metrics["data"]["split"].startswith("test")
    localisation = metrics["localisation"]
    if localisation.get("computed"):
        assert localisation["pointing_game"]["strict"]["n"] > 0
        assert 0.0 <= localisation["froc"]["normalised_area"]["value"] <= 1.0
    html = (report / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') >= 3  # heat-map overlays of TP/FN/FP
    assert "tiny-test-model" in html and "Abedeen" in html  # model identity and data citation


@needs_data
def test_thresholds_and_calibrate_write_adapted_copies(tmp_path: Path) -> None:
    predictions, kept = _predictions(tmp_path, seed=3, refuse_every=10_000)
    model = _tiny_model(tmp_path / "model", thresholds={"fracture": 0.8, "doubt": 0.2})
    labels = str(FRACATLAS / "dataset.csv")
    out = tmp_path / "site" / "site.onnx"
    data = ["--predictions", str(predictions), "--labels", labels, "--model", str(model)]
    assert (
        main(
            [
                "thresholds",
                *data,
                "--sensitivity",
                "0.9",
                "--specificity",
                "0.85",
                "--out",
                str(out),
                "--date",
                "2025-03-01",
            ]
        )
        == 0
    )
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert out.read_bytes() == model.read_bytes()
    record = card["adaptations"][-1]
    assert record["date"] == "2025-03-01" and record["n"] == len(kept)
    assert record["previous_thresholds"] == {"fracture": 0.8, "doubt": 0.2}
    assert str(predictions) in card["threshold_source"]
    # The new operating points reach their targets on these data.
    ev = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                "--predictions",
                str(predictions),
                "--labels",
                labels,
                "--model",
                str(out),
                "--report",
                str(ev),
                "--bootstrap",
                "100",
            ]
        )
        == 0
    )
    points = {
        p["name"]: p for p in json.loads((ev / "metrics.json").read_text())["overall"]["operating_points"]
    }
    assert points["doubt"]["sensitivity"]["value"] >= 0.9
    assert points["fracture"]["specificity"]["value"] >= 0.85

    calibrated = tmp_path / "site" / "calibrated.onnx"
    assert (
        main(["calibrate", *data[:4], "--model", str(out), "--out", str(calibrated), "--date", "2025-03-02"])
        == 0
    )
    new = json.loads(calibrated.with_suffix(".card.json").read_text())
    assert new["temperature"] > 0 and new["adaptations"][-1]["kind"] == "temperature"
    t_new, old = new["temperature"], card["thresholds"]
    for value in kept.values():  # every case keeps its category
        logit = np.log(max(value, 1e-7) / max(1 - value, 1e-7))
        moved = 1 / (1 + np.exp(-logit / t_new))
        assert (value >= old["fracture"]) == (moved >= new["thresholds"]["fracture"])
        assert (value >= old["doubt"]) == (moved >= new["thresholds"]["doubt"])


def test_thresholds_reject_a_bad_date(tmp_path: Path, capsys) -> None:
    preds, labels = _small_pair(tmp_path)
    model = _tiny_model(tmp_path / "m")
    args = ["thresholds", "--predictions", str(preds), "--labels", str(labels), "--model", str(model)]
    code, err = _run(
        capsys,
        [
            *args,
            "--sensitivity",
            "0.9",
            "--specificity",
            "0.9",
            "--out",
            str(tmp_path / "o.onnx"),
            "--date",
            "31/01/2025",
        ],
    )
    assert code == 2 and "YYYY-MM-DD" in err


@needs_data
def test_evaluate_runs_the_model_on_a_manifest_with_boxes(tmp_path: Path) -> None:
    pytest.importorskip("fracsight.inference")
    from fracsight.data.fracatlas import load_fracatlas

    images = [im for im in load_fracatlas(FRACATLAS) if im.exif_orientation == 1]
    chosen = [im for im in images if im.fractured and im.boxes][:8] + [
        im for im in images if not im.fractured
    ][:8]
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "region", "boxes"])
        for im in chosen:
            boxes = json.dumps([[round(v, 1) for v in b] for b in im.boxes]) if im.boxes else ""
            writer.writerow([im.path, int(im.fractured), im.region.value, boxes])
    model = _tiny_model(tmp_path / "model")
    report = tmp_path / "report"
    assert (
        main(
            [
                "evaluate",
                str(manifest),
                "--model",
                str(model),
                "--report",
                str(report),
                "--bootstrap",
                "100",
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["data"]["n_cases"] + metrics["data"]["n_not_analysed"] == 16
    assert "boxes" not in metrics["groups"] and "region" in metrics["groups"]
    localisation = metrics["localisation"]
    if localisation.get("computed"):
        assert localisation["froc"]["n_lesions"] == sum(len(im.boxes) for im in chosen[:8])
        assert localisation["pointing_game"]["strict"]["n"] == 8
        outline = localisation["outline"]  # the drawn region, beside the pointing game
        touches, area = outline["touches_box"], outline["median_area_fraction"]
        assert touches["n"] == 8 and 0 <= touches["k"] <= 8
        assert touches["lower"] <= touches["value"] <= touches["upper"]
        q1, q3 = area["quartiles"]
        assert 0.0 < q1 <= area["value"] <= q3 <= 1.0 and area["lower"] <= area["value"] <= area["upper"]
        html = (report / "report.html").read_text()
        assert "Outline contains or touches an expert box" in html and f"{touches['k']}/8)" in html
