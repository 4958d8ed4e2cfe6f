"""The one rule for a case's id: how a row of any CSV (manifest, labels, predictions, split file)
names an image, so that files written by different tools match case by case.

An id is the file stem when the value is a path or an image file name (``.../IMG0000001.jpg`` and
``IMG0000001.jpg`` are both ``IMG0000001``), else the value itself (``patient.12`` stays as is).
"""

from __future__ import annotations

from pathlib import PurePath

__all__ = ["ID_COLUMNS", "IMAGE_SUFFIXES", "case_id"]

# Column names that hold a case's id, in the order they are looked for.
ID_COLUMNS = ("id", "image_id", "case_id", "path")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".dcm", ".dicom", ".tif", ".tiff", ".bmp"})


def case_id(value: str, from_path: bool = False) -> str:
    """The matching key of a case: the file stem for paths and image file names, else the value."""
    value = value.strip()
    if not value:
        return ""
    pure = PurePath(value.replace("\\", "/"))
    if from_path or "/" in value or "\\" in value or pure.suffix.lower() in IMAGE_SUFFIXES:
        return pure.stem if pure.suffix.lower() in IMAGE_SUFFIXES else pure.name
    return value
