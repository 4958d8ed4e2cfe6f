"""Images embedded in reports: downscaled PNG thumbnails as ``data:`` URIs, and heat-map overlays.

Thumbnails keep a report small enough to e-mail (a few tens of kB per image) while
still showing where the model looked.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["png_data_uri", "thumbnail_data_uri", "heat_overlay"]


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


def thumbnail_data_uri(path: str | Path, max_side: int = 240) -> str:
    """Read an image file and return it as a downscaled PNG ``data:`` URI."""
    with Image.open(path) as image:
        image.load()
        return png_data_uri(image, max_side=max_side)


def _heat_colours(heat: np.ndarray) -> np.ndarray:
    """A perceptually ordered dark-blue -> yellow ramp (viridis-like, from four anchor colours)."""
    anchors = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)
    position = np.clip(heat, 0.0, 1.0) * (len(anchors) - 1)
    low = np.floor(position).astype(int).clip(0, len(anchors) - 2)
    frac = (position - low)[..., None]
    return anchors[low] * (1 - frac) + anchors[low + 1] * frac


def heat_overlay(gray: np.ndarray, heat: np.ndarray, max_alpha: float = 0.55) -> np.ndarray:
    """Blend a heat map (same H x W, values in [0, 1]) over a grayscale image in [0, 1]; uint8 RGB.

    Opacity follows the heat value, so cold regions leave the radiograph untouched.
    """
    if gray.shape != heat.shape:
        raise ValueError(f"heat map shape {heat.shape} differs from image shape {gray.shape}")
    if gray.ndim != 2:
        raise ValueError(f"image must be 2-D grayscale, got shape {gray.shape}")
    base = np.repeat(np.clip(gray, 0.0, 1.0)[..., None] * 255.0, 3, axis=2)
    alpha = (np.clip(heat, 0.0, 1.0) * max_alpha)[..., None]
    blended = base * (1 - alpha) + _heat_colours(heat) * alpha
    return blended.round().clip(0, 255).astype(np.uint8)
