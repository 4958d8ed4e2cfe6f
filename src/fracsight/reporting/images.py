"""Images embedded in reports: downscaled PNG thumbnails as ``data:`` URIs.

Thumbnails keep a report small enough to e-mail (a few tens of kB per image) while
still showing where the model looked. Radiographs come in as pixels read by
:mod:`fracsight.io`; :func:`open_picture` opens only pictures made for display (the heat-map
overlay PNGs ``fracsight predict`` writes), which are colour by design and no radiograph.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["open_picture", "png_data_uri"]


def _to_display(image: Image.Image) -> Image.Image:
    """8-bit RGB or L for display; 16-bit and float images are stretched to their own range."""
    if image.mode in ("RGB", "L"):
        return image
    if image.mode in ("RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "1"):
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = np.zeros_like(values) if high <= low else (values - low) / (high - low)
    return Image.fromarray((scaled * 255).round().astype(np.uint8), mode="L")


def png_data_uri(image: Image.Image | np.ndarray, max_side: int = 240) -> str:
    """A ``data:image/png;base64,...`` URI of ``image`` downscaled so its longer side is ``max_side``."""
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
        image = Image.fromarray(array)
    image = _to_display(image).copy()
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def open_picture(path: str | Path) -> Image.Image:
    """A display picture (a heat-map overlay PNG) as it is shown, EXIF orientation applied."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).copy()
