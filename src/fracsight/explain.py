"""Heat map -> pictures and places: overlay PNG for people, peak and map on image pixels for code."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fracsight.finding import Category, Finding, Letterbox

# Cells below this map value stay uncoloured: the overlay shows where evidence is, not noise.
OVERLAY_FLOOR = 0.2
_CATEGORY_COLOUR = {
    Category.FRACTURE: (230, 40, 40),
    Category.DOUBT: (245, 170, 20),
    Category.NO_FRACTURE: (60, 170, 75),
}


def heatmap_to_image(heatmap: np.ndarray, box: Letterbox) -> np.ndarray:
    """Resample a cell map over the square model input to the original image (H x W)."""
    size = box.size
    square = Image.fromarray(heatmap.astype(np.float32), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR
    )
    new_w, new_h = round(box.width * box.scale), round(box.height * box.scale)
    crop = square.crop((box.pad_x, box.pad_y, box.pad_x + max(1, new_w), box.pad_y + max(1, new_h)))
    return np.asarray(crop.resize((box.width, box.height), Image.Resampling.BILINEAR), dtype=np.float32)


def heatmap_peak(heatmap: np.ndarray, box: Letterbox) -> tuple[float, float]:
    """Centre of the hottest cell, in original image pixels (x, y)."""
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    cell = box.size / heatmap.shape[0]
    x, y = box.to_image((col + 0.5) * cell, (row + 0.5) * cell)
    return float(np.clip(x, 0, box.width - 1)), float(np.clip(y, 0, box.height - 1))


def _colormap(values: np.ndarray) -> np.ndarray:
    """A yellow-to-red ramp for values in [0, 1] -> RGB uint8 (hotter = redder)."""
    v = np.clip(values, 0.0, 1.0)
    out = np.empty(v.shape + (3,), dtype=np.uint8)
    out[..., 0] = 255
    out[..., 1] = (230.0 * (1.0 - v)).astype(np.uint8)
    out[..., 2] = (40.0 * (1.0 - v)).astype(np.uint8)
    return out


def overlay_image(pixels: np.ndarray, finding: Finding, max_side: int = 1024) -> Image.Image:
    """The radiograph with the heat map in colour and the probability and category written on it.

    Kept at the input's aspect ratio; large images are reduced to ``max_side`` so a folder of
    3000-pixel studies does not become gigabytes of PNG. Blending is done by Pillow in uint8:
    this runs once per image in ``predict``, so it must cost little next to the model.
    """
    h, w = pixels.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    gray = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if scale < 1.0:
        factor = int(1 / scale)
        if factor >= 2:
            gray = gray.reduce(factor)
        gray = gray.resize(size, Image.Resampling.BILINEAR)
    box = finding.letterbox
    small_box = Letterbox(box.size, box.scale / scale, box.pad_x, box.pad_y, size[1], size[0])
    heat = heatmap_to_image(finding.heatmap, small_box)
    alpha = np.clip((heat - OVERLAY_FLOOR) * (0.55 * 255.0 / (1.0 - OVERLAY_FLOOR)), 0, 255).astype(np.uint8)
    colour = Image.fromarray(_colormap(heat), mode="RGB")
    image = Image.composite(colour, gray.convert("RGB"), Image.fromarray(alpha, mode="L"))
    _caption(image, finding)
    return image


def _caption(image: Image.Image, finding: Finding) -> None:
    draw = ImageDraw.Draw(image)
    text = (
        f"{finding.category.value.replace('_', ' ')}  p={finding.probability:.2f}  (AI aid, not a diagnosis)"
    )
    font_size = max(12, image.width // 40)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(3, font_size // 4)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - left, pad - top), text, fill=_CATEGORY_COLOUR[finding.category], font=font)
