"""The training-data guard: evaluate, thresholds and calibrate say how many cases the model was trained
on, refuse them as a test unless told --include-training-images, and then label every figure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracsight.cli import main
from fracsight.data.image_hashes import DIGEST_CHARS, image_digests
from fracsight.io import read_radiograph
from fracsight.model_card import DEFAULT_MODEL, ModelCard, TrainingImages, card_path

FRACATLAS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fracatlas"
SPLIT = Path(__file__).resolve().parents[1] / "training" / "default-run" / "split.csv"
# The bundled samples are held-out images of the shipped model (split.csv 'test' rows): their labels.
LABELS = {"IMG0000001": 0, "IMG0000020": 0, "IMG0000763": 1, "IMG0001739": 1, "IMG0002472": 1}


@pytest.fixture()
def site(tmp_path: Path, sample_images: list[Path]) -> dict:
    """A copy of the shipped model whose card says it was trained on three of the samples, and a
    manifest of all five, one of them as a lossless PNG copy (other bytes, the same pixels)."""
    jpegs = sorted(p for p in sample_images if p.stem in LABELS)
    trained = jpegs[:3]
    digests = [image_digests(p) for p in trained]
    card = ModelCard.for_model().to_dict()
    images = TrainingImages.of(
        "three of the bundled samples (a test)",
        [d.file[:DIGEST_CHARS] for d in digests],
        [d.pixels[:DIGEST_CHARS] for d in digests if d.pixels],
    )
    card["training_images"] = images.record()
    model = tmp_path / "site.onnx"
    shutil.copyfile(DEFAULT_MODEL, model)
    card_path(model).write_text(json.dumps(card))
    copy = tmp_path / f"{trained[0].stem}.png"
    pixels = read_radiograph(trained[0]).pixels
    Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(copy)
    rows = [f"{copy},{LABELS[copy.stem]}"] + [f"{p},{LABELS[p.stem]}" for p in jpegs[1:]]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    return {"model": model, "manifest": manifest, "tmp": tmp_path}


COMMANDS = {
    "evaluate": lambda tmp: ["--report", str(tmp / "report"), "--bootstrap", "100"],
    "thresholds": lambda tmp: ["--sensitivity", "0.9", "--specificity", "0.9", "--out", str(tmp / "t.onnx")],
    "calibrate": lambda tmp: ["--out", str(tmp / "c.onnx")],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_training_images_are_refused_before_the_model_runs(
    command: str, site: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model ran before the training images were refused")

    monkeypatch.setattr("fracsight.evaluation.model_run.run_model", no_run)
    tmp = site["tmp"]
    args = [command, str(site["manifest"]), "--model", str(site["model"]), *COMMANDS[command](tmp)]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"fracsight {command}: error: 3 of the 5 cases are images model" in err
    assert "three of the bundled samples" in err and "--include-training-images" in err
    assert not (tmp / "report").exists() and not (tmp / "t.onnx").exists() and not (tmp / "c.onnx").exists()


def test_evaluate_with_training_images_labels_every_figure(
    site: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    report = site["tmp"] / "report"
    args = ["evaluate", str(site["manifest"]), "--model", str(site["model"]), "--report", str(report)]
    assert main([*args, "--bootstrap", "100", "--no-progress", "--include-training-images"]) == 0
    err = capsys.readouterr().err
    assert "3 of the 5 cases are images model" in err and "NOT A TEST" in err
    metrics = json.loads((report / "metrics.json").read_text())
    assert "includes 3 of the 5 cases the model was trained on" in metrics["caution"]
    assert metrics["data"]["training_images"]["n_trained_on"] == 3
    page = (report / "report.html").read_text()
    assert "(includes training images)" in page
    assert page.count("(includes training images: not a test)") == 3  # ROC, operating points, calibration


def test_thresholds_with_training_images_says_so_in_the_card(site: dict) -> None:
    out = site["tmp"] / "t.onnx"
    args = ["thresholds", str(site["manifest"]), "--model", str(site["model"]), "--out", str(out)]
    assert main([*args, "--sensitivity", "0.6", "--specificity", "0.6", "--include-training-images"]) == 0
    card = ModelCard.for_model(out)
    assert "trained on: not a test" in card.threshold_source
    assert card.training_images is not None and card.training_images.n == 3  # the weights are the same


def test_held_out_samples_pass_the_shipped_card(tmp_path: Path, sample_images: list[Path], capsys) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label\n" + "".join(f"{p},{LABELS[p.stem]}\n" for p in sample_images if p.stem in LABELS)
    )
    args = ["evaluate", str(manifest), "--report", str(tmp_path / "r"), "--bootstrap", "100", "--no-progress"]
    assert main(args) == 0
    assert "0 of the 5 cases are images model default-" in capsys.readouterr().err


@pytest.mark.skipif(not FRACATLAS.is_dir(), reason="shared FracAtlas data not found")
def test_the_readme_command_on_all_of_fracatlas_is_refused(tmp_path: Path, capsys) -> None:
    """`fracsight evaluate ../shared/data/fracatlas --report DIR` used to report ROC AUC 0.974 in silence."""
    assert main(["evaluate", str(FRACATLAS), "--report", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "2755 of the 3229 cases are images model default-" in err
    assert f"--split-file {SPLIT.relative_to(SPLIT.parents[2])} --split test" in err
