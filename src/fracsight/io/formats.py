"""Recognising an input file's format from its first bytes, never from its name.

File extensions lie (``.dcm`` files without a preamble, PNGs saved as ``.jpg``,
DICOM files whose preamble is a TIFF header), so the reader is chosen by content.
"""

from __future__ import annotations

import enum
import struct

# Enough bytes to see the DICOM preamble + "DICM" (132) and the first element after it.
HEAD_BYTES = 144


class ImageFormat(str, enum.Enum):
    """The file formats fracsight reads; the value is what ``Radiograph.format`` holds."""

    PNG = "png"
    JPEG = "jpeg"
    TIFF = "tiff"
    DICOM = "dicom"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF

# Formats people do feed in by mistake: named in the refusal so the user knows what they gave us.
_OTHER_FORMATS = (
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "a JPEG 2000 (JP2) image"),
    (b"\xff\x4f\xff\x51", "a raw JPEG 2000 codestream"),
    (b"\x1f\x8b", "a gzip archive"),
)
# RIFF containers name their content at offset 8.
_RIFF_FORMATS = {b"WEBP": "a WebP image", b"AVI ": "an AVI video", b"WAVE": "a WAV audio file"}

# Value representations of explicit-VR DICOM; used to recognise files without a preamble.
_DICOM_VRS = frozenset(
    (
        b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW "
        b"PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV"
    ).split()
)
# Groups a preamble-less DICOM / ACR-NEMA file starts with: file meta or identifying.
_DICOM_FIRST_GROUPS = frozenset({0x0002, 0x0008})


def detect_format(head: bytes, file_size: int) -> ImageFormat | None:
    """The format of a file whose first bytes are ``head``, or None when it is none of ours.

    The DICOM check comes first: a DICOM preamble may legally hold a TIFF header
    (dual-personality files), and such a file must be read as DICOM.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return ImageFormat.DICOM
    if head.startswith(_PNG_SIGNATURE):
        return ImageFormat.PNG
    if head.startswith(_JPEG_SOI):
        return ImageFormat.JPEG
    if head.startswith(_TIFF_SIGNATURES):
        return ImageFormat.TIFF
    if head.startswith(b"DICM") or _looks_like_bare_dicom(head, file_size):
        return ImageFormat.DICOM
    return None


def describe_unknown(head: bytes) -> str:
    """Words for a file that is not PNG, JPEG, TIFF or DICOM, for the refusal message."""
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            return f"{name}, not a PNG, JPEG, TIFF or DICOM file"
    if head.startswith(b"RIFF") and head[8:12] in _RIFF_FORMATS:
        return f"{_RIFF_FORMATS[head[8:12]]}, not a PNG, JPEG, TIFF or DICOM file"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file, not a PNG, JPEG, TIFF or DICOM image"
    return f"not a PNG, JPEG, TIFF or DICOM file (first bytes: {head[:8].hex(' ')})"


def _looks_like_bare_dicom(head: bytes, file_size: int) -> bool:
    """True for a DICOM data set written without preamble and file meta (ACR-NEMA style).

    Such a file starts directly with a little-endian data element of a low group:
    explicit VR shows two upper-case VR letters after the tag, implicit VR a
    4-byte length that fits in the file.
    """
    if len(head) < 8:
        return False
    group, _element = struct.unpack_from("<HH", head, 0)
    if group not in _DICOM_FIRST_GROUPS:
        return False
    if head[4:6] in _DICOM_VRS:
        return True
    (length,) = struct.unpack_from("<I", head, 4)
    return length < file_size
