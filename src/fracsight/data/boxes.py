"""Fracture boxes: the one way a box is written, and the one rule for what box an image can hold.

A box is (x0, y0, x1, y1) in pixels of the image as fracsight reads it, i.e. as displayed (EXIF
orientation applied by :mod:`fracsight.io`): the frame FracAtlas experts annotated in and the
frame of the model's heat maps. A manifest's ``boxes`` cell holds a JSON list of [x0, y0, x1, y1]
numbers, or the name of a YOLO label file (``class cx cy w h``, normalised to that frame).

:func:`box_problem` is the one geometric rule. Training and evaluation refuse a box with no area
or none of the image (it cannot be learnt or scored); the audit also reports boxes that overhang
the image, which is often a sign of another frame or a sloppy annotation.
"""

from __future__ import annotations

import enum
import json
import math
from pathlib import Path

__all__ = [
    "BOX_TOLERANCE_PX",
    "Box",
    "BoxProblem",
    "box_problem",
    "describe_box",
    "parse_boxes",
    "read_yolo_boxes",
]

Box = tuple[float, float, float, float]

# Boxes may overhang the image by this much (px) before they count as overhanging: annotation
# tools round, and FracAtlas' rescaled COCO coordinates carry float noise.
BOX_TOLERANCE_PX = 1.0


class BoxProblem(str, enum.Enum):
    NO_AREA = "no_area"  # x1 <= x0 or y1 <= y0 (or not finite)
    OUTSIDE = "outside"  # covers no pixel of the image
    OVERHANG = "overhang"  # partly outside the image, by more than the tolerance


def parse_boxes(text: str) -> tuple[Box, ...]:
    """Boxes from a JSON list of [x0, y0, x1, y1] numbers ('' is no box); ValueError says what is wrong."""
    text = text.strip()
    if not text:
        return ()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"boxes {text[:60]!r} are not JSON nor the name of a .txt YOLO file ({exc.msg})"
        ) from None
    ok = isinstance(raw, list) and all(
        isinstance(b, list)
        and len(b) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in b)
        for b in raw
    )
    if not ok:
        raise ValueError(f"boxes must be a JSON list of [x0, y0, x1, y1] numbers, got {text[:60]!r}")
    return tuple((float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in raw)


def read_yolo_boxes(path: Path, width: int, height: int) -> list[Box]:
    """Boxes of a YOLO label file (class cx cy w h, normalised) in pixels of a width x height image."""
    boxes: list[Box] = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise ValueError(f"{path}: line {line_no} has {len(parts)} fields, expected 5 (class cx cy w h)")
        cx, cy, w, h = (float(v) for v in parts[1:])
        boxes.append(
            ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        )
    return boxes


def box_problem(box: Box, size: tuple[int, int] | None) -> tuple[BoxProblem, str] | None:
    """What is wrong with ``box`` on an image of ``size`` (width, height), in words, or None.

    Without a size (the image could not be read) only the box's own area is judged.
    """
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box) or not (x1 > x0 and y1 > y0):
        return BoxProblem.NO_AREA, "has no area (needs x1 > x0 and y1 > y0)"
    if size is None:
        return None
    width, height = size
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return BoxProblem.OUTSIDE, (
            f"lies wholly outside the {width}x{height} image (boxes are in pixels of the image as displayed)"
        )
    tol = BOX_TOLERANCE_PX
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        return (
            BoxProblem.OVERHANG,
            f"lies partly outside the {width}x{height} image (by more than {tol:g} px)",
        )
    return None


def describe_box(index: int, box: Box) -> str:
    """'box 2 [10.0, 12.5, 40.0, 60.0]': how every message names a box."""
    return f"box {index} {[float(v) for v in box]}"
