"""An image's identity by content: the hashes a model card keeps of the images the model was trained on.

Two hashes, because each catches copies the other misses:

* ``file``: SHA-256 of the file's bytes. Catches the very files, under any name or path.
* ``pixels``: SHA-256 of the pixels as :func:`fracsight.io.read_radiograph` reads them (shape and
  float32 values, EXIF orientation applied). Also catches lossless copies whose bytes differ:
  metadata stripped or rewritten (an anonymiser), an 8-bit image saved again as PNG or TIFF, the
  orientation tag applied to the pixels.

Neither catches a lossy copy (re-compressed or resized JPEG): a perceptual fingerprint short
enough for a card is not reliable on radiographs (:mod:`fracsight.data.duplicates` measured 64-bit
hashes putting hundreds of pairs of different radiographs within a few bits); ``fracsight audit``
finds such near-copies when both image sets are at hand.

A card keeps the first :data:`DIGEST_CHARS` hex digits of each hash (64 bits): a chance match
between a few thousand training images and a site's images is below one in a billion.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DIGEST_CHARS", "ImageDigests", "file_sha256", "image_digests", "pixel_sha256"]

DIGEST_CHARS = 16
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pixel_sha256(pixels: np.ndarray) -> str:
    """SHA-256 (hex) of an array's shape, dtype and values: equal means identical pixels."""
    array = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(f"{array.shape}|{array.dtype.str}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ImageDigests:
    """Both SHA-256 digests (hex) of one image; ``pixels`` is None when :mod:`fracsight.io` refuses
    the file (no command can then analyse it)."""

    file: str
    pixels: str | None


def image_digests(path: str | os.PathLike[str], file: str | None = None) -> ImageDigests:
    """Both digests of the image file at ``path`` (one full decode); ``file`` when already known."""
    from fracsight.io import RefusedInput, read_radiograph

    file = file or file_sha256(path)
    try:
        return ImageDigests(file, pixel_sha256(read_radiograph(Path(path)).pixels))
    except RefusedInput:
        return ImageDigests(file, None)
