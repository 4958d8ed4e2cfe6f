"""The shipped model through ``fracsight.inference``: probabilities, categories, heat maps, batches."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

import fracsight
from fracsight.decide import Category, categorise
from fracsight.explain import heatmap_peak, overlay_image
from fracsight.finding import Finding, Refusal
from fracsight.inference import DEFAULT_MODEL, Analyser
from fracsight.io import Radiograph, RefusedInput, read_radiograph


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default ONNX file copied to a temporary folder, for tests that edit its card."""
    path = tmp_path_factory.mktemp("model") / "copy.onnx"
    shutil.copyfile(DEFAULT_MODEL, path)
    return path


def _write_card(model: Path, **changes) -> None:
    card = json.loads(DEFAULT_MODEL.with_suffix(".card.json").read_text())
    for key, value in changes.items():
        if value is None:
            card.pop(key, None)
        else:
            card[key] = value
    model.with_suffix(".card.json").write_text(json.dumps(card))


def test_default_model_and_card(default_analyser: Analyser) -> None:
    a = default_analyser
    assert a.model_path == DEFAULT_MODEL
    assert isinstance(a.model_id, str) and a.model_id
    assert a.size % 32 == 0
    assert 0.0 <= a.thresholds["doubt"] <= a.thresholds["fracture"] <= 1.0
    assert a.temperature > 0


def test_analyse_one_sample(default_analyser: Analyser, sample_images: list[Path]) -> None:
    radiograph = read_radiograph(sample_images[0])
    finding = default_analyser.analyse(radiograph)
    assert 0.0 <= finding.probability <= 1.0
    assert finding.category == categorise(finding.probability, default_analyser.thresholds)
    assert finding.model_id == default_analyser.model_id
    cells = default_analyser.size // default_analyser.card.get("heatmap_stride", 32)  # 32 before v2
    assert finding.heatmap.shape == (cells, cells)
    assert finding.heatmap.min() >= 0.0 and finding.heatmap.max() <= 1.0
    on_image = finding.heatmap_on_image()
    assert on_image.shape == radiograph.shape
    assert on_image.min() >= 0.0 and on_image.max() <= 1.0
    x, y = finding.peak()
    assert 0 <= x <= radiograph.shape[1] - 1 and 0 <= y <= radiograph.shape[0] - 1
    assert set(finding.timings_ms) >= {"preprocess", "model"}


def test_every_sample_gets_a_consistent_category(
    default_analyser: Analyser, sample_images: list[Path]
) -> None:
    results = list(default_analyser.outcomes(sample_images))
    assert [r.source for r in results] == [str(p) for p in sample_images]
    for r in results:
        assert isinstance(r, Finding), r
        flagged = r.scope is not None and r.scope.out_of_scope
        by_threshold = categorise(r.probability, default_analyser.thresholds)
        expected = Category.OUT_OF_SCOPE if flagged else by_threshold
        assert r.category == expected
    # The samples were chosen to show every answer (see samples/README.md): the dog's thorax is the
    # one out of scope.
    assert {r.category for r in results} == set(Category)


def test_heatmap_peak_maps_a_hot_cell_back_to_the_image(
    default_analyser: Analyser, sample_images: list[Path]
) -> None:
    finding = default_analyser.analyse(read_radiograph(sample_images[0]))
    box = finding.letterbox
    cells = finding.heatmap.shape[0]
    heat = np.zeros_like(finding.heatmap)
    heat[cells // 2, cells // 2] = 1.0
    x, y = heatmap_peak(heat, box)
    cell = box.size / cells
    centre = box.to_image((cells // 2 + 0.5) * cell, (cells // 2 + 0.5) * cell)
    assert (x, y) == pytest.approx(centre)


def test_same_image_twice_gives_identical_probability(
    default_analyser: Analyser, sample_images: list[Path]
) -> None:
    first = default_analyser.analyse(read_radiograph(sample_images[1]))
    second = default_analyser.analyse(read_radiograph(sample_images[1]))
    assert first.probability == second.probability
    np.testing.assert_array_equal(first.heatmap, second.heatmap)


def test_neighbours_do_not_change_results_and_order_is_kept(sample_images: list[Path]) -> None:
    # A deliberately unsorted order with a repeat: results must come back in exactly this order,
    # and an image's answer must not depend on which images are decoded beside it (bit for bit).
    paths = [sample_images[i] for i in (4, 0, 5, 2, 0, 3, 1)]
    one = list(Analyser(batch_size=1).outcomes(paths))
    four = list(Analyser(batch_size=4).outcomes(paths))
    assert [r.source for r in one] == [str(p) for p in paths]
    assert [r.source for r in four] == [str(p) for p in paths]
    for a, b in zip(one, four, strict=True):
        assert a.probability == b.probability
        np.testing.assert_array_equal(a.heatmap, b.heatmap)
    assert one[1].probability == one[4].probability  # the repeated file


def test_in_memory_and_file_paths_agree(default_analyser: Analyser, sample_images: list[Path]) -> None:
    path = sample_images[2]
    from_file = default_analyser.outcome(path)
    in_memory = default_analyser.analyse(read_radiograph(path))
    from_bytes = default_analyser.outcome(path.read_bytes(), name="upload.jpg")
    assert from_file.probability == in_memory.probability == from_bytes.probability
    assert from_file.letterbox == in_memory.letterbox
    assert from_bytes.source == "upload.jpg" and from_file.source == str(path)


@pytest.mark.parametrize("index", [0, 3])
def test_mirror_image_gives_nearly_the_same_probability(
    default_analyser: Analyser, sample_images: list[Path], index: int
) -> None:
    """The model averages an image and its mirror, so a left and a right limb score alike."""
    radiograph = read_radiograph(sample_images[index])
    mirrored = Radiograph(
        pixels=np.ascontiguousarray(radiograph.pixels[:, ::-1]),
        source=radiograph.source,
        format=radiograph.format,
    )
    p = default_analyser.analyse(radiograph)
    q = default_analyser.analyse(mirrored)
    assert abs(p.probability - q.probability) < 0.02
    # The heat map mirrors with the image, up to the one-pixel letterbox offset of odd widths
    # (which moves sharp peaks a little): hottest cells at most one cell apart (16 px cells make
    # near-ties between neighbours common), small mean difference.
    mirrored_map = p.heatmap[:, ::-1]
    peak_q = np.unravel_index(np.argmax(q.heatmap), q.heatmap.shape)
    peak_mirrored = np.unravel_index(np.argmax(mirrored_map), mirrored_map.shape)
    assert max(abs(a - b) for a, b in zip(peak_q, peak_mirrored, strict=True)) <= 1
    assert np.abs(q.heatmap - mirrored_map).mean() < 0.02


def test_refused_file_in_a_batch(
    default_analyser: Analyser, sample_images: list[Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.jpg"
    results = list(default_analyser.outcomes([sample_images[0], empty, missing, sample_images[1]]))
    assert [type(r) for r in results] == [Finding, Refusal, Refusal, Finding]
    assert results[1].code == "unreadable" and "empty" in results[1].reason
    assert results[2].code == "missing" and "no such file" in results[2].reason
    expected = {"path": str(missing), "error_code": "missing", "error": results[2].reason}
    assert results[2].to_record() == expected


def test_missing_model_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        Analyser(tmp_path / "nowhere.onnx")


def test_model_without_card_raises(model_copy: Path) -> None:
    model_copy.with_suffix(".card.json").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="card"):
        Analyser(model_copy)


def test_card_without_thresholds_raises(model_copy: Path) -> None:
    _write_card(model_copy, thresholds=None)
    with pytest.raises(ValueError, match="thresholds"):
        Analyser(model_copy)


def test_card_with_crossed_thresholds_raises(model_copy: Path) -> None:
    _write_card(model_copy, thresholds={"fracture": 0.2, "doubt": 0.6})
    with pytest.raises(ValueError, match="doubt <= fracture"):
        Analyser(model_copy)


def test_card_thresholds_and_temperature_are_applied(
    model_copy: Path, default_analyser: Analyser, sample_images: list[Path]
) -> None:
    """probability = sigmoid(logit / temperature); categories follow the card's thresholds."""
    radiograph = read_radiograph(sample_images[0])
    base = default_analyser.analyse(radiograph).probability
    _write_card(model_copy, temperature=2.0, thresholds={"fracture": 0.0, "doubt": 0.0})
    warmer = Analyser(model_copy).analyse(radiograph)
    logit = math.log(base / (1.0 - base))
    assert warmer.probability == pytest.approx(1.0 / (1.0 + math.exp(-logit / 2.0)), abs=1e-5)
    assert warmer.category is Category.FRACTURE


def test_overlay_keeps_aspect_and_shows_the_heat(
    default_analyser: Analyser, sample_images: list[Path]
) -> None:
    radiograph = read_radiograph(sample_images[4])  # a fracture with a clear hot spot
    finding = default_analyser.analyse(radiograph)
    h, w = radiograph.shape
    small = overlay_image(radiograph.pixels, finding, max_side=256)
    assert small.mode == "RGB" and max(small.size) == 256
    assert abs(small.size[0] - round(small.size[1] * w / h)) <= 1
    # At full size the overlay's colour follows the heat map on the image's own pixels.
    image = overlay_image(radiograph.pixels, finding, max_side=max(h, w))
    assert image.size == (w, h)
    rgb = np.asarray(image).astype(int)
    heat = finding.heatmap_on_image()
    below_caption = np.zeros((h, w), dtype=bool)
    below_caption[3 * max(12, w // 40) :] = True
    cold = below_caption & (heat < 0.15)
    hot = below_caption & (heat > 0.6)
    assert cold.any() and hot.any()
    assert np.all(rgb[cold][:, 0] == rgb[cold][:, 2]), "gray pixels were tinted where the map is cold"
    assert np.all(rgb[hot][:, 0] - rgb[hot][:, 2] > 50), "hot cells are not coloured"


def test_front_door_analyse_matches_the_analyser(sample_images, default_analyser) -> None:
    import fracsight
    from fracsight.io import RefusedInput, read_radiograph

    finding = fracsight.analyse(sample_images[0])
    expected = default_analyser.analyse(read_radiograph(sample_images[0]))
    assert finding.probability == pytest.approx(expected.probability, abs=1e-6)
    assert finding.category == expected.category
    with pytest.raises(RefusedInput):
        fracsight.analyse(Path(fracsight.__file__).parent / "samples" / "README.md")


def test_outcome_of_a_pydicom_dataset_equals_the_file_s(default_analyser: Analyser, dicom_dir: Path) -> None:
    """The DICOM node holds received data sets in memory: they go through the same decoder
    processes and give the same answer, with the data set's UIDs."""
    path = dicom_dir / "hd_dx_image.dcm"
    dataset = pydicom.dcmread(path)
    from_dataset = default_analyser.outcome(dataset, name="received")
    from_file = default_analyser.outcome(path)
    assert isinstance(from_dataset, Finding) and from_dataset.source == "received"
    assert from_dataset.probability == from_file.probability
    assert from_dataset.ids == from_file.ids
    assert from_dataset.ids.sop_uid == dataset.SOPInstanceUID
    assert from_dataset.ids.study_uid == dataset.StudyInstanceUID
    refused = default_analyser.outcome(pydicom.dcmread(dicom_dir / "pyd_CT_small.dcm"))
    assert isinstance(refused, Refusal) and refused.code == "not_a_radiograph" and "CT" in refused.reason


def test_refusals_carry_a_code_a_program_can_act_on(
    default_analyser: Analyser, sample_images: list[Path], tmp_path: Path
) -> None:
    blank = tmp_path / "blank.png"
    Image.new("L", (400, 300), 128).save(blank)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(sample_images[0].read_bytes()[:400])
    codes = {Path(r.source).name: r.code for r in default_analyser.outcomes([blank, text, cut])}
    assert codes == {"blank.png": "not_analysable", "notes.jpg": "unreadable", "cut.jpg": "truncated"}
    # The front door raises the same refusal, code and all.
    with pytest.raises(RefusedInput, match="blank") as refused:
        fracsight.analyse(blank)
    assert refused.value.code == "not_analysable"


def test_finding_stands_alone(default_analyser: Analyser, sample_images: list[Path]) -> None:
    """A Finding names its model (id, version, ONNX sha256, thresholds) and its peak: everything a
    surface shows comes from to_record(), which survives JSON."""
    finding = default_analyser.outcome(sample_images[0])
    record = json.loads(json.dumps(finding.to_record()))
    assert record["probability"] == finding.probability
    assert record["category"] == finding.category.value
    assert record["model"]["onnx_sha256"] == hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()
    assert record["model"]["thresholds"] == default_analyser.thresholds
    x, y = finding.peak()
    assert record["peak"] == {"x": round(x, 1), "y": round(y, 1)}
    assert record["image"] == {"width": finding.letterbox.width, "height": finding.letterbox.height}


def test_finding_record_round_trip(default_analyser: Analyser, sample_images: list[Path]) -> None:
    """from_record(to_record()) through JSON gives the same finding: the store and every surface
    that reads a kept result back see what the analysis saw (same letterbox, peak and outline)."""
    for path in sample_images[:3]:
        finding = default_analyser.outcome(path)
        record = json.loads(json.dumps(finding.to_record()))
        again = Finding.from_record(record, finding.heatmap, default_analyser.size)
        assert again.letterbox == finding.letterbox
        assert (again.probability, again.category, again.model) == (
            finding.probability,
            finding.category,
            finding.model,
        )
        assert again.peak() == finding.peak() and again.outline() == finding.outline()
        assert again.to_record() == record
