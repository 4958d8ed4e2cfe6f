"""The 8-bit model: the quantise step and command, the precision choice, and both models side by side.

The command runs on the real shipped model with a tiny calibration set made of the bundled samples
(a manifest and a split file), so it checks the real graph's quantisation, not a toy one.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_LABELS, SAMPLES_DIR, tiny_calibration_data

from fracsight.inference import DEFAULT_PRECISION, Analyser, model_for_precision
from fracsight.model_card import DEFAULT_MODEL, ModelCard, card_path

pytest.importorskip("onnx")  # the train extra: the quantise step needs it, inference does not

SHIPPED_INT8 = DEFAULT_MODEL.with_name("default.int8.onnx")


def test_precision_picks_the_model_file(tmp_path: Path) -> None:
    assert model_for_precision(None, "float32") == DEFAULT_MODEL
    assert model_for_precision(None, None) == model_for_precision(None, DEFAULT_PRECISION)
    other = tmp_path / "site.onnx"
    with pytest.raises(FileNotFoundError, match="fracsight quantise"):
        model_for_precision(other, "int8")
    (tmp_path / "site.int8.onnx").write_bytes(b"")
    assert model_for_precision(other, "int8") == tmp_path / "site.int8.onnx"
    # A model named as the 8-bit copy is used as it is.
    assert model_for_precision(tmp_path / "site.int8.onnx", "int8") == tmp_path / "site.int8.onnx"
    with pytest.raises(ValueError, match="precision"):
        model_for_precision(None, "float16")


def test_predict_refuses_an_unknown_precision(capsys: pytest.CaptureFixture[str], samples_dir: Path) -> None:
    from fracsight.cli import main

    assert main(["predict", str(samples_dir / "IMG0000001.jpg"), "--precision", "int4"]) == 2
    assert "--precision" in capsys.readouterr().err


def _tiny_data(tmp_path: Path, samples_dir: Path, sample_labels: dict[str, int]) -> tuple[Path, Path]:
    """A manifest of the bundled JPEGs and a split file: three to calibrate on, two to compare on."""
    assert samples_dir == SAMPLES_DIR and sample_labels == SAMPLE_LABELS  # what the shared helper uses
    return tiny_calibration_data(tmp_path)


@pytest.mark.slow
def test_quantise_command_writes_a_model_and_its_card(
    tmp_path: Path, samples_dir: Path, sample_labels: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    from fracsight.cli import main

    manifest, split = _tiny_data(tmp_path, samples_dir, sample_labels)
    model = tmp_path / "default.onnx"  # a site's copy: the 8-bit model is written beside it
    shutil.copyfile(DEFAULT_MODEL, model)
    shutil.copyfile(card_path(DEFAULT_MODEL), card_path(model))
    out = tmp_path / "default.int8.onnx"
    code = main(
        ["quantise", str(model), "--data", str(manifest), "--split-file", str(split),
         "--calibration-images", "3", "--timing-images", "1"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert out.is_file() and out.stat().st_size < DEFAULT_MODEL.stat().st_size
    card = ModelCard.for_model(out)
    float_card = ModelCard.for_model(DEFAULT_MODEL)
    assert card.model_id == f"{float_card.model_id}-int8"
    assert card.thresholds == float_card.thresholds
    q = card["quantisation"]
    assert q["float_model"]["model_id"] == float_card.model_id
    assert q["calibration"].startswith("3 images of split 'dev'")
    assert q["agreement"]["n"] == 2
    assert 0.0 <= q["agreement"]["same_category"] <= 1.0
    assert q["speed_model_alone"]["int8"]["median_ms"] > 0
    # The first convolution and the heat-map layers stay in float (weights straight from an
    # initializer); the trunk's convolutions read 8-bit weights through DequantizeLinear.
    import onnx

    graph = onnx.load(str(out)).graph
    floats = {i.name for i in graph.initializer}
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    for kept in ("_conv_stem", "cam", "fine_cam", "_conv_head"):
        assert convs[f"/model/{kept}/Conv"].input[1] in floats, kept
    assert convs["/model/_blocks.5/_expand_conv/Conv"].input[1] not in floats
    # An Analyser runs it with its own card, and answers every sample.
    analyser = Analyser(out)
    try:
        results = list(analyser.outcomes(sorted(samples_dir.glob("*.jpg"))))
    finally:
        analyser.close()
    assert all(0.0 <= r.probability <= 1.0 for r in results)
    assert results[0].model.model_id == card.model_id
    # predict --precision int8 finds it beside the model and says which model answered.
    capsys.readouterr()
    csv_out = tmp_path / "out.csv"
    image = str(samples_dir / "IMG0000001.jpg")
    assert main(["predict", image, "--model", str(model), "--precision", "int8", "--output", str(csv_out),
                 "--no-progress"]) == 0  # fmt: skip
    with open(csv_out, newline="", encoding="utf-8") as fh:
        assert next(csv.DictReader(fh))["model_id"] == card.model_id


def test_quantise_refuses_calibrating_on_the_test_split(
    tmp_path: Path, samples_dir: Path, sample_labels: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    from fracsight.cli import main

    manifest, split = _tiny_data(tmp_path, samples_dir, sample_labels)
    code = main(
        ["quantise", str(DEFAULT_MODEL), "--data", str(manifest), "--split-file", str(split),
         "--calibration-split", "test", "--evaluate-split", "test", "--out", str(tmp_path / "m.int8.onnx")]
    )  # fmt: skip
    assert code == 2
    assert "must differ" in capsys.readouterr().err


@pytest.mark.skipif(not SHIPPED_INT8.exists(), reason="no 8-bit model shipped (see training/README.md)")
def test_both_shipped_models_agree_on_the_samples(samples_dir: Path) -> None:
    """CI runs both models on the bundled samples: probabilities within 0.01, the same category."""
    images = sorted(samples_dir.glob("*.jpg")) + sorted(samples_dir.glob("*.dcm"))
    answers = {}
    for precision in ("float32", "int8"):
        analyser = Analyser(precision=precision)
        try:
            answers[precision] = list(analyser.outcomes(images))
        finally:
            analyser.close()
    for f, q in zip(answers["float32"], answers["int8"], strict=True):
        assert abs(f.probability - q.probability) <= 0.01, f.source
        assert f.category == q.category, f.source
    card = json.loads(SHIPPED_INT8.with_name("default.int8.card.json").read_text(encoding="utf-8"))
    assert card["quantisation"]["float_model"]["sha256"] == ModelCard.for_model().onnx_sha256
    assert np.isfinite(card["quantisation"]["agreement"]["same_peak_cell"])
