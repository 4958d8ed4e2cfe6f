"""Pointing game, FROC and the drawn outline on synthetic heat maps whose answers are known by
construction."""

from __future__ import annotations

import numpy as np
import pytest

from fracsight.evaluation.localisation import (
    LocalisationInputError,
    Mark,
    evaluate_localisation,
    froc,
    froc_from_marks,
    heatmap_boxes,
    heatmap_cell_px,
    iou,
    mark_hits,
    outline_area,
    outline_measures,
    outline_touches,
    pointing_game,
    wilson_interval,
)
from fracsight.explain import heatmap_outline, map_peak
from fracsight.preprocess import letterbox_geometry

H, W = 120, 100


def blob(
    x: float, y: float, sigma: float = 4.0, peak: float = 1.0, shape: tuple[int, int] = (H, W)
) -> np.ndarray:
    """A Gaussian bump centred at image point (x, y) (pixel centres at +0.5)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return peak * np.exp(-(((cols + 0.5 - x) ** 2) + ((rows + 0.5 - y) ** 2)) / (2 * sigma**2))


def test_peak_of_blob_plateau_and_flat_map() -> None:
    assert map_peak(blob(30.5, 20.5)) == (30.5, 20.5)
    cells = np.zeros((4, 4))
    cells[1, 2] = 1.0
    upsampled = np.kron(cells, np.ones((10, 10)))  # nearest-neighbour 10x: a 10 x 10 plateau
    assert map_peak(upsampled) == (25.0, 15.0)
    flat = pointing_game([np.full((5, 5), 0.3)], [[(0.0, 0.0, 5.0, 5.0)]])  # a constant map points nowhere
    assert (flat.hits, flat.n_flat) == (0, 1)


def test_pointing_game_scores_given_peaks() -> None:
    """``fracsight evaluate`` scores each finding's own peak, not one of the resampled map."""
    box = (40.0, 40.0, 60.0, 60.0)
    maps, probabilities = [blob(80.5, 100.5)], [0.9]
    assert evaluate_localisation(maps, probabilities, [[box]], n_bootstrap=0).pointing.hits == 0
    given = evaluate_localisation(maps, probabilities, [[box]], n_bootstrap=0, peaks=[(50.0, 50.0)])
    assert given.pointing.hits == 1


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-4)


def test_pointing_game_strict_and_tolerant() -> None:
    box = (40.0, 40.0, 60.0, 60.0)
    maps = [
        blob(50.5, 50.5),  # inside
        blob(41.5, 58.5),  # inside, near a corner
        blob(63.5, 50.5),  # 3.5 px right of the box: inside half a cell (4 px), not strictly
        blob(80.5, 100.5),  # far away
        np.zeros((H, W)),  # flat: no peak
        blob(10.5, 10.5),  # image without boxes: left out
    ]
    boxes = [[box]] * 5 + [[]]
    result = pointing_game(maps, boxes, cell_px=8.0)
    assert (result.hits, result.n, result.n_flat, result.n_without_boxes) == (2, 5, 1, 1)
    assert result.rate == pytest.approx(0.4)
    assert result.ci == pytest.approx(wilson_interval(2, 5))
    assert result.tolerant_hits == 3 and result.tolerance_px == 4.0
    strict_only = pointing_game(maps, boxes)
    assert strict_only.tolerant_hits is None and strict_only.hits == 2
    # Any box of the image counts.
    assert pointing_game([blob(80.5, 100.5)], [[box, (75.0, 95.0, 90.0, 110.0)]]).hits == 1


def test_cell_size_from_letterbox_numbers() -> None:
    # 224 px input, 7 x 7 grid, image shrunk by 0.175 (1280 px -> 224): one cell is 182.9 image px.
    assert heatmap_cell_px(224, 7, 0.175) == pytest.approx(182.857, abs=1e-3)


def test_heatmap_boxes_levels_and_scores() -> None:
    heat = blob(25.5, 30.5, peak=1.0) + blob(75.5, 90.5, peak=0.6)
    marks = heatmap_boxes(heat, probability=0.5, level=0.5)
    assert [m.score for m in marks] == pytest.approx([0.5, 0.3], abs=1e-3)
    first = marks[0].box
    assert first[0] < 25.5 < first[2] and first[1] < 30.5 < first[3]
    assert len(heatmap_boxes(heat, 0.5, level=0.7)) == 1
    assert heatmap_boxes(np.zeros((10, 10)), 0.9) == []
    with pytest.raises(LocalisationInputError, match="level"):
        heatmap_boxes(heat, 0.5, level=0.0)


def test_hit_rule_centre_inside_or_iou() -> None:
    lesion = (40.0, 40.0, 50.0, 50.0)
    assert iou((0.0, 0.0, 90.0, 90.0), lesion) < 0.1
    assert mark_hits((0.0, 0.0, 90.0, 90.0), lesion)  # centre (45, 45) inside
    assert iou((46.0, 40.0, 56.0, 50.0), lesion) == pytest.approx(0.25)
    assert mark_hits((46.0, 40.0, 56.0, 50.0), lesion)  # centre (51, 45) outside, IoU 0.25
    assert not mark_hits((48.0, 48.0, 58.0, 58.0), lesion)  # centre outside, IoU 0.02


def test_froc_counts_on_hand_made_marks() -> None:
    l1, l2, l3 = (10.0, 10.0, 20.0, 20.0), (60.0, 60.0, 70.0, 70.0), (30.0, 30.0, 50.0, 50.0)
    marks = [
        [
            Mark((12, 12, 18, 18), 0.9),
            Mark((8, 8, 22, 22), 0.8),
            Mark((80, 5, 90, 15), 0.3),
        ],  # 2nd: repeat on l1
        [Mark((42, 42, 58, 58), 0.5)],  # centre (50, 50) on l3's edge: a hit
        [Mark((5, 5, 9, 9), 0.7), Mark((0, 0, 4, 4), 0.2)],  # negative image: both false
    ]
    lesions = [[l1, l2], [l3], []]
    result = froc_from_marks(marks, lesions, n_bootstrap=0)
    assert (result.n_lesions, result.n_images, result.n_marks) == (3, 3, 6)
    assert result.thresholds.tolist() == pytest.approx([0.9, 0.7, 0.5, 0.3, 0.2])
    assert result.sensitivity.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert result.fp_per_image.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert result.auc == pytest.approx(5 / 9)  # 1/3 on [0, 1/3), 2/3 on [1/3, 1]
    assert froc_from_marks(marks, lesions, max_fppi=0.5, n_bootstrap=0).auc == pytest.approx(4 / 9)
    assert result.sensitivity_at[0.25] == pytest.approx(1 / 3)
    assert result.sensitivity_at[2.0] == pytest.approx(2 / 3)


def test_froc_extremes() -> None:
    lesions = [[(10.0, 10.0, 20.0, 20.0)], [(30.0, 30.0, 40.0, 40.0)], []]
    perfect = [[Mark((10, 10, 20, 20), 0.9)], [Mark((30, 30, 40, 40), 0.8)], [Mark((0, 0, 5, 5), 0.1)]]
    result = froc_from_marks(perfect, lesions, n_bootstrap=200)
    assert result.auc == pytest.approx(1.0) and result.ci == pytest.approx((1.0, 1.0))
    blind = [[Mark((50, 50, 60, 60), 0.9)], [], [Mark((0, 0, 5, 5), 0.8)]]
    assert froc_from_marks(blind, lesions, n_bootstrap=0).auc == 0.0
    # A lesion found only after 2 false positives per image is outside the [0, 1] FPPI window.
    late = [[Mark((10, 10, 20, 20), 0.1)], [Mark((0, 0, 1, 1), 0.9)], [Mark((0, 0, 1, 1), 0.95)] * 5]
    assert froc_from_marks(late, lesions, n_bootstrap=0).auc == 0.0


def _synthetic_study(n: int, hit_rate: float, seed: int) -> tuple[list[np.ndarray], list[float], list[list]]:
    """Half the images have a lesion; the map points at it with probability ``hit_rate``."""
    rng = np.random.default_rng(seed)
    maps, probs, boxes = [], [], []
    for i in range(n):
        x, y = rng.uniform(20, 80), rng.uniform(20, 100)
        if i % 2 == 0:
            boxes.append([(x - 6, y - 6, x + 6, y + 6)])
            on_target = rng.random() < hit_rate
            maps.append(blob(x, y) if on_target else blob((x + 50) % 100, (y + 60) % 120))
            probs.append(float(rng.uniform(0.5, 1.0)))
        else:
            boxes.append([])
            maps.append(blob(x, y))
            probs.append(float(rng.uniform(0.0, 0.6)))
    return maps, probs, boxes


def test_froc_from_heatmaps_and_bootstrap_ci() -> None:
    maps, probs, boxes = _synthetic_study(160, hit_rate=0.7, seed=3)
    result = froc(maps, probs, boxes, n_bootstrap=400)
    hits = pointing_game(maps, boxes).rate
    assert result.n_lesions == 80 and result.n_images == 160
    assert result.sensitivity.max() == pytest.approx(hits)  # one mark per map: found iff pointed at
    assert result.ci[0] < result.auc < result.ci[1]
    assert 0.05 < result.ci[1] - result.ci[0] < 0.35
    good = froc(*_synthetic_study(160, hit_rate=0.95, seed=4), n_bootstrap=0).auc
    poor = froc(*_synthetic_study(160, hit_rate=0.3, seed=4), n_bootstrap=0).auc
    assert good > result.auc > poor


def test_evaluate_localisation_reads_each_map_once() -> None:
    maps, probs, boxes = _synthetic_study(20, hit_rate=0.8, seed=5)
    calls = [0] * len(maps)

    def lazy(i: int):
        def load() -> np.ndarray:
            calls[i] += 1
            return maps[i]

        return load

    result = evaluate_localisation([lazy(i) for i in range(20)], probs, boxes, cell_px=10.0, n_bootstrap=50)
    assert calls == [1] * 20
    assert result.pointing.n == 10 and result.froc.n_images == 20
    assert result.pointing.tolerant_hits is not None and result.pointing.tolerant_hits >= result.pointing.hits


def test_input_errors_name_the_problem() -> None:
    with pytest.raises(LocalisationInputError, match="2 heat maps but 1 box lists"):
        pointing_game([np.ones((3, 3)), np.ones((3, 3))], [[]])
    with pytest.raises(LocalisationInputError, match="nothing to point at"):
        pointing_game([np.ones((3, 3))], [[]])
    with pytest.raises(LocalisationInputError, match="FROC is undefined"):
        froc_from_marks([[]], [[]])
    with pytest.raises(LocalisationInputError, match="box 0 .* has no area"):
        froc_from_marks([[]], [[(5.0, 5.0, 5.0, 9.0)]])
    with pytest.raises(LocalisationInputError, match="heat map 0 has 1 non-finite"):
        pointing_game([np.array([[np.nan, 1.0]])], [[(0.0, 0.0, 1.0, 1.0)]])
    with pytest.raises(LocalisationInputError, match="cell_px must be > 0"):
        pointing_game([blob(5, 5)], [[(0.0, 0.0, 9.0, 9.0)]], cell_px=[0.0])
    with pytest.raises(LocalisationInputError, match="need one of each per image"):
        froc([blob(5, 5)], [0.5, 0.2], [[]])


# ----------------------------------------------------------------------------------------------
# Outline of the hot region

SQUARE = [(10.0, 10.0), (30.0, 10.0), (30.0, 30.0), (10.0, 30.0), (10.0, 10.0)]
# An L: the square 0..40 without its lower-right quarter 20..40 x 20..40 (y grows downwards).
ELL = [(0.0, 0.0), (40.0, 0.0), (40.0, 20.0), (20.0, 20.0), (20.0, 40.0), (0.0, 40.0), (0.0, 0.0)]


@pytest.mark.parametrize(
    ("box", "touches"),
    [
        ((15.0, 15.0, 20.0, 20.0), True),  # box inside the outline: no edge meets it
        ((0.0, 0.0, 40.0, 40.0), True),  # outline inside the box
        ((5.0, 15.0, 35.0, 20.0), True),  # a band across: edges cross, no corner inside the other
        ((30.0, 12.0, 40.0, 20.0), True),  # shares part of the right edge only
        ((30.0, 30.0, 40.0, 40.0), True),  # shares the lower-right corner only
        ((0.0, 0.0, 10.0, 10.0), True),  # shares the upper-left corner only
        ((31.0, 12.0, 40.0, 20.0), False),  # one px right of the outline
        ((31.0, 31.0, 40.0, 40.0), False),  # one px diagonally off the corner
        ((12.0, 0.0, 20.0, 9.0), False),  # one px above
    ],
)
def test_outline_touches_a_square(box: tuple[float, float, float, float], touches: bool) -> None:
    assert outline_touches(SQUARE, [box]) is touches
    open_polygon = SQUARE[:-1]  # the first point need not be repeated
    assert outline_touches(open_polygon, [box]) is touches


def test_outline_touches_follows_the_polygon_not_its_bounding_box() -> None:
    """A box in the notch of an L lies inside the L's bounding box but outside the L."""
    assert not outline_touches(ELL, [(25.0, 25.0, 35.0, 35.0)])
    assert not outline_touches(ELL, [(21.0, 21.0, 39.0, 39.0)])
    assert outline_touches(ELL, [(20.0, 25.0, 30.0, 30.0)])  # on the notch's left edge
    assert outline_touches(ELL, [(20.0, 20.0, 30.0, 30.0)])  # at the notch's inner corner
    assert outline_touches(ELL, [(5.0, 25.0, 10.0, 30.0)])  # inside the L's lower arm
    assert outline_touches(ELL, [(25.0, 25.0, 35.0, 35.0), (5.0, 5.0, 6.0, 6.0)])  # any box counts
    assert not outline_touches(ELL, [])
    assert not outline_touches([], [(0.0, 0.0, 1.0, 1.0)])


def test_outline_area_by_shoelace() -> None:
    assert outline_area(ELL) == pytest.approx(1200.0)  # 40 x 40 less 20 x 20
    assert outline_area(list(reversed(ELL))) == pytest.approx(1200.0)  # either direction
    assert outline_area(ELL[:-1]) == pytest.approx(1200.0)  # without the repeated first point
    assert outline_area(SQUARE) == pytest.approx(400.0)
    assert outline_area([(0.0, 0.0), (5.0, 0.0), (0.0, 0.0)]) == 0.0  # a collapsed outline


def test_drawn_outline_touches_a_box_on_its_edge_through_letterbox_arithmetic() -> None:
    """The outline of a real map through a letterbox whose scale is not a round number still meets a
    box drawn on its edge (corners come from cell x scale, with rounding errors)."""
    box = letterbox_geometry(300, 200, 64)  # scale 64/300, padded left and right
    grid = np.full((4, 4), 0.1)
    grid[1, 1] = grid[2, 1] = 1.0
    outline = heatmap_outline(grid, box)
    left, right = min(x for x, _ in outline), max(x for x, _ in outline)
    top, bottom = min(y for _, y in outline), max(y for _, y in outline)
    assert bottom != 225.0 and round(bottom, 9) == 225.0  # the cells end at image row 225, give or take
    assert outline_touches(outline, [(left, 225.0, right, 240.0)])  # an expert box drawn from row 225 down
    assert outline_touches(outline, [(round(right, 9), top, right + 20.0, bottom)])
    assert not outline_touches(outline, [(right + 1.0, top, right + 20.0, bottom)])
    assert not outline_touches(outline, [(left, 226.0, right, 240.0)])
    assert outline_area(outline) == pytest.approx((right - left) * (bottom - top))


def test_outline_measures_on_hand_made_maps() -> None:
    """Three boxed images through the real outline of a 4 x 4 map on a 128 x 64 image (model input 64,
    so a cell is 32 image px and the image fills grid rows 1 and 2), and one image without boxes."""
    box = letterbox_geometry(64, 128, 64)
    assert (box.scale, box.pad_x, box.pad_y) == (0.5, 0, 16)

    def outline(*cells: tuple[int, int]) -> list[tuple[float, float]]:
        grid = np.full((4, 4), 0.1)
        for cell in cells:
            grid[cell] = 1.0
        return heatmap_outline(grid, box)

    one, two, three = outline((1, 0)), outline((1, 0), (1, 1)), outline((1, 0), (1, 1), (2, 0))
    assert one == [(0.0, 0.0), (32.0, 0.0), (32.0, 32.0), (0.0, 32.0), (0.0, 0.0)]
    image = (128, 64)
    result = outline_measures(
        [one, two, three, one],
        [
            [(32.0, 10.0, 50.0, 20.0)],  # on the right edge of the one cell: touches
            [(70.0, 0.0, 90.0, 20.0)],  # 6 px right of the two cells: misses
            [(40.0, 40.0, 50.0, 50.0)],  # in the notch of the three cells' L: misses
            [],  # no boxes: left out
        ],
        [image] * 4,
        n_bootstrap=500,
    )
    fractions = sorted(a / (128 * 64) for a in (32 * 32, 64 * 32, 3 * 32 * 32))
    assert (result.touches, result.n, result.n_without_boxes) == (1, 3, 1)
    assert result.rate == pytest.approx(1 / 3)
    assert result.ci == pytest.approx(wilson_interval(1, 3))
    assert result.median_area_fraction == pytest.approx(fractions[1])
    assert result.area_quartiles == pytest.approx(tuple(np.quantile(fractions, [0.25, 0.75])))
    lower, upper = result.area_ci
    assert fractions[0] <= lower <= result.median_area_fraction <= upper <= fractions[2]
    again = outline_measures([one, two, three, one], [[(0, 0, 1, 1)]] * 3 + [[]], [image] * 4, n_bootstrap=0)
    assert again.touches == 3 and all(np.isnan(again.area_ci))


def test_outline_measures_refuse_inputs_that_do_not_fit() -> None:
    with pytest.raises(LocalisationInputError, match="2 outlines, 1 box lists"):
        outline_measures([SQUARE, SQUARE], [[(0, 0, 1, 1)]], [(40, 40)])
    with pytest.raises(LocalisationInputError, match="none of the 1 images has an expert box"):
        outline_measures([SQUARE], [[]], [(40, 40)])
    with pytest.raises(LocalisationInputError, match="no area"):
        outline_measures([SQUARE], [[(0, 0, 1, 1)]], [(0, 40)])
