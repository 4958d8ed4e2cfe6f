"""Datasets the model is run on by ``fracsight evaluate DATASET``: a FracAtlas folder or a manifest CSV.

* FracAtlas layout: ``images/Fractured``, ``images/Non_fractured``, ``dataset.csv`` and
  ``annotations/`` (read by :mod:`fracsight.data.fracatlas`); the folder is the label,
  ``region``, ``hardware``, ``multiscan`` and ``views`` become grouping columns, and the
  expert boxes are kept for localisation.
* Manifest CSV: ``path,label`` (or ``fractured``) and optional ``region`` and other
  grouping columns; a ``boxes`` column holds, per image, a JSON list of
  ``[x0, y0, x1, y1]`` pixel boxes (the format ``fracsight audit`` reads) or the name of a
  YOLO label file (``class cx cy w h``, normalised). Relative paths are relative to the
  manifest.

Boxes are (x0, y0, x1, y1) in pixels of the image as fracsight reads it, i.e. as
displayed (EXIF orientation applied by :mod:`fracsight.io`), the frame of the model's heat
maps and the frame FracAtlas experts annotated in; manifest boxes are taken to be in that
frame too (YOLO boxes normalised to the displayed size).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fracsight.evaluation.errors import LabelsError
from fracsight.evaluation.inputs import MISSING_VALUE, LabelTable, case_id, read_labels

__all__ = ["Box", "Dataset", "load_dataset", "is_fracatlas_folder"]

Box = tuple[float, float, float, float]


@dataclass
class Dataset:
    """Labelled images to run the model on, with expert boxes when the dataset has them."""

    labels: LabelTable  # images is set: one file per case
    boxes: dict[str, list[Box]] | None  # case id -> boxes; None when the dataset has no boxes at all
    kind: str


def is_fracatlas_folder(path: Path) -> bool:
    return (path / "images" / "Fractured").is_dir() and (path / "images" / "Non_fractured").is_dir()


def load_dataset(path: str | Path) -> Dataset:
    """A FracAtlas folder or a manifest CSV as labels + image paths (+ boxes)."""
    path = Path(path)
    if path.is_dir():
        if not is_fracatlas_folder(path):
            raise LabelsError(
                f"dataset folder {path} does not have the FracAtlas layout (images/Fractured, "
                "images/Non_fractured, dataset.csv); give a manifest CSV (path,label[,region]) instead"
            )
        return _fracatlas(path)
    if path.suffix.lower() == ".csv":
        return _manifest(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist")
    raise LabelsError(f"dataset {path} is neither a FracAtlas folder nor a manifest .csv file")


def _fracatlas(root: Path) -> Dataset:
    from fracsight.data.fracatlas import load_fracatlas

    images = load_fracatlas(root)
    ids = [case_id(im.image_id) for im in images]
    columns = {
        "region": [im.region.value for im in images],
        "hardware": ["1" if im.hardware else "0" for im in images],
        "multiscan": ["1" if im.multiscan else "0" for im in images],
        "views": ["+".join(sorted(v.value for v in im.views)) or "(missing)" for im in images],
    }
    labels = LabelTable(
        source=f"FracAtlas folder {root}",
        ids=ids,
        fractured=np.asarray([1 if im.fractured else 0 for im in images], dtype=np.int8),
        lines=[0] * len(images),
        columns=columns,
        images=[str(im.path) for im in images],
    )
    boxes = {case: list(im.boxes) for case, im in zip(ids, images, strict=True)}
    return Dataset(labels=labels, boxes=boxes, kind="FracAtlas folder")


def _stored_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image as displayed (EXIF orientation applied); reads the header only."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # quarter turns swap the sides
            return height, width
        return width, height


def _json_boxes(text: str, where: str) -> list[Box]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelsError(f"{where}: boxes {text[:60]!r} are not JSON nor a .txt file ({exc.msg})") from None
    ok = isinstance(raw, list) and all(
        isinstance(b, list) and len(b) == 4 and all(isinstance(v, int | float) for v in b) for b in raw
    )
    if not ok:
        raise LabelsError(f"{where}: boxes must be a JSON list of [x0, y0, x1, y1], got {text[:60]!r}")
    return [(float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in raw]


def _check_boxes(boxes: list[Box], size: tuple[int, int], where: str) -> list[Box]:
    """Refuse boxes localisation cannot score, now (naming the line) rather than after the model run.

    A box needs a finite area (x1 > x0, y1 > y0) and must overlap the (width, height) image;
    a box wholly outside it is in another frame and would count as a missed fracture.
    """
    width, height = size
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or not (x1 > x0 and y1 > y0):
            raise LabelsError(
                f"{where}: column 'boxes': box {k} {[x0, y0, x1, y1]} has no area (needs x1 > x0 and y1 > y0)"
            )
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise LabelsError(
                f"{where}: column 'boxes': box {k} {[x0, y0, x1, y1]} lies wholly outside the "
                f"{width}x{height} image (boxes are in pixels of the image as displayed)"
            )
    return boxes


def _manifest(path: Path) -> Dataset:
    labels = read_labels(path)
    if labels.images is None:
        raise LabelsError(f"manifest {path} needs a 'path' column naming each image file")
    missing = [img for img in labels.images if not img or not Path(img).is_file()]
    if missing:
        names = ", ".join(str(m) for m in missing[:5])
        raise FileNotFoundError(f"manifest {path}: {len(missing)} image files do not exist (first: {names})")
    boxes: dict[str, list[Box]] | None = None
    if "boxes" in labels.columns:
        from fracsight.data.fracatlas import read_yolo_boxes

        boxes = {}
        for case, image, line, value in zip(
            labels.ids, labels.images, labels.lines, labels.columns["boxes"], strict=True
        ):
            if value in ("", MISSING_VALUE):
                boxes[case] = []
            elif value.lower().endswith(".txt"):
                file = Path(value) if Path(value).is_absolute() else path.parent / value
                if not file.is_file():
                    raise FileNotFoundError(f"manifest {path}: box file {file} (line {line}) does not exist")
                width, height = _stored_size(Path(image))
                found = [tuple(map(float, b)) for b in read_yolo_boxes(file, width, height)]
                boxes[case] = _check_boxes(
                    found, (width, height), f"manifest {path} line {line} ({file.name})"
                )
            else:
                where = f"manifest {path} line {line}"
                found = _json_boxes(value, where)
                boxes[case] = _check_boxes(found, _stored_size(Path(image)) if found else (0, 0), where)
        del labels.columns["boxes"]
    return Dataset(labels=labels, boxes=boxes, kind="manifest")
