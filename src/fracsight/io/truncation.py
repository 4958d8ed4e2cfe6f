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

    code = "truncated"


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


# Start of frame markers of progressive JPEG (Huffman, arithmetic), and start of scan.
_PROGRESSIVE_SOF = frozenset({0xC2, 0xCA})
_SOS = 0xDA
_EOI = 0xD9
_COEFFICIENTS = 64


def missing_progressive_detail(data: bytes) -> str | None:
    """Why a truncated progressive JPEG lacks detail everywhere, or None when it does not.

    A progressive JPEG sends the whole image in every scan, coarse first, so a cut
    leaves no gray tail to measure: every row lacks the scans that never arrived.
    The scan headers that did arrive tell whether every coefficient of every
    component already reached full precision (only the end marker or the last
    refinement's tail is missing); a baseline JPEG returns None.
    """
    components: list[int] = []
    lowest_bit: dict[tuple[int, int], int] = {}
    scans, pos = 0, 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == _EOI:
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) < length - 2:
            break  # cut inside a marker segment
        if marker in _PROGRESSIVE_SOF and len(segment) >= 6:
            components = [segment[6 + 3 * i] for i in range(segment[5]) if 6 + 3 * i < len(segment)]
        pos += 2 + length
        if marker == _SOS and len(segment) >= 4:
            count = segment[0]
            if len(segment) < 4 + 2 * count:
                break
            start, end, low_bit = (
                segment[1 + 2 * count],
                segment[2 + 2 * count],
                segment[3 + 2 * count] & 0x0F,
            )
            for component in segment[1 : 1 + 2 * count : 2]:
                for coefficient in range(start, min(end, _COEFFICIENTS - 1) + 1):
                    lowest_bit[(component, coefficient)] = low_bit
            scans += 1
            pos = _end_of_entropy_data(data, pos)
    if not components:
        return None
    missing = sum(1 for c in components for k in range(_COEFFICIENTS) if lowest_bit.get((c, k), 1) != 0)
    if missing == 0:
        return None
    return (
        f"progressive JPEG is truncated after {scans} scans: {missing} of its "
        f"{len(components) * _COEFFICIENTS} coefficient bands never reached full precision, so detail "
        "is missing across the whole image, not only in its last rows"
    )


def _end_of_entropy_data(data: bytes, pos: int) -> int:
    """Position of the first marker after a scan's entropy-coded data (or the end of ``data``)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        following = data[pos + 1]
        if following != 0x00 and not 0xD0 <= following <= 0xD7:
            return pos
        pos += 2
