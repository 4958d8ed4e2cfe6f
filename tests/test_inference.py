"""The shipped model through ``fracsight.inference``: probabilities, categories, heat maps, batches."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from fracsight.explain import heatmap_peak, overlay_image
from fracsight.finding import Category
from fracsight.inference import DEFAULT_MODEL, Analyser
from fracsight.io import Radiograph, read_radiograph
from fracsight.model_card import categorise


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
    results = list(default_analyser.analyse_paths(sample_images))
    assert [r.path for r in results] == [str(p) for p in sample_images]
    for r in results:
        assert r.error is None, f"{r.path}: {r.error}"
        assert r.finding.category == categorise(r.finding.probability, default_analyser.thresholds)
    # The samples were chosen to show all three answers (see samples/README.md).
    assert {r.finding.category for r in results} == set(Category)


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


def test_batching_does_not_change_results_and_keeps_order(sample_images: list[Path]) -> None:
    # A deliberately unsorted order with a repeat: results must come back in exactly this order.
    paths = [sample_images[i] for i in (4, 0, 5, 2, 0, 3, 1)]
    one = list(Analyser(batch_size=1).analyse_paths(paths))
    four = list(Analyser(batch_size=4).analyse_paths(paths))
    assert [r.path for r in one] == [str(p) for p in paths]
    assert [r.path for r in four] == [str(p) for p in paths]
    for a, b in zip(one, four, strict=True):
        assert abs(a.finding.probability - b.finding.probability) < 1e-4
        np.testing.assert_allclose(a.finding.heatmap, b.finding.heatmap, atol=1e-4)
    assert one[1].finding.probability == one[4].finding.probability  # the repeated file


def test_in_memory_and_file_paths_agree(default_analyser: Analyser, sample_images: list[Path]) -> None:
    path = sample_images[2]
    from_file = next(iter(default_analyser.analyse_paths([path]))).finding
    in_memory = default_analyser.analyse(read_radiograph(path))
    assert from_file.probability == pytest.approx(in_memory.probability, abs=1e-5)
    assert from_file.letterbox == in_memory.letterbox


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
    results = list(default_analyser.analyse_paths([sample_images[0], empty, missing, sample_images[1]]))
    assert [r.finding is not None for r in results] == [True, False, False, True]
    assert "empty" in results[1].error
    assert "no such file" in results[2].error


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
