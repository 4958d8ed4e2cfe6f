"""Heat map -> pictures and places: overlay PNG for people, peak and map on image pixels for code.

The one definition of the heat map's peak (:func:`map_peak`, :func:`heatmap_peak`) and of the
overlay picture: ``fracsight predict`` draws it, ``Finding.peak()`` returns it and ``fracsight
evaluate`` scores it against expert boxes. Imports only the geometry (:mod:`fracsight.preprocess`)
and the categories (:mod:`fracsight.decide`). What it draws is described by :class:`Explained`,
which a :class:`~fracsight.finding.Finding` is, so that :mod:`fracsight.finding` can use this module
without this module knowing it (not even for type checking).
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fracsight.decide import CATEGORIES, Category
from fracsight.io.png_encode import encode_png
from fracsight.preprocess import Letterbox, resize_gray, stretch_contrast
from fracsight.safety import Scope

# Cells below this map value stay uncoloured: the overlay shows where evidence is, not noise.
OVERLAY_FLOOR = 0.2
# Overlays of small images are enlarged until their shorter side is this many pixels (the
# longer side stays within ``max_side``): below it the caption cannot fit across the image.
MIN_DISPLAY_SIDE = 128
CAPTION_SPACING = 4  # px between caption lines
# Longer side of an overlay picture by default: the heat map is a grid of 24 x 24 cells and the
# overlay a pointer to where it is, while the radiograph itself stays the one to read.
OVERLAY_MAX_SIDE = 1024
# Written on every overlay (the PNG of `predict`, the Secondary Capture sent to a PACS).
CAPTION = "AI result, an aid, not a diagnosis"


class Explained(Protocol):
    """What an overlay shows of an answer: a :class:`~fracsight.finding.Finding` is one."""

    @property
    def probability(self) -> float: ...

    @property
    def category(self) -> Category: ...

    @property
    def heatmap(self) -> np.ndarray: ...

    @property
    def letterbox(self) -> Letterbox: ...

    @property
    def scope(self) -> Scope | None: ...


def heatmap_to_image(heatmap: np.ndarray, box: Letterbox) -> np.ndarray:
    """Resample a cell map over the square model input to the original image (H x W)."""
    size = box.size
    square = Image.fromarray(heatmap.astype(np.float32), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR
    )
    new_w, new_h = round(box.width * box.scale), round(box.height * box.scale)
    crop = square.crop((box.pad_x, box.pad_y, box.pad_x + max(1, new_w), box.pad_y + max(1, new_h)))
    return np.asarray(crop.resize((box.width, box.height), Image.Resampling.BILINEAR), dtype=np.float32)


def map_peak(heat: np.ndarray) -> tuple[float, float]:
    """(x, y) of a map's maximum in its own pixel units, pixel (r, c) centred at (c + 0.5, r + 0.5).

    Several equal maxima side by side (a nearest-upsampled cell, saturated cells) give the
    centroid of the 8-connected plateau that holds the first maximum, not its corner; a
    constant map is one plateau, so its peak is its centre.
    """
    top = heat.max()
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(heat)), heat.shape))
    at_top = {(int(r), int(c)) for r, c in np.argwhere(heat == top)}
    plateau, stack = {first}, [first]
    while stack:
        r, c = stack.pop()
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                neighbour = (r + dr, c + dc)
                if neighbour in at_top and neighbour not in plateau:
                    plateau.add(neighbour)
                    stack.append(neighbour)
    rows, cols = np.array(sorted(plateau)).T
    return float(cols.mean() + 0.5), float(rows.mean() + 0.5)


def heatmap_peak(heatmap: np.ndarray, box: Letterbox) -> tuple[float, float]:
    """The cell map's peak (:func:`map_peak`: centre of the hottest cell), in original image pixels
    (x, y), clipped to the image."""
    col, row = map_peak(heatmap)
    cell = box.size / heatmap.shape[0]
    x, y = box.to_image(col * cell, row * cell)
    return float(np.clip(x, 0, box.width - 1)), float(np.clip(y, 0, box.height - 1))


def heatmap_outline(heatmap: np.ndarray, box: Letterbox, level: float = 0.5) -> list[tuple[float, float]]:
    """The outline of the hot region around the peak, in original image pixels: the cells at or
    above ``level`` times the peak value, 4-connected to the peak cell, traced along cell edges
    as a closed polygon (first point repeated last), clipped to the image.

    What a PACS viewer draws of the finding (the DICOM presentation state): the region the model
    points at, not a single point.
    """
    rows, cols = heatmap.shape
    col, row = map_peak(heatmap)
    start = (min(int(row), rows - 1), min(int(col), cols - 1))
    hot = heatmap >= heatmap[start] * level
    region, stack = {start}, [start]
    while stack:
        r, c = stack.pop()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < rows and 0 <= nc < cols and hot[nr, nc] and (nr, nc) not in region:
                region.add((nr, nc))
                stack.append((nr, nc))
    corners = _outer_boundary(region)
    cell = box.size / cols
    points = []
    for x, y in corners:
        ix, iy = box.to_image(x * cell, y * cell)
        points.append((float(np.clip(ix, 0, box.width)), float(np.clip(iy, 0, box.height))))
    return points


def _outer_boundary(cells: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """Corner points (x = column, y = row) of the outer boundary of a 4-connected set of grid cells,
    clockwise on screen, closed (first point repeated), without points in the middle of a side."""
    step: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r, c in cells:  # each boundary edge, with the region on its right (y grows downwards)
        if (r - 1, c) not in cells:
            step.setdefault((c, r), []).append((c + 1, r))
        if (r, c + 1) not in cells:
            step.setdefault((c + 1, r), []).append((c + 1, r + 1))
        if (r + 1, c) not in cells:
            step.setdefault((c + 1, r + 1), []).append((c, r + 1))
        if (r, c - 1) not in cells:
            step.setdefault((c, r + 1), []).append((c, r))
    loops = []
    while step:
        first = min(step)
        loop, point = [first], first
        while True:
            ends = step[point]
            following = ends.pop()
            if not ends:
                del step[point]
            if following == first:
                break
            loop.append(following)
            point = following
        loops.append(loop)
    # The outer boundary encloses the most area (holes are inside it).
    outer = max(loops, key=lambda p: abs(_area(p)))
    kept = [
        p for i, p in enumerate(outer)
        if _turns(outer[i - 1], p, outer[(i + 1) % len(outer)])
    ]  # fmt: skip
    return [*kept, kept[0]]


def _area(points: list[tuple[int, int]]) -> float:
    return 0.5 * sum(
        x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True)
    )


def _turns(before: tuple[int, int], at: tuple[int, int], after: tuple[int, int]) -> bool:
    return (at[0] - before[0]) * (after[1] - at[1]) != (at[1] - before[1]) * (after[0] - at[0])


def _colour_planes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A yellow-to-red ramp for values in [0, 1] (hotter = redder): the green and blue planes as
    uint8; red is 255 throughout."""
    cooler = np.clip(values, 0.0, 1.0)
    np.subtract(1.0, cooler, out=cooler)
    return (230.0 * cooler).astype(np.uint8), (40.0 * cooler).astype(np.uint8)


def _display_scale(height: int, width: int, max_side: int) -> float:
    """Factor from image to overlay pixels: large images shrink to ``max_side``, small ones grow."""
    if max(height, width) > max_side:
        return max_side / max(height, width)
    return max(1.0, min(MIN_DISPLAY_SIDE / min(height, width), max_side / max(height, width)))


def _display_gray(pixels: np.ndarray, size: tuple[int, int], stretch: bool = True) -> Image.Image:
    """The radiograph as 8-bit gray at ``size``, windowed to its own intensity percentiles as the
    model sees it (``stretch``): a 16-bit file holding 12-bit data would otherwise show almost
    black. Without ``stretch`` the pixels are shown as given (a DICOM image's own window or VOI
    LUT already put its grey levels where its modality wants them).

    Resized (as the model input is) before the stretch: the percentiles barely move, and the
    per-pixel work is done on the overlay's pixels, not the file's.
    """
    shown = resize_gray(pixels, *size)
    shown = stretch_contrast(shown) if stretch else np.clip(shown, 0.0, 1.0)
    return Image.fromarray((shown * 255.0 + 0.5).astype(np.uint8), mode="L")


def overlay_image(
    pixels: np.ndarray, finding: Explained, max_side: int | None = OVERLAY_MAX_SIDE, stretch: bool = True
) -> Image.Image:
    """The radiograph with the heat map in colour and the probability and category written on it.

    Kept at the input's aspect ratio; large images are reduced to ``max_side`` so a folder of
    3000-pixel studies does not become gigabytes of PNG, and small ones enlarged to
    :data:`MIN_DISPLAY_SIDE` so the caption stays legible; ``max_side`` None or 0: the pixels'
    own size. Blending is done by Pillow in uint8: this runs once per image in ``predict``, so
    it must cost little next to the model. ``stretch``: see :func:`_display_gray`. Pixels that
    are a reduced copy of the image (:mod:`fracsight.io.reduced`) give the picture the image
    itself would: its size comes from the image's (the letterbox's) size.
    """
    h, w = finding.letterbox.height, finding.letterbox.width  # the image's size, whatever the pixels'
    scale = _display_scale(h, w, max_side or max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    gray = _display_gray(pixels, size, stretch).convert("RGBA")
    if finding.category == Category.OUT_OF_SCOPE:  # not scored: a heat map would suggest a finding
        image = gray.convert("RGB")
    else:
        image = Image.alpha_composite(gray, heatmap_layer(finding.heatmap, finding.letterbox, size)).convert(
            "RGB"
        )
    _caption(image, finding)
    return image


def heatmap_layer(heatmap: np.ndarray, box: Letterbox, size: tuple[int, int]) -> Image.Image:
    """The heat map alone as an RGBA picture of ``size`` (width, height) over the whole image.

    Transparent where the map is below :data:`OVERLAY_FLOOR`, increasingly opaque and red above
    it; a viewer lays it over the radiograph and sets its opacity, ``overlay_image`` burns it in.
    The map is resampled straight to ``size`` (never to the file's resolution); each channel is
    computed as one contiguous plane and Pillow interleaves them (filling the four channels of
    one array in numpy costs several times more, in strided writes).
    """
    width, height = size
    scaled = Letterbox(box.size, box.scale * box.width / width, box.pad_x, box.pad_y, height, width)
    heat = heatmap_to_image(heatmap, scaled)
    alpha = np.clip((heat - OVERLAY_FLOOR) * (0.55 * 255.0 / (1.0 - OVERLAY_FLOOR)), 0, 255)
    planes = [*_colour_planes(heat), alpha.astype(np.uint8)]
    red = Image.new("L", size, 255)
    return Image.merge("RGBA", [red, *(Image.fromarray(plane, mode="L") for plane in planes)])


def _wrap(draw: ImageDraw.ImageDraw, parts: list[str], font: ImageFont.ImageFont, width: float) -> str:
    """``parts`` on one line when they fit in ``width``, else on as many lines as needed (a part
    too long for a line is split at its spaces), so no word is cut off at the image's edge."""

    def fits(text: str) -> bool:
        return draw.textlength(text, font=font) <= width

    lines: list[str] = []
    for part in parts:
        words = [part] if fits(part) else part.split(" ")
        for i, word in enumerate(words):
            joint = " " if i else "  "  # two spaces between parts, one inside a split part
            if lines and fits(lines[-1] + joint + word):
                lines[-1] += joint + word
            else:
                lines.append(word)
    return "\n".join(lines)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` px, loaded once per size (loading it costs more than
    drawing a caption)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


# A FreeType face may be used by one thread at a time (FreeType's rule): predict draws overlays
# from writer threads, the service from its request threads. With the GIL Pillow's text calls
# hold it anyway; the lock keeps that true on a free-threaded Python. A caption costs ~1 ms.
_FONT_LOCK = threading.Lock()


def _caption(image: Image.Image, finding: Explained) -> None:
    with _FONT_LOCK:
        _draw_caption(image, finding)


def _draw_caption(image: Image.Image, finding: Explained) -> None:
    draw = ImageDraw.Draw(image)
    if finding.category == Category.OUT_OF_SCOPE:
        reason = finding.scope.reason if finding.scope is not None and finding.scope.reason else ""
        parts = [p for p in (f"{CATEGORIES[finding.category].word}: not scored", reason, CAPTION) if p]
    else:
        parts = [CATEGORIES[finding.category].word, f"p={finding.probability:.2f}", CAPTION]
    font_size = max(12, image.width // 40)
    font = _font(font_size)
    pad = max(3, font_size // 4)
    text = _wrap(draw, parts, font, image.width - 2 * pad)
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, spacing=CAPTION_SPACING)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=(0, 0, 0))
    draw.multiline_text(
        (pad - left, pad - top),
        text,
        fill=CATEGORIES[finding.category].colour,
        font=font,
        spacing=CAPTION_SPACING,
    )


def save_png(image: Image.Image, target: Path, text: dict[str, str]) -> None:
    """Write ``image`` as a PNG under a hidden temporary name, then rename: a full disk or a signal
    leaves no half-written picture. ``text`` goes into PNG text chunks, so the picture names its
    study and model wherever it goes. Encoded by :func:`fracsight.io.png_encode.encode_png` (half
    of Pillow's time, the same size)."""
    data = encode_png(image, text)
    part = target.with_name(f".{target.name}.part")
    try:
        _write_file(part, data)
        os.replace(part, target)
    except BaseException:
        try:
            part.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (a function of its own, so a test can make the disk full)."""
    with open(path, "wb") as out:
        out.write(data)
