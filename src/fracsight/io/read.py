"""The one front door for input images: detect the format by content, hand to its reader."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fracsight.io import limits
from fracsight.io.dicom_reader import read_dicom
from fracsight.io.formats import HEAD_BYTES, ImageFormat, describe_unknown, detect_format
from fracsight.io.pillow_reader import read_pillow_image
from fracsight.io.radiograph import Radiograph, RefusedInput, UnreadableImage
from fracsight.io.truncation import TruncatedImage


def read_radiograph(
    path: str | os.PathLike[str], max_pixels: int | None = None, needed_side: int | None = None
) -> Radiograph:
    """Read a PNG, JPEG, TIFF or DICOM radiograph into float32 gray pixels in [0, 1].

    The format is recognised from the file's bytes, not its name. Images over
    ``max_pixels`` (default :data:`fracsight.io.limits.MAX_PIXELS`) are refused
    from their header, before decoding. Raises :class:`FileNotFoundError` for a
    missing path, :class:`UnreadableImage` (incl. ``TruncatedImage``) for files
    that cannot be decoded, and :class:`NotARadiograph` for images that decode
    but are not single-frame grayscale projection radiographs.

    ``needed_side`` lets a format that can decode a smaller image cheaply (JPEG 2000
    in DICOM) stop at a resolution whose longer side is still at least that many
    pixels; ``metadata["decoded_at_scale"]`` then says by how much it shrank.
    Leave it out where pixel coordinates must match the file (expert boxes).
    """
    file = Path(path)
    name = str(file)
    if not file.exists():
        raise FileNotFoundError(f"{name}: no such file")
    if file.is_dir():
        raise UnreadableImage(name, "is a directory, not an image file")
    limit = limits.MAX_PIXELS if max_pixels is None else max_pixels
    try:
        status = file.stat()
        _check_regular_file(name, status.st_mode)
        size = status.st_size
        with file.open("rb") as stream:
            head = stream.read(HEAD_BYTES)
    except OSError as error:
        raise UnreadableImage(name, f"cannot be read: {error.strerror or error}") from error
    if size == 0:
        raise UnreadableImage(name, "the file is empty (0 bytes)")
    limits.check_file_size(name, size, limit)
    image_format = detect_format(head, size)
    if image_format is None:
        raise UnreadableImage(name, describe_unknown(head))
    if image_format is ImageFormat.DICOM:
        return read_dicom(file, limit, needed_side)
    try:
        data = file.read_bytes()
    except OSError as error:
        raise UnreadableImage(name, f"cannot be read: {error.strerror or error}") from error
    return read_pillow_image(file, data, image_format, limit)


def _check_regular_file(name: str, mode: int) -> None:
    """Refuse pipes, devices and sockets: opening a FIFO blocks until a writer appears (a hang)."""
    if stat.S_ISREG(mode):
        return
    kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device, socket or other special file"
    raise UnreadableImage(name, f"is {kind}, not a regular image file")


def is_truncated(path: str | os.PathLike[str]) -> bool:
    """True when the file's image data ends early, whether it was salvaged or refused.

    Reads the file as :func:`read_radiograph` does (so it costs one decode). Files
    refused for another reason first (e.g. a truncated CT) count as not truncated.
    """
    try:
        return bool(read_radiograph(path).metadata.get("truncated", False))
    except TruncatedImage:
        return True
    except RefusedInput:
        return False
