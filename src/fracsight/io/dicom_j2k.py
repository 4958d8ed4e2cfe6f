"""JPEG 2000 pixel data decoded at a lower resolution level, when the caller needs no more.

A JPEG 2000 codestream holds its image as wavelet resolution levels, so a
3000 x 3000 radiograph can be decoded at 1500 x 1500 or 750 x 750 for a fraction
of the full decode (about 40 ms instead of 420 ms at 2500 x 2048 on one core).
The model sees 384 px, so inference asks for a smaller image and gets it here;
anything this path cannot vouch for (signed or multi-component data, a JP2
wrapper, an odd codestream, no OpenJPEG in Pillow) returns ``None`` and the
caller decodes in full with python-gdcm as usual.

Pillow scales decoded samples to the full width of its mode (``L`` or ``I;16``);
the codestream's own precision, from its SIZ marker, undoes that, so the values
are the stored values that the Modality/VOI LUTs expect.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
)

from fracsight.io.dicom_codestream import j2k_siz
from fracsight.io.safe_text import failure

logger = logging.getLogger(__name__)

JPEG2000_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K})
_MAX_LEVELS = 5


def reduction_level(rows: int, columns: int, needed_side: int) -> int:
    """How many times the image can be halved and keep its longer side >= ``needed_side``."""
    longer, level = max(rows, columns), 0
    while level < _MAX_LEVELS and (longer >> (level + 1)) >= needed_side:
        level += 1
    return level


def decode_reduced(
    ds: Dataset, frame: bytes, transfer_syntax: UID, needed_side: int
) -> tuple[np.ndarray, int] | None:
    """(stored values, halvings) of ``frame`` (the data set's first codestream) at the smallest
    level still ``needed_side`` long, or None."""
    if transfer_syntax not in JPEG2000_SYNTAXES or int(ds.get("PixelRepresentation", 0) or 0) != 0:
        return None
    level = reduction_level(int(ds.Rows), int(ds.Columns), needed_side)
    if level == 0:
        return None
    try:
        return _decode_codestream(frame, level), level
    except Exception as error:  # noqa: BLE001 - any doubt means the full decode decides
        logger.debug("reduced JPEG 2000 decode not used: %s", failure(error))
        return None


def codestream_precision(frame: bytes) -> int | None:
    """Bits per sample of a raw one-component, unsigned J2K codestream (SIZ marker), else None."""
    found = j2k_siz(frame)
    if found is None or found.components != 1 or found.signed:
        return None
    return found.precisions[0]


def _decode_codestream(frame: bytes, level: int) -> np.ndarray:
    from PIL import Image

    precision = codestream_precision(frame)
    if precision is None or precision > 16:
        raise ValueError("not a one-component unsigned codestream of at most 16 bits")
    with Image.open(io.BytesIO(frame)) as image:
        if image.format != "JPEG2000":
            raise ValueError(f"Pillow read it as {image.format}")
        image.reduce = level
        image.load()
        mode = image.mode
        pixels = np.asarray(image)
    width = {"L": 8, "I;16": 16}.get(mode)
    if width is None or precision > width:
        raise ValueError(f"unexpected Pillow mode {mode} for {precision}-bit samples")
    return (pixels.astype(np.uint16) >> (width - precision)).astype(np.uint16)
