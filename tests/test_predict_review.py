"""Regressions from a review of ``predict``: overlays a clinician can read, output files left intact,
odd folders and models refused with one clear line instead of a traceback."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import fracsight
import fracsight.cli.predict as predict_cli
from fracsight.cli import main
from fracsight.decide import Category
from fracsight.explain import overlay_image
from fracsight.inference import DEFAULT_MODEL, Analyser
from fracsight.io import Radiograph, RefusedInput, read_radiograph


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default ONNX file in a temporary folder, for tests that give it a broken card."""
    path = tmp_path_factory.mktemp("model") / "copy.onnx"
    shutil.copyfile(DEFAULT_MODEL, path)
    return path


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def test_overlay_of_12_bit_data_in_a_16_bit_file_shows_the_radiograph(
    tmp_path: Path, default_analyser: Analyser, sample_images: list[Path]
) -> None:
    """A 16-bit PNG holding 12-bit values reads dark by design; its overlay must not be black."""
    pixels = _gray(sample_images[4])
    Image.fromarray(pixels).save(tmp_path / "8bit.png")
    Image.fromarray(pixels.astype(np.uint16) * 16).save(tmp_path / "12in16.png")
    means = []
    for name in ("8bit.png", "12in16.png"):
        radiograph = read_radiograph(tmp_path / name)
        overlay = overlay_image(radiograph.pixels, default_analyser.analyse(radiograph))
        means.append(float(np.asarray(overlay.convert("L")).mean()))
    assert means[1] > 30 and abs(means[1] - means[0]) < 3, means


def _caption_lines(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, str, object]]:
    """(left x, line, font) of every caption line drawn by ``overlay_image`` (recorded via Pillow)."""
    drawn: list[tuple[float, str, object]] = []
    original = ImageDraw.ImageDraw.text

    def record(self, xy, text, *args, **kwargs):
        font = kwargs.get("font", args[1] if len(args) > 1 else None)
        drawn.extend((xy[0], line, font) for line in str(text).split("\n"))
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    return drawn


@pytest.mark.parametrize("crop", [(slice(50, 350), slice(150, 190)), (slice(100, 190), slice(100, 190))])
def test_caption_fits_inside_a_narrow_or_small_overlay(
    monkeypatch: pytest.MonkeyPatch, default_analyser: Analyser, sample_images: list[Path], crop
) -> None:
    """On a 40-px-wide image the caption was cut at the edge: the probability never showed."""
    pixels = _gray(sample_images[4])[crop].astype(np.float32) / 255.0
    radiograph = Radiograph(pixels=pixels, source="crop", format="png")
    finding = default_analyser.analyse(radiograph)
    drawn = _caption_lines(monkeypatch)
    overlay = overlay_image(pixels, finding)
    h, w = pixels.shape
    assert abs(overlay.width / overlay.height - w / h) < 0.02  # still the input's aspect ratio
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text = " ".join(line for _, line, _ in drawn)
    # The answer (a thin crop may be out of scope: then "not scored" stands where the probability would).
    answer = "not scored" if finding.category == Category.OUT_OF_SCOPE else f"p={finding.probability:.2f}"
    assert answer in text and "diagnosis" in text, text
    for x, line, font in drawn:
        assert x + measure.textlength(line, font=font) <= overlay.width, f"{line!r} runs off a {overlay.size}"


def _write_card(model: Path, card: object) -> None:
    model.with_suffix(".card.json").write_text(json.dumps(card))


def _default_card() -> dict:
    return json.loads(DEFAULT_MODEL.with_suffix(".card.json").read_text())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"thresholds": [0.1, 0.5]}, "thresholds"),
        ({"thresholds": {"fracture": "0.6", "doubt": "0.1"}}, "thresholds"),
        ({"temperature": "1.0"}, "temperature"),
        ({"temperature": None}, "temperature"),
        ({"input_size": "384"}, "input_size"),
        ({"input_size": 256}, "input_size 256"),  # the ONNX file takes 384 x 384
    ],
)
def test_malformed_card_is_refused_at_load(model_copy: Path, change: dict, message: str) -> None:
    _write_card(model_copy, {**_default_card(), **change})
    with pytest.raises(ValueError, match=message):
        Analyser(model_copy)


def test_card_that_is_not_an_object_is_refused(model_copy: Path) -> None:
    _write_card(model_copy, [1, 2])
    with pytest.raises(ValueError, match="JSON object"):
        Analyser(model_copy)


def test_bad_model_leaves_an_earlier_results_file_alone(
    tmp_path: Path, sample_images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "bad.onnx"
    model.write_text("not a model\n")
    _write_card(model, _default_card())
    out = tmp_path / "results.csv"
    out.write_text("earlier,results\n")
    code = main(
        ["predict", str(sample_images[0]), "--model", str(model), "--output", str(out), "--no-progress"]
    )
    assert code == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err
    assert out.read_text() == "earlier,results\n"


def test_heatmaps_pointing_at_a_file_is_one_clear_error(
    tmp_path: Path, sample_images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_folder = tmp_path / "heat.png"
    not_a_folder.write_bytes(b"x")
    out = tmp_path / "out.csv"
    args = [str(sample_images[0]), "--heatmaps", str(not_a_folder), "--output", str(out), "--no-progress"]
    assert main(["predict", *args]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert not out.exists()


def test_output_dash_is_standard_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample_images: list[Path], capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(sample_images[0]), "--output", "-", "--no-progress"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and rows[0]["error"] == ""
    assert not (tmp_path / "-").exists()


def test_output_folder_is_created(tmp_path: Path, sample_images: list[Path]) -> None:
    out = tmp_path / "new" / "folder" / "out.csv"
    assert main(["predict", str(sample_images[0]), "--output", str(out), "--no-progress"]) == 0
    assert len(list(csv.DictReader(out.open()))) == 1


def test_dicomdir_and_windows_files_are_not_inputs(tmp_path: Path, sample_images: list[Path]) -> None:
    """A DICOM CD export always holds a DICOMDIR index: it must not make every run fail."""
    shutil.copyfile(sample_images[0], tmp_path / "IM0001")
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    (tmp_path / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 60)
    (tmp_path / "desktop.ini").write_text("[.ShellClassInfo]\n")
    assert [p.name for p in predict_cli.expand_paths([str(tmp_path)])] == ["IM0001"]
    # Named on the command line, such a file is still tried (and refused with its reason).
    assert predict_cli.expand_paths([str(tmp_path / "DICOMDIR")]) == [tmp_path / "DICOMDIR"]


def test_heatmap_names_differ_by_more_than_case(tmp_path: Path, sample_images: list[Path]) -> None:
    """On Windows and macOS ``X.jpg.heatmap.png`` and ``x.jpg.heatmap.png`` are one file."""
    for sub, name in (("a", "X.jpg"), ("b", "x.jpg")):
        (tmp_path / sub).mkdir()
        shutil.copyfile(sample_images[0], tmp_path / sub / name)
    out, heat = tmp_path / "out.csv", tmp_path / "heat"
    args = [str(tmp_path / "a"), str(tmp_path / "b"), "--heatmaps", str(heat), "--output", str(out)]
    assert main(["predict", *args, "--no-progress"]) == 0
    names = [Path(r["heatmap"]).name for r in csv.DictReader(out.open())]
    assert len({n.casefold() for n in names}) == 2, names


def test_interrupted_run_says_its_results_are_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample_images: list[Path], capsys
) -> None:
    def one_then_ctrl_c(*args, **kwargs):
        yield {"path": "a.jpg", "probability": 0.5, "category": "doubt", "heatmap": None}
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_cli, "rows", one_then_ctrl_c)
    out = tmp_path / "out.csv"
    paths = [str(p) for p in sample_images[:3]]
    assert main(["predict", *paths, "--output", str(out), "--no-progress"]) == 130
    assert "interrupted after 1 of 3 inputs" in capsys.readouterr().err
    assert len(list(csv.DictReader(out.open()))) == 1


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_closed_pipe_stops_quietly(monkeypatch: pytest.MonkeyPatch, sample_images: list[Path]) -> None:
    """``fracsight predict DIR | head`` must not end in a traceback."""
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    assert main(["predict", str(sample_images[0]), "--no-progress"]) == 141


def test_front_door_refuses_a_tiny_image_with_refused_input(
    tmp_path: Path, sample_images: list[Path]
) -> None:
    """``fracsight.analyse`` documents RefusedInput for inputs it cannot analyse, tiny ones included."""
    Image.fromarray(_gray(sample_images[0])[:20, :20]).save(tmp_path / "thumb.png")
    with pytest.raises(RefusedInput, match="too small to analyse"):
        fracsight.analyse(tmp_path / "thumb.png")


def test_threads_below_one_is_a_usage_error(sample_images: list[Path], capsys) -> None:
    """``--threads 0`` or ``-1`` ended in 'max_workers must be greater than 0' after the CSV header."""
    assert main(["predict", str(sample_images[0]), "--threads", "-1", "--no-progress"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_heatmap_that_cannot_be_written_goes_into_its_row(
    tmp_path: Path, sample_images: list[Path], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A full disk must not stop the batch: the row keeps its answer and says what failed."""
    import errno

    import fracsight.explain

    real = fracsight.explain._write_file

    def first_fails(path, data):  # the first input's picture, whichever writer thread gets it
        if sample_images[0].name in Path(path).name:
            Path(path).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(fracsight.explain, "_write_file", first_fails)
    out, heat = tmp_path / "out.csv", tmp_path / "heat"
    args = [str(p) for p in sample_images[:2]] + ["--heatmaps", str(heat), "--output", str(out)]
    assert main(["predict", *args, "--no-progress"]) == 1
    assert "2 analysed, 0 refused, 1 heat maps not written" in capsys.readouterr().err
    first, second = list(csv.DictReader(out.open()))
    assert first["probability"] and first["category"] and not first["heatmap"]
    assert "heat map could not be written: No space left on device" in first["error"]
    assert second["heatmap"] and not second["error"]
    assert sorted(p.name for p in heat.iterdir()) == [Path(second["heatmap"]).name]  # no partial file left
