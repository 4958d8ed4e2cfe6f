"""The one definition of how a radiograph becomes model input, shared by training and inference.

A model is only as good as the match between the images it was trained on and the images
it is shown, so both ``fracsight train`` and ``fracsight predict`` call :func:`prepare`
and the model card records its parameters.

Steps: robust contrast stretch (percentiles of the image, so DICOM windows, 16-bit PNGs and
8-bit JPEGs land on the same scale), aspect-preserving resize with antialiasing, centred
letterbox on a black square, scale to [-1, 1] (what the ImageNet EfficientNet-Lite weights expect).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from fracsight.io.radiograph import RefusedInput
from fracsight.io.reduced import (
    HIGH_PERCENTILE,
    LOW_PERCENTILE,
    box_factor,
    float_image,
    model_image_size,
)
from fracsight.io.reduced import percentiles as _percentiles
from fracsight.io.reduced import stretch as _stretch

# Images the model cannot say anything about: a probability for them would only mislead.
MIN_SIDE = 32  # px on the shorter side: below this the whole image is one heat-map cell
MAX_ASPECT = 8.0  # longer / shorter side: a full-leg or spine stitch is about 1:3 to 1:4
MIN_CONTRAST = 0.02  # spread between the low and high percentiles, as a share of the gray scale

PREPROCESSING = {
    "name": "stretch-letterbox-v1",
    "contrast": f"percentiles {LOW_PERCENTILE}-{HIGH_PERCENTILE} -> [0, 1], clipped",
    "resize": "aspect-preserving, Pillow bilinear with antialiasing, centred on a black square",
    "scale": "[0, 1] -> [-1, 1]; padding is -1",
}


@dataclass(frozen=True)
class Letterbox:
    """Where the original image sits inside the square model input (for mapping back)."""

    size: int  # side of the square model input, px
    scale: float  # model px per original px
    pad_x: int  # left padding, model px
    pad_y: int  # top padding, model px
    height: int  # original image height, px
    width: int  # original image width, px

    def to_model(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale + self.pad_x, y * self.scale + self.pad_y

    def to_image(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.pad_x) / self.scale, (y - self.pad_y) / self.scale


def stretch_contrast(pixels: np.ndarray) -> np.ndarray:
    """Map the image's low/high intensity percentiles to 0 and 1 (float32, clipped)."""
    return _stretch(pixels, *_percentiles(pixels))


def letterbox_geometry(height: int, width: int, size: int) -> Letterbox:
    """Where an H x W image goes inside the size x size square."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image shape {height}x{width} is empty")
    scale = size / max(height, width)
    new_w, new_h = model_image_size(height, width, size)
    return Letterbox(
        size=size,
        scale=scale,
        pad_x=(size - new_w) // 2,
        pad_y=(size - new_h) // 2,
        height=height,
        width=width,
    )


class NotAnalysable(RefusedInput):
    """The image was read, but the model has nothing meaningful to say about it (blank, tiny,
    strip-shaped): refused like an unreadable file, with its own code."""

    code = "not_analysable"

    def __init__(self, reason: str, path: str = "image") -> None:
        super().__init__(path, reason)


def check_analysable(
    pixels: np.ndarray, shape: tuple[int, int] | None = None, percentiles: tuple[float, float] | None = None
) -> tuple[float, float]:
    """Refuse blank, tiny and strip-shaped images, which would still get a confident probability.

    ``shape`` and ``percentiles``: the file's (height, width) and the full image's percentiles
    when ``pixels`` are a reduced copy of it (:mod:`fracsight.io.reduced`); it is judged on
    those. Returns the contrast-stretch percentiles (low, high) it measured, so
    :func:`prepare` does not measure them twice.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {pixels.shape}")
    if min(pixels.shape) == 0:
        raise ValueError(f"image shape {pixels.shape[0]}x{pixels.shape[1]} is empty")
    height, width = shape or pixels.shape
    if min(height, width) == 0:
        raise ValueError(f"image shape {height}x{width} is empty")
    if min(height, width) < MIN_SIDE:
        raise NotAnalysable(
            f"image is {width} x {height} pixels: too small to analyse (at least {MIN_SIDE} on each side)"
        )
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise NotAnalysable(
            f"image is {width} x {height} pixels: a strip more than {MAX_ASPECT:g} times longer than "
            "wide is not one radiograph view"
        )
    lo, hi = (float(v) for v in percentiles) if percentiles is not None else _percentiles(pixels)
    if hi - lo < MIN_CONTRAST:
        raise NotAnalysable(
            "image is blank: 99% of its pixels lie within "
            f"{100 * (hi - lo):.1f}% of the gray scale (check the window or the export)"
        )
    return lo, hi


def resize_gray(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Float gray pixels resized to ``width`` x ``height`` (bilinear, antialiased when shrinking)."""
    if pixels.shape == (height, width):  # already that size (a typical overlay): no round trip
        return np.asarray(pixels, dtype=np.float32)
    image = float_image(pixels)
    if (width, height) != image.size:
        # Reduce big images by an integer factor first: same antialiasing, a fraction of the time.
        factor = box_factor(image.size[1], image.size[0], width, height)
        if factor >= 2:
            image = image.reduce(factor)
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _target(height: int, width: int, size: int) -> tuple[Letterbox, int, int]:
    """The letterbox of an H x W image in the size x size square, and the image's width and
    height inside it."""
    return letterbox_geometry(height, width, size), *model_image_size(height, width, size)


def prepare(
    pixels: np.ndarray,
    size: int,
    shape: tuple[int, int] | None = None,
    base: np.ndarray | None = None,
    percentiles: tuple[float, float] | None = None,
) -> tuple[np.ndarray, Letterbox]:
    """Radiograph pixels (H x W float in [0, 1]) -> model input (size x size float32 in [-1, 1]).

    ``shape``, ``base`` and ``percentiles``: for pixels reduced in the decoder process
    (:mod:`fracsight.io.reduced`), the file's (height, width), its ``model_base`` and the full
    image's percentiles; the model input is then the one the full image gives, and the
    letterbox the file's, so the heat map maps back to the file's pixels. Raises
    :class:`NotAnalysable` (a :class:`~fracsight.io.RefusedInput`) for images
    :func:`check_analysable` refuses.
    """
    lo, hi = check_analysable(pixels, shape, percentiles)
    box, new_w, new_h = _target(*(shape or pixels.shape), size)
    resized = resize_gray(_stretch(pixels, lo, hi) if base is None else base, new_w, new_h)
    out = np.full((size, size), -1.0, dtype=np.float32)
    out[box.pad_y : box.pad_y + new_h, box.pad_x : box.pad_x + new_w] = resized * 2.0 - 1.0
    return out, box
