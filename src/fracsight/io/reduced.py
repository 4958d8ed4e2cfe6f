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
    # Imported here: fracsight.preprocess itself imports fracsight.io.
    from fracsight.preprocess import model_base

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
