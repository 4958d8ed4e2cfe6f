"""The one front door for input images: detect the format by content, hand to its reader.

A file on disk and bytes received over a network (upload, DICOM association) take the same
path: the size limit, format detection and readers see a seekable stream of known size.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from fracsight.io import limits
from fracsight.io.dicom_reader import read_dicom
from fracsight.io.formats import HEAD_BYTES, ImageFormat, describe_unknown, detect_format
from fracsight.io.pillow_reader import read_pillow_image
from fracsight.io.radiograph import Radiograph, RefusedInput, UnreadableImage
from fracsight.io.reduced import reduce_radiograph
from fracsight.io.truncation import TruncatedImage


def read_radiograph(
    path: str | os.PathLike[str],
    max_pixels: int | None = None,
    needed_side: int | None = None,
    model_side: int | None = None,
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
    Leave it out where pixel coordinates must match the file (expert boxes). With
    ``model_side`` (the model's input side) too, any image is then reduced towards that side and
    the model's input (:mod:`fracsight.io.reduced`), for callers that never show its pixels at
    full size; ``metadata["full_shape"]`` is then the file's size.
    """
    file = Path(path)
    name = str(file)
    limit = limits.MAX_PIXELS if max_pixels is None else max_pixels
    size = _regular_file_size(file, name)
    limits.check_file_size(name, size, limit)
    try:
        with file.open("rb", buffering=0) as raw, _CappedReader(raw, size) as stream:
            radiograph = _read_stream(name, stream, size, limit, needed_side)
    except OSError as error:
        raise UnreadableImage(name, f"cannot be read: {error.strerror or type(error).__name__}") from error
    return _reduced(radiograph, needed_side, model_side)


def read_radiograph_bytes(
    data: bytes,
    name: str,
    max_pixels: int | None = None,
    needed_side: int | None = None,
    model_side: int | None = None,
) -> Radiograph:
    """:func:`read_radiograph` for a file's bytes already in memory; ``name`` stands for it in messages."""
    limit = limits.MAX_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise UnreadableImage(name, "the file is empty (0 bytes)")
    limits.check_file_size(name, len(data), limit)
    radiograph = _read_stream(name, io.BytesIO(data), len(data), limit, needed_side)
    return _reduced(radiograph, needed_side, model_side)


def _reduced(radiograph: Radiograph, needed_side: int | None, model_side: int | None) -> Radiograph:
    if needed_side and model_side:
        return reduce_radiograph(radiograph, needed_side, model_side)
    return radiograph


def _read_stream(name: str, stream: BinaryIO, size: int, limit: int, needed_side: int | None) -> Radiograph:
    head = stream.read(HEAD_BYTES)
    image_format = detect_format(head, size)
    if image_format is None:
        raise UnreadableImage(name, describe_unknown(head))
    stream.seek(0)
    if image_format is ImageFormat.DICOM:
        return read_dicom(name, stream, limit, needed_side)
    return read_pillow_image(name, stream.read(), image_format, limit)


def _regular_file_size(file: Path, name: str) -> int:
    """The size of a regular, non-empty file; a refusal naming what ``file`` is otherwise.

    Pipes, devices and sockets are refused before opening: opening a FIFO blocks until a
    writer appears (a hang). A folder is refused with whether it can be listed, so that a
    folder the walk could not enter says why its files are missing.
    """
    try:
        status = file.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such file") from None
    except OSError as error:
        raise UnreadableImage(name, f"cannot be read: {error.strerror or type(error).__name__}") from error
    if stat.S_ISDIR(status.st_mode):
        raise UnreadableImage(name, _folder_reason(file))
    if not stat.S_ISREG(status.st_mode):
        fifo = stat.S_ISFIFO(status.st_mode)
        kind = "a named pipe (FIFO)" if fifo else "a device, socket or other special file"
        raise UnreadableImage(name, f"is {kind}, not a regular image file")
    if status.st_size == 0:
        raise UnreadableImage(name, "the file is empty (0 bytes)")
    return status.st_size


def _folder_reason(folder: Path) -> str:
    try:
        with os.scandir(folder):
            return "is a directory, not an image file"
    except OSError as error:
        reason = error.strerror or type(error).__name__
        return f"is a folder that cannot be read ({reason}): the files in it were not analysed"


class _CappedReader(io.BufferedReader):
    """A file whose reads never ask for more than is left in it.

    ``BufferedReader.read(n)`` allocates ``n`` bytes before reading, so a damaged DICOM
    element length of 4 GB would cost 4 GB of memory for a file of a few kilobytes.
    """

    def __init__(self, raw: io.RawIOBase, size: int) -> None:
        super().__init__(raw)
        self._size = size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(0, self._size - self.tell()))
            if size == 0:
                return b""
        return super().read(size)


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
