"""The first codestream of compressed DICOM pixel data, checked against the header before decoding.

Native decoders (GDCM, OpenJPEG, libjpeg) allocate and write what the header and the
codestream say, and where the two disagree some of them abort the whole process (GDCM
throws a C++ exception past Python when a one-component JPEG-LS or JPEG 2000 codestream
sits under a header that declares 3 samples). So before any decoder sees the data, the
codestream's own header (JPEG and JPEG-LS start of frame, JPEG 2000 SIZ, RLE segment table)
must agree with the DICOM header on:

* kind: the codestream is of the family its transfer syntax names;
* size: rows x columns equal (0028,0010) Rows x (0028,0011) Columns;
* components: equal to (0028,0002) Samples per Pixel (RLE: one segment per byte of a sample);
* precision: at least (0028,0101) Bits Stored and at most (0028,0100) Bits Allocated.

Precision above Bits Stored is allowed because real encoders do it (12-bit JPEG Extended for
10-bit data, as PS3.5 10.2 allows; 16-bit JPEG 2000 for 12-bit data), so once decoded the
values must fit Bits Stored: a header whose Bits Stored was lowered would otherwise have its
pixels clipped, which can change the answer, and is refused instead.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGBaseline8Bit,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLETransferSyntaxes,
)

from fracsight.io.dicom_policy import header_int, number_of_samples
from fracsight.io.radiograph import UnreadableImage

# Start-of-frame markers: JPEG processes (not DHT C4, JPG C8, DAC CC) and JPEG-LS (F7).
JPEG_SOF_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
)
_JPEG_LS_SOF = 0xF7
_SOC_SIZ = b"\xff\x4f\xff\x51"  # JPEG 2000: start of codestream, then the image and tile size marker
# How far into a frame a JPEG 2000 codestream may start (after a JP2 wrapper's boxes).
_J2K_SEARCH_BYTES = 4096
_RLE_HEADER_BYTES = 64
_RLE_MAX_SEGMENTS = 15
# Share of decoded pixels allowed beyond Bits Stored when the codestream is wider: the
# overshoot of lossy coding near the top of the range, never a rescaled image.
MAX_OUT_OF_RANGE_SHARE = 0.001

_FAMILIES = {
    **dict.fromkeys(JPEGTransferSyntaxes, "JPEG"),
    **dict.fromkeys(JPEGLSTransferSyntaxes, "JPEG-LS"),
    **dict.fromkeys(JPEG2000TransferSyntaxes, "JPEG 2000"),
    **dict.fromkeys(RLETransferSyntaxes, "RLE"),
}
# The retired JPEG processes (1.2.840.10008.1.2.4.52 to .66) that pydicom does not name hold the
# same JPEG codestream as the named ones beside them.
_JPEG_PREFIX = JPEGBaseline8Bit.rpartition(".")[0] + "."


@dataclass(frozen=True)
class Codestream:
    """What a compressed frame's own header declares; None where its format does not say."""

    kind: str  # "JPEG", "JPEG-LS", "JPEG 2000" or "RLE"
    rows: int | None = None
    columns: int | None = None
    components: int | None = None
    precisions: tuple[int, ...] = ()
    segments: int | None = None  # RLE only
    signed: bool = False  # JPEG 2000: any component holds signed samples


def family(transfer_syntax: UID) -> str | None:
    """The codestream family a compressed transfer syntax holds, None for the rest."""
    if transfer_syntax in _FAMILIES:
        return _FAMILIES[transfer_syntax]
    if transfer_syntax.startswith(_JPEG_PREFIX) and transfer_syntax.is_compressed:
        number = transfer_syntax.rpartition(".")[2]
        if number.isdigit() and 50 <= int(number) <= 70:
            return "JPEG"
    return None


def jpeg_header_segments(frame: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, segment data) of a JPEG or JPEG-LS codestream's header, up to its first scan.

    The segment is cut short where the codestream ends; callers check the bytes they read.
    """
    if not frame.startswith(b"\xff\xd8"):
        return
    pos = 2
    while pos + 4 <= len(frame) and frame[pos] == 0xFF:
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the header is over
            return
        length = int.from_bytes(frame[pos + 2 : pos + 4], "big")
        yield marker, frame[pos + 4 : pos + 2 + length]
        pos += 2 + length


def parse_codestream(frame: bytes, transfer_syntax: UID) -> Codestream | None:
    """The declared facts of ``frame`` for its transfer syntax's family, or None when unrecognisable."""
    kind = family(transfer_syntax)
    if kind == "RLE":
        return _rle(frame)
    if frame.startswith(b"\xff\xd8"):
        return _jpeg(frame)
    start = frame.find(_SOC_SIZ, 0, _J2K_SEARCH_BYTES)
    if start >= 0:
        return j2k_siz(frame[start:])
    return None


def check_codestream(name: str, ds: Dataset, frame: bytes, transfer_syntax: UID) -> Codestream:
    """Refuse ``frame`` (the first codestream) unless it agrees with the header; return its facts."""
    expected = family(transfer_syntax)
    found = parse_codestream(frame, transfer_syntax)
    where = f"(7FE0,0010) Pixel Data under (0002,0010) Transfer Syntax '{transfer_syntax.name}'"
    if found is None:
        raise UnreadableImage(
            name,
            f"{where}: the first frame does not start with a {expected or 'known'} codestream header; "
            "refused before decoding",
        )
    if expected and found.kind != expected:
        raise UnreadableImage(
            name, f"{where} holds a {found.kind} codestream, not {expected}; refused before decoding"
        )
    rows = header_int(name, ds, "Rows", "(0028,0010)")
    columns = header_int(name, ds, "Columns", "(0028,0011)")
    samples = number_of_samples(ds)
    allocated = header_int(name, ds, "BitsAllocated", "(0028,0100)")
    stored = header_int(name, ds, "BitsStored", "(0028,0101)", default=allocated)
    refused = f"; refused before decoding ({found.kind} codestream and header disagree)"
    if found.rows is not None and found.columns is not None and 0 not in (found.rows, found.columns):
        if (found.rows, found.columns) != (rows, columns):
            raise UnreadableImage(
                name,
                f"the codestream declares {found.columns} x {found.rows} pixels but (0028,0011) Columns "
                f"x (0028,0010) Rows are {columns} x {rows}{refused}",
            )
    if found.components is not None and found.components != samples:
        raise UnreadableImage(
            name,
            f"the codestream has {found.components} components but (0028,0002) Samples per Pixel "
            f"is {samples}{refused}",
        )
    if found.segments is not None:
        expected_segments = samples * max(1, allocated // 8)
        if found.segments != expected_segments:
            raise UnreadableImage(
                name,
                f"the RLE header lists {found.segments} segments but {samples} samples of {allocated} bits "
                f"allocated need {expected_segments}{refused}",
            )
    _check_precision(name, found, stored, allocated, refused)
    return found


def _check_precision(name: str, found: Codestream, stored: int, allocated: int, refused: str) -> None:
    if not found.precisions:
        return
    if len(set(found.precisions)) > 1:
        raise UnreadableImage(
            name, f"the codestream's components differ in precision ({found.precisions} bits){refused}"
        )
    precision = found.precisions[0]
    if precision < stored:
        raise UnreadableImage(
            name,
            f"the codestream holds {precision}-bit samples but (0028,0101) Bits Stored is {stored}{refused}",
        )
    if precision > allocated:
        raise UnreadableImage(
            name,
            f"the codestream holds {precision}-bit samples, more than (0028,0100) Bits Allocated "
            f"{allocated} can hold{refused}",
        )


def check_decoded_range(name: str, ds: Dataset, stored: np.ndarray, found: Codestream | None) -> int:
    """Refuse decoded values beyond Bits Stored from a wider codestream; the count of such values.

    Native data and a few lossy overshoots are left to the display table, which clips them.
    """
    bits = int(ds.get("BitsStored", ds.BitsAllocated))
    if bits >= stored.dtype.itemsize * 8:
        return 0
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if int(stored.max()) <= high and int(stored.min()) >= low:
        return 0
    outside = int(np.count_nonzero((stored > high) | (stored < low)))
    wider = found is not None and found.precisions and found.precisions[0] > bits
    if wider and outside > MAX_OUT_OF_RANGE_SHARE * stored.size:
        raise UnreadableImage(
            name,
            f"{outside / stored.size:.1%} of the decoded values lie outside the (0028,0101) Bits Stored "
            f"range {low}..{high} of a {found.precisions[0]}-bit codestream: header and codestream "
            "disagree on precision; refused rather than clipped",
        )
    return outside


def _jpeg(frame: bytes) -> Codestream | None:
    for marker, segment in jpeg_header_segments(frame):
        if marker in JPEG_SOF_MARKERS:
            if len(segment) < 6:
                return None
            precision = segment[0]
            rows, columns = struct.unpack(">HH", segment[1:5])
            kind = "JPEG-LS" if marker == _JPEG_LS_SOF else "JPEG"
            return Codestream(kind, rows, columns, segment[5], (precision,))
    return None


def j2k_siz(codestream: bytes) -> Codestream | None:
    """A raw JPEG 2000 codestream's SIZ marker: size minus offsets, components, precision, sign."""
    if not codestream.startswith(_SOC_SIZ) or len(codestream) < 42:
        return None
    width, height, x_offset, y_offset = struct.unpack(">IIII", codestream[8:24])
    (components,) = struct.unpack(">H", codestream[40:42])
    if len(codestream) < 42 + 3 * components:
        return None
    sizes = codestream[42 : 42 + 3 * components : 3]
    precisions = tuple((ssiz & 0x7F) + 1 for ssiz in sizes)
    signed = any(ssiz & 0x80 for ssiz in sizes)
    return Codestream("JPEG 2000", height - y_offset, width - x_offset, components, precisions, signed=signed)


def _rle(frame: bytes) -> Codestream | None:
    """The RLE header: a segment count and 15 offsets, the first 64 and each within the frame."""
    if len(frame) < _RLE_HEADER_BYTES:
        return None
    count, *offsets = struct.unpack("<16I", frame[:_RLE_HEADER_BYTES])
    if not 1 <= count <= _RLE_MAX_SEGMENTS:
        return None
    used = offsets[:count]
    rising = all(a < b for a, b in zip(used, used[1:], strict=False))
    if used[0] != _RLE_HEADER_BYTES or not rising or used[-1] >= len(frame):
        return None
    return Codestream("RLE", segments=count)
