"""FracAtlas on disk -> one record per image: label, region, hardware, views and fracture boxes.

Layout (see the dataset's README): ``images/Fractured/*.jpg`` and ``images/Non_fractured/*.jpg``
(the folder is the label), ``dataset.csv`` (region, view and hardware flags),
``annotations/coco_fracture_masks.json`` (boxes) and ``annotations/yolo/*.txt`` (the same boxes,
normalised; used when an image is missing from the COCO file or the COCO file is absent).

Boxes are returned as (x0, y0, x1, y1) in pixels of the image *as displayed*, i.e. after its
EXIF orientation is applied: the FracAtlas annotators drew on the displayed image (checked on
IMG0002628, stored 373 x 454 with orientation 8, annotated as 454 x 373), which is the frame
:func:`fracsight.io.read_radiograph` returns; sizes come from :func:`fracsight.io.image_size`.
"""

from __future__ import annotations

import csv
import enum
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fracsight.data.boxes import Box, read_yolo_boxes
from fracsight.data.labels import REGIONS
from fracsight.io import image_size

log = logging.getLogger(__name__)

_LABEL_FOLDERS = {"Fractured": True, "Non_fractured": False}


class FracAtlasLayoutError(ValueError):
    """The folder does not have the FracAtlas layout, or its files disagree with each other."""


class Region(str, enum.Enum):
    """Body region of one radiograph, from the dataset's one-hot flags."""

    HAND = "hand"
    LEG = "leg"
    HIP = "hip"
    SHOULDER = "shoulder"
    MIXED = "mixed"  # the 'mixed' flag, or several region flags at once
    UNKNOWN = "unknown"  # no flag set, or the image has no row in dataset.csv


class View(str, enum.Enum):
    FRONTAL = "frontal"
    LATERAL = "lateral"
    OBLIQUE = "oblique"


@dataclass(frozen=True)
class FracAtlasImage:
    """One FracAtlas radiograph with its labels; ``boxes`` are in displayed-image pixels."""

    path: Path
    image_id: str  # file name as in dataset.csv, e.g. "IMG0000019.jpg"
    fractured: bool  # from the folder, which the README names as the label
    region: Region
    region_flags: frozenset[str]  # which of hand, leg, hip, shoulder are flagged (several when mixed)
    hardware: bool
    multiscan: bool
    views: frozenset[View]
    fracture_count: int | None  # dataset.csv's count; None without a csv row
    csv_fractured: bool | None  # dataset.csv's 'fractured' flag, kept so audits can compare
    boxes: tuple[Box, ...]
    box_source: str  # "coco", "yolo" or "none"
    width: int  # displayed (EXIF-oriented) size, px
    height: int
    exif_orientation: int  # 1 = stored as displayed


def region_from_flags(flags: dict[str, str]) -> Region:
    """'mixed' flag or more than one region flag -> MIXED; exactly one -> that region; none -> UNKNOWN."""
    on = [name for name in REGIONS if _flag(flags, name)]
    if _flag(flags, "mixed") or len(on) > 1:
        return Region.MIXED
    return Region(on[0]) if on else Region.UNKNOWN


def _flag(row: dict[str, str], name: str) -> bool:
    value = (row.get(name) or "0").strip()
    if value not in ("0", "1"):
        raise FracAtlasLayoutError(
            f"dataset.csv: column {name!r} of {row.get('image_id')!r} is {value!r}, expected 0 or 1"
        )
    return value == "1"


def _coco_boxes(root: Path) -> dict[str, tuple[int, int, list[Box]]] | None:
    """file name -> (COCO width, COCO height, [x0, y0, x1, y1]); None when the file is absent."""
    path = root / "annotations" / "coco_fracture_masks.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    by_id: dict[int, tuple[str, int, int]] = {
        im["id"]: (im["file_name"], int(im["width"]), int(im["height"])) for im in data["images"]
    }
    out: dict[str, tuple[int, int, list[Box]]] = {name: (w, h, []) for name, w, h in by_id.values()}
    for ann in data["annotations"]:
        if ann["image_id"] not in by_id:
            raise FracAtlasLayoutError(
                f"{path.name}: annotation {ann.get('id')} names unknown image_id {ann['image_id']}"
            )
        x, y, w, h = (float(v) for v in ann["bbox"])
        out[by_id[ann["image_id"]][0]][2].append((x, y, x + w, y + h))
    return out


def _scaled(boxes: Iterable[Box], sx: float, sy: float) -> list[Box]:
    return [(x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in boxes]


def _read_rows(root: Path) -> dict[str, dict[str, str]]:
    path = root / "dataset.csv"
    if not path.is_file():
        raise FracAtlasLayoutError(f"{root}: no dataset.csv (is this a FracAtlas folder?)")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = {"image_id", "fractured", *REGIONS} - set(rows[0] if rows else {})
    if missing:
        raise FracAtlasLayoutError(f"{path}: missing columns {sorted(missing)}")
    return {row["image_id"].strip(): row for row in rows}


def load_fracatlas(root: str | Path) -> list[FracAtlasImage]:
    """All images under ``root/images/{Fractured,Non_fractured}``, sorted by image id.

    Raises :class:`FracAtlasLayoutError` when the layout is missing or dataset.csv lists images
    that are not on disk; images on disk without a csv row are kept with region UNKNOWN.
    """
    root = Path(root)
    files: dict[str, tuple[Path, bool]] = {}
    for folder, label in _LABEL_FOLDERS.items():
        for path in sorted((root / "images" / folder).glob("*.jpg")):
            if path.name in files:
                raise FracAtlasLayoutError(
                    f"{path.name} is in both images/Fractured and images/Non_fractured"
                )
            files[path.name] = (path, label)
    if not files:
        raise FracAtlasLayoutError(f"{root}: no JPEGs under images/Fractured or images/Non_fractured")
    rows = _read_rows(root)
    absent = sorted(set(rows) - set(files))
    if absent:
        raise FracAtlasLayoutError(
            f"dataset.csv lists {len(absent)} images not on disk (first: {absent[:5]})"
        )
    no_row = sorted(set(files) - set(rows))
    if no_row:
        log.warning("%d images have no dataset.csv row; region unknown (first: %s)", len(no_row), no_row[:5])

    coco = _coco_boxes(root)
    yolo_dir = root / "annotations" / "yolo"
    images = []
    for name in sorted(files):
        path, fractured = files[name]
        row = rows.get(name)
        width, height, orientation = image_size(path)
        boxes, source = _boxes_for(name, width, height, coco, yolo_dir)
        images.append(
            FracAtlasImage(
                path=path,
                image_id=name,
                fractured=fractured,
                region=region_from_flags(row) if row else Region.UNKNOWN,
                region_flags=frozenset(f for f in REGIONS if row and _flag(row, f)),
                hardware=_flag(row, "hardware") if row else False,
                multiscan=_flag(row, "multiscan") if row else False,
                views=frozenset(v for v in View if row and _flag(row, v.value)),
                fracture_count=int(row["fracture_count"]) if row and row.get("fracture_count") else None,
                csv_fractured=_flag(row, "fractured") if row else None,
                boxes=tuple(boxes),
                box_source=source,
                width=width,
                height=height,
                exif_orientation=orientation,
            )
        )
    return images


def _boxes_for(
    name: str,
    width: int,
    height: int,
    coco: dict[str, tuple[int, int, list[Box]]] | None,
    yolo_dir: Path,
) -> tuple[list[Box], str]:
    if coco is not None and name in coco:
        coco_w, coco_h, boxes = coco[name]
        if (coco_w, coco_h) != (width, height):
            # The README promises COCO coordinates match the shipped image; if not, rescale and say so.
            log.warning(
                "%s: COCO size %dx%d differs from the image's %dx%d; boxes rescaled",
                name,
                coco_w,
                coco_h,
                width,
                height,
            )
            boxes = _scaled(boxes, width / coco_w, height / coco_h)
        return list(boxes), "coco"
    yolo = yolo_dir / (Path(name).stem + ".txt")
    if yolo.is_file():
        boxes = read_yolo_boxes(yolo, width, height)
        return boxes, "yolo" if boxes else "none"
    return [], "none"
