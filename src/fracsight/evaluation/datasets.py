"""Datasets the model is run on by ``fracsight evaluate DATASET``: a FracAtlas folder or a manifest CSV.

* FracAtlas layout: ``images/Fractured``, ``images/Non_fractured``, ``dataset.csv`` and
  ``annotations/`` (read by :mod:`fracsight.data.fracatlas`); the folder is the label,
  ``region``, ``hardware``, ``multiscan`` and ``views`` become grouping columns, and the
  expert boxes are kept for localisation.
* Manifest CSV, read by the one manifest reader (:mod:`fracsight.data.manifest`, which also
  refuses boxes localisation cannot score): its columns other than ``path``, the label and
  ``boxes`` become grouping columns, as written.

Boxes are those of :mod:`fracsight.data.boxes`: (x0, y0, x1, y1) in pixels of the image as
displayed, the frame of the model's heat maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fracsight.data.boxes import Box
from fracsight.data.ids import case_id
from fracsight.data.manifest import LABEL_COLUMNS, read_manifest
from fracsight.evaluation.errors import LabelsError
from fracsight.evaluation.inputs import MISSING_VALUE, LabelTable

__all__ = ["Dataset", "load_dataset", "is_fracatlas_folder"]


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


def _manifest(path: Path) -> Dataset:
    rows = read_manifest(path)
    missing = [row.text for row in rows if not row.path.is_file()]
    if missing:
        names = ", ".join(missing[:5])
        raise FileNotFoundError(f"manifest {path}: {len(missing)} image files do not exist (first: {names})")
    skip = {"path", "boxes", *LABEL_COLUMNS}
    names = [name for name in rows[0].columns if name not in skip]
    labels = LabelTable(
        source=str(path),
        ids=[row.id for row in rows],
        fractured=np.asarray([row.label for row in rows], dtype=np.int8),
        lines=[row.line for row in rows],
        columns={name: [row.columns.get(name) or MISSING_VALUE for row in rows] for name in names},
        images=[str(row.path) for row in rows],
    )
    has_boxes = rows[0].boxes is not None
    boxes = {row.id: list(row.boxes or ()) for row in rows} if has_boxes else None
    return Dataset(labels=labels, boxes=boxes, kind="manifest")
