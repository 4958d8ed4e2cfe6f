"""An image's size from its header, without decoding a pixel: for callers that need only the size.

Expert boxes are checked against the image they were drawn on, and thousands of images should not
be decoded for that. :func:`image_size` answers in the frame :func:`fracsight.io.read_radiograph`
returns (EXIF orientation applied, as displayed and as experts annotate), recognises the format
from the file's bytes, and refuses as the reader does: ``FileNotFoundError`` for a missing path,
:class:`UnreadableImage` with a reason that names the file otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError

from fracsight.io.formats import HEAD_BYTES, ImageFormat, describe_unknown, detect_format
from fracsight.io.radiograph import UnreadableImage

_EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


class ImageSize(NamedTuple):
    """Width and height as read (after the EXIF orientation), and that orientation (1: none)."""

    width: int
    height: int
    exif_orientation: int = 1


def image_size(path: str | os.PathLike[str]) -> ImageSize:
    """The image's size as read (EXIF orientation applied), from its header only."""
    file = Path(path)
    name = str(file)
    if not file.exists():
        raise FileNotFoundError(f"{name}: no such file")
    if not file.is_file():
        raise UnreadableImage(name, "is not a regular image file")
    try:
        with file.open("rb") as stream:
            head = stream.read(HEAD_BYTES)
        image_format = detect_format(head, file.stat().st_size)
        if image_format is None:
            raise UnreadableImage(name, describe_unknown(head))
        if image_format is ImageFormat.DICOM:
            return _dicom_size(name, file)
        return _pillow_size(file)
    except UnreadableImage:
        raise
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as error:
        raise UnreadableImage(name, f"header cannot be read: {error}") from error


def _pillow_size(file: Path) -> ImageSize:
    """PNG, JPEG, TIFF: Pillow opens lazily, so only the header is parsed."""
    with Image.open(file) as image:
        width, height = image.size
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    if not (isinstance(orientation, int) and 1 <= orientation <= 8):
        orientation = 1  # a malformed tag is ignored, as the reader ignores it
    if orientation in _QUARTER_TURNS:
        return ImageSize(height, width, orientation)
    return ImageSize(width, height, orientation)


def _dicom_size(name: str, file: Path) -> ImageSize:
    """DICOM: Columns x Rows from the data set read up to, not including, the pixel data."""
    import pydicom

    header = pydicom.dcmread(file, force=True, stop_before_pixels=True)
    rows, columns = header.get("Rows"), header.get("Columns")
    if not isinstance(rows, int) or not isinstance(columns, int) or rows <= 0 or columns <= 0:
        raise UnreadableImage(name, f"DICOM header gives no image size (Rows {rows!r}, Columns {columns!r})")
    return ImageSize(columns, rows)
