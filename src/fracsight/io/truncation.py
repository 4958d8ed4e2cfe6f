"""Truncated files: the error for them, and how much of a truncated JPEG really decoded.

Files cut short by an interrupted transfer are common in real collections
(FracAtlas ships some). A JPEG that ends early still decodes top-down up to the
cut, and libjpeg fills every missing block with zero coefficients, which comes
out as flat mid-gray (128). The rows above the first such all-128 tail are real.
"""

from __future__ import annotations

import numpy as np

from fracsight.io.radiograph import UnreadableImage

# A truncated JPEG is kept only when at least this share of its rows decoded. Below it,
# the gray band would hide a tenth or more of the anatomy the model and the reader see.
MIN_DECODED_FRACTION = 0.9

# What libjpeg writes for blocks it never received (zero DCT coefficients + level shift).
_MISSING_BLOCK_VALUE = 128


class TruncatedImage(UnreadableImage):
    """The file ends before its image data does, and too little (or nothing) can be decoded."""


def decoded_row_fraction(pixels: np.ndarray) -> float:
    """Share of rows above the flat mid-gray tail that a truncated JPEG decodes to.

    ``pixels`` is the 8-bit array (H x W or H x W x C) decoded with an end-of-image
    marker appended. Rows that are entirely 128 at the bottom were never received.
    """
    height = pixels.shape[0]
    if height == 0:
        return 0.0
    rows = pixels.reshape(height, -1)
    received = np.flatnonzero(np.any(rows != _MISSING_BLOCK_VALUE, axis=1))
    if received.size == 0:
        return 0.0
    return float(received[-1] + 1) / height
