"""``fracsight.preprocess.prepare``: the one path from radiograph pixels to model input."""

from __future__ import annotations

import numpy as np
import pytest

from fracsight.io import read_radiograph
from fracsight.preprocess import (
    MIN_SIDE,
    NotAnalysable,
    check_analysable,
    letterbox_geometry,
    prepare,
    stretch_contrast,
)


def _smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A radiograph-like float image in [0, 1]: smooth gradients plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.5 + 0.3 * np.sin(xx / 17.0) * np.cos(yy / 23.0)
    return np.clip(base + rng.normal(0, 0.05, (height, width)), 0, 1).astype(np.float32)


@pytest.mark.parametrize(("height", "width", "size"), [(300, 200, 64), (200, 300, 96), (128, 128, 64)])
def test_output_shape_dtype_and_range(height: int, width: int, size: int) -> None:
    out, box = prepare(_smooth_image(height, width), size)
    assert out.shape == (size, size)
    assert out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    # The contrast stretch spreads the image over most of the range (resizing softens the extremes).
    assert out.min() < -0.7
    assert out.max() > 0.7
    assert (box.height, box.width, box.size) == (height, width, size)


def test_wide_image_is_padded_top_and_bottom_and_centred() -> None:
    out, box = prepare(_smooth_image(100, 200), 64)
    assert box.scale == pytest.approx(0.32)
    assert box.pad_x == 0 and box.pad_y == 16
    assert np.all(out[:16] == -1.0) and np.all(out[48:] == -1.0)
    # The image band itself is not padding.
    assert np.mean(out[16:48] > -1.0) > 0.9


def test_tall_image_is_padded_left_and_right_and_centred() -> None:
    height, width, size = 300, 101, 96
    out, box = prepare(_smooth_image(height, width), size)
    new_w = round(width * size / height)
    assert box.pad_y == 0
    left, right = box.pad_x, size - new_w - box.pad_x
    assert abs(left - right) <= 1
    assert np.all(out[:, :left] == -1.0) and np.all(out[:, size - right :] == -1.0)
    assert np.mean(out[:, left : size - right] > -1.0) > 0.9


def test_aspect_ratio_is_preserved() -> None:
    for height, width in [(1280, 1053), (454, 373), (169, 211), (50, 1000)]:
        box = letterbox_geometry(height, width, 384)
        new_w, new_h = round(width * box.scale), round(height * box.scale)
        assert max(new_w, new_h) == 384
        assert new_w / new_h == pytest.approx(width / height, rel=0.02)


def test_content_lands_where_letterbox_to_model_says() -> None:
    """A bright block in the image appears at ``Letterbox.to_model`` of its corners.

    Within 2 model px: resampling blurs the edges, and the integer pre-reduction of big images
    shifts content by up to one model pixel.
    """
    image = np.zeros((200, 400), dtype=np.float32)
    image[50:100, 300:350] = 1.0
    out, box = prepare(image, 128)
    x0, y0 = box.to_model(300, 50)
    x1, y1 = box.to_model(350, 100)
    inside = out[round(y0) + 2 : round(y1) - 2, round(x0) + 2 : round(x1) - 2]
    assert inside.size > 0 and inside.min() > 0.99
    outside = out.copy()
    outside[round(y0) - 2 : round(y1) + 2, round(x0) - 2 : round(x1) + 2] = -1.0
    assert outside.max() == pytest.approx(-1.0, abs=1e-6)


def test_letterbox_round_trip() -> None:
    box = letterbox_geometry(1280, 1053, 384)
    for x, y in [(0.0, 0.0), (1052.0, 1279.0), (517.3, 40.25), (1000.0, 640.0)]:
        mx, my = box.to_model(x, y)
        assert 0 <= mx <= box.size and 0 <= my <= box.size
        assert box.to_image(mx, my) == pytest.approx((x, y), abs=1e-6)
    assert box.to_model(0, 0) == (box.pad_x, box.pad_y)
    far_x, far_y = box.to_model(box.width, box.height)
    assert far_x == pytest.approx(box.size - box.pad_x, abs=1.0)
    assert far_y == pytest.approx(box.size - box.pad_y, abs=1.0)


def test_contrast_stretch_ignores_an_affine_intensity_change() -> None:
    """Windowing differences (gain and offset) must not change what the model sees."""
    image = _smooth_image(300, 240)
    a, box_a = prepare(image, 96)
    b, box_b = prepare(0.5 * image + 0.2, 96)
    assert box_a == box_b
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_contrast_stretch_maps_percentiles_to_0_and_1() -> None:
    image = _smooth_image(200, 200) * 0.3 + 0.4  # a narrow window, like a dim JPEG
    stretched = stretch_contrast(image)
    assert stretched.dtype == np.float32
    assert np.percentile(stretched, 0.5) == pytest.approx(0.0, abs=0.01)
    assert np.percentile(stretched, 99.5) == pytest.approx(1.0, abs=0.01)


def test_flat_image_stretches_without_nan_but_is_not_analysed() -> None:
    flat = np.full((50, 80), 0.3, dtype=np.float32)
    assert np.array_equal(stretch_contrast(flat), np.zeros_like(flat))
    with pytest.raises(NotAnalysable, match="image is blank"):
        prepare(flat, 64)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((20, 300), "too small to analyse"), ((40, 400), "not one radiograph view"), ((400, 40), "strip")],
)
def test_tiny_and_strip_images_are_not_analysed(shape: tuple[int, int], message: str) -> None:
    with pytest.raises(NotAnalysable, match=message):
        prepare(_smooth_image(*shape), 64)


def test_limits_leave_real_proportions_alone() -> None:
    # A full-leg stitch (1:4), a small but real 32 px image, and faint but visible contrast pass.
    check_analysable(_smooth_image(1600, 400))
    check_analysable(_smooth_image(MIN_SIDE, MIN_SIDE))
    check_analysable(0.5 + 0.05 * _smooth_image(200, 200))


def test_3000_pixel_square_input() -> None:
    image = np.random.default_rng(1).random((3000, 3000), dtype=np.float32)
    out, box = prepare(image, 384)
    assert out.shape == (384, 384)
    assert (box.pad_x, box.pad_y) == (0, 0)
    assert np.isfinite(out).all()
    # Antialiased reduction of uniform noise averages towards mid-gray instead of aliasing.
    assert abs(float(out.mean())) < 0.1
    assert float(out.std()) < 0.2


def test_real_radiograph(sample_images) -> None:
    radiograph = read_radiograph(sample_images[0])
    out, box = prepare(radiograph.pixels, 384)
    assert out.shape == (384, 384) and np.isfinite(out).all()
    assert (box.height, box.width) == radiograph.shape


@pytest.mark.parametrize(
    "shape",
    [(10,), (10, 10, 3), (2, 10, 10), (1, 1, 10, 10)],
    ids=["1-D", "RGB", "stack", "4-D"],
)
def test_non_2d_input_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="2-D"):
        prepare(np.zeros(shape, dtype=np.float32), 64)


def test_empty_image_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        prepare(np.zeros((0, 10), dtype=np.float32), 64)
