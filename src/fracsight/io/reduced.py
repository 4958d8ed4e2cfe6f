"""A decoded radiograph reduced, in the decoder process, to what its caller needs of it.

``fracsight predict`` needs a 384 px model input and an overlay of at most 1,024 px, yet a
3000 x 3000 radiograph is 36 MB of float32 pixels that the decoder worker hands to the parent,
and that preprocessing and the overlay each read in full. Asked for it (``model_side``), the
reader does those two reductions' first steps itself, exactly as they would be done later:

- ``pixels`` become the image averaged over k x k boxes, k the whole factor by which
  :func:`fracsight.preprocess.resize_gray` would first reduce it on its way to the overlay's
  size (``needed_side`` on the longer side), so the overlay comes out the same;
- ``model_base`` is the image contrast-stretched and box-averaged as
  :func:`fracsight.preprocess.prepare` would do before its final resize, with the percentiles
  of the full image (``metadata["percentiles"]``), so the model input is the same, bit for bit;
- ``metadata["full_shape"]`` is the (height, width) of the file's pixels, so the letterbox,
  heat-map peaks and the image's size stay in the file's pixels (a JPEG 2000 image decoded at
  a lower resolution level included).

A quarter of the pixels to hand over for a 3000 x 3000 image. Only for callers that never show
the pixels at more than ``needed_side``: the service's viewer and ``fracsight evaluate``
(expert boxes) read without it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from fracsight.io.radiograph import Radiograph

# Percentiles of the image intensity mapped to black and white before resizing (the model's
# preprocessing, fracsight.preprocess; here because the decoder process applies them too).
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
# Pixels sampled for the percentiles: enough for a stable estimate, cheap on 3000 x 3000 inputs.
_PERCENTILE_SAMPLES = 65536


def percentiles(pixels: np.ndarray) -> tuple[float, float]:
    """The image's low and high intensity percentiles, from a regular sample of its pixels."""
    flat = pixels.reshape(-1)
    step = max(1, flat.size // _PERCENTILE_SAMPLES)
    lo, hi = np.percentile(flat[::step], [LOW_PERCENTILE, HIGH_PERCENTILE])
    return float(lo), float(hi)


def stretch(pixels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo`` and ``hi`` mapped to 0 and 1 (float32, clipped); a flat image becomes all 0."""
    if hi - lo < 1e-6:  # a flat image: nothing to stretch
        return np.zeros_like(pixels, dtype=np.float32)
    out = (pixels.astype(np.float32, copy=False) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def model_image_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(width, height) of an H x W image inside the model's size x size letterbox."""
    scale = size / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def model_base(
    pixels: np.ndarray, size: int, shape: tuple[int, int]
) -> tuple[np.ndarray | None, tuple[float, float]]:
    """What :func:`fracsight.preprocess.prepare` does to ``pixels`` before its final resize
    (contrast stretch, then the box reduction of ``resize_gray``), done ahead, in the decoder
    process, so that only the result travels; and the percentiles it stretched with. The base is
    None when no box reduction applies. ``shape``: the file's (height, width)."""
    lo, hi = percentiles(pixels)
    new_w, new_h = model_image_size(*shape, size)
    factor = box_factor(pixels.shape[0], pixels.shape[1], new_w, new_h)
    if factor < 2:
        return None, (lo, hi)
    base = np.asarray(float_image(stretch(pixels, lo, hi)).reduce(factor), dtype=np.float32)
    return base, (lo, hi)


def float_image(pixels: np.ndarray) -> Image.Image:
    """2-D float pixels as a Pillow "F" image, the same values.

    Read as raw native float32 rows: ``Image.fromarray`` takes the array as little-endian floats
    and converts them one by one, three times slower (about 30 ms for a 3000 x 3000 image)."""
    data = np.ascontiguousarray(pixels, dtype=np.float32)
    height, width = data.shape
    return Image.frombuffer("F", (width, height), data, "raw", "F", 0, 1)


def box_factor(height: int, width: int, to_width: int, to_height: int) -> int:
    """The whole factor by which :func:`fracsight.preprocess.resize_gray` first box-reduces an
    image of ``height`` x ``width`` on its way to ``to_width`` x ``to_height`` (1: none)."""
    return max(1, min(width // max(1, to_width), height // max(1, to_height)))


def display_factor(height: int, width: int, needed_side: int) -> int:
    """:func:`box_factor` towards the overlay of an image of this size whose longer side is
    reduced to ``needed_side`` (the size :func:`fracsight.explain.overlay_image` draws)."""
    longer = max(height, width)
    if longer <= needed_side:
        return 1
    scale = needed_side / longer
    return box_factor(height, width, max(1, round(width * scale)), max(1, round(height * scale)))


def full_shape(radiograph: Radiograph) -> tuple[int, int]:
    """The (height, width) in the file's pixels that ``radiograph.pixels`` stand for: the file's own
    size when a reader decoded or reduced it smaller (a JPEG 2000 resolution level,
    :func:`reduce_radiograph`), else the pixels' shape."""
    metadata = radiograph.metadata or {}
    if "full_shape" in metadata:
        height, width = metadata["full_shape"]
        return int(height), int(width)
    if metadata.get("decoded_at_scale", 1.0) != 1.0 and metadata.get("rows") and metadata.get("columns"):
        return int(metadata["rows"]), int(metadata["columns"])
    return radiograph.shape


def reduce_radiograph(radiograph: Radiograph, needed_side: int, model_side: int) -> Radiograph:
    """``radiograph`` as its caller needs it (see the module's docstring): ``metadata["full_shape"]``
    always; reduced ``pixels``, ``model_base`` and ``metadata["percentiles"]`` when the image is
    at least twice ``needed_side``.

    Boxes at the right and bottom edges may be partial (Pillow's ``reduce``, as ``resize_gray``
    uses): they average the pixels they hold, so no edge is dropped.
    """
    shape = full_shape(radiograph)
    metadata = {**(radiograph.metadata or {}), "full_shape": list(shape)}
    pixels = radiograph.pixels
    if pixels.ndim != 2 or display_factor(*pixels.shape, needed_side) < 2:
        return dataclasses.replace(radiograph, metadata=metadata)
    factor = display_factor(*pixels.shape, needed_side)
    base, percentiles = model_base(pixels, model_side, shape)
    reduced = np.asarray(float_image(pixels).reduce(factor), dtype=np.float32)
    metadata["decoded_at_scale"] = float(metadata.get("decoded_at_scale", 1.0)) / factor
    metadata["percentiles"] = list(percentiles)
    return dataclasses.replace(radiograph, pixels=reduced, metadata=metadata, model_base=base)
