"""DICOM radiographs, read with pydicom (and python-gdcm / Pillow for compressed pixel data).

Order of work, so that a refused file costs little and a hostile one cannot hurt:
the header is parsed without pixel data and judged (:mod:`dicom_policy`, size
limit); only then is the pixel data read, checked for completeness and decoded,
and mapped through the display pipeline (:mod:`dicom_display`). Colour-encoded
pixel data (8-bit RGB or YBR, which pydicom decodes to RGB) is reduced to gray,
or refused as colourful, by the rule RGB PNG and JPEG files follow.

Files without preamble or File Meta (ACR-NEMA style) are read with
``force=True``; their transfer syntax is taken from the encoding pydicom
detected (implicit VR little endian when unknown) and reported as assumed.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)

from fracsight.io.dicom_display import DisplayTransform, display_transform, gray_from_colour
from fracsight.io.dicom_j2k import codestream_size, decode_reduced
from fracsight.io.dicom_policy import (
    check_radiograph_header,
    header_int,
    is_colour,
    number_of_frames,
    number_of_samples,
)
from fracsight.io.formats import ImageFormat
from fracsight.io.intensity import IntensityMapping
from fracsight.io.limits import check_pixel_count
from fracsight.io.radiograph import Radiograph, RefusedInput, UnreadableImage
from fracsight.io.truncation import TruncatedImage

logger = logging.getLogger(__name__)

_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010) little / big endian
_READ_ERRORS = (
    InvalidDicomError,
    OSError,
    EOFError,
    ValueError,
    struct.error,
    KeyError,
    TypeError,
    IndexError,
)
_DECODE_ERRORS = (
    RuntimeError,
    ValueError,
    OSError,
    AttributeError,
    TypeError,
    KeyError,
    IndexError,
    NotImplementedError,
    struct.error,
    EOFError,
)
# Raised by pydicom while it interprets a damaged header (values are parsed on first access).
_MALFORMED_ERRORS = (*_DECODE_ERRORS, BytesLengthException, OverflowError, UnicodeError, LookupError)
_MAX_REASON_CHARS = 400
# DCT JPEG processes, whose colour codestreams are usually YCbCr whatever the header says.
_JPEG_DCT = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})
# Start-of-frame markers: JPEG processes (not DHT C4, JPG C8, DAC CC) and JPEG-LS (F7).
_JPEG_SOF_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
)
_OPTIONAL_DECODER_HINT = {
    JPEGExtended12Bit: (
        "12-bit JPEG Extended needs the optional decoder pylibjpeg with pylibjpeg-libjpeg "
        "(GPL-3.0 licence, so not installed with fracsight); install both to read this file"
    ),
}


def read_dicom(path: Path, max_pixels: int, needed_side: int | None = None) -> Radiograph:
    """Read a single-frame DICOM radiograph (grayscale, or gray stored as colour), or refuse it.

    With ``needed_side``, JPEG 2000 pixel data may be decoded at a lower resolution
    level whose longer side is still at least that long (:mod:`dicom_j2k`).
    """
    name = str(path)
    try:
        return _read_dicom(name, path, max_pixels, needed_side)
    except RefusedInput:
        raise
    except _MALFORMED_ERRORS as error:
        # pydicom parses element values lazily, so a corrupt header can surface at any step.
        detail = f"{type(error).__name__}: {error}"[:_MAX_REASON_CHARS]
        raise UnreadableImage(name, f"DICOM data element is malformed ({detail})") from error


def _read_dicom(name: str, path: Path, max_pixels: int, needed_side: int | None) -> Radiograph:
    header, pixel_tag_follows = _read_header(name, path)
    check_radiograph_header(name, header)
    rows = header_int(name, header, "Rows", "(0028,0010)")
    columns = header_int(name, header, "Columns", "(0028,0011)")
    check_pixel_count(name, rows, columns, number_of_frames(header), max_pixels)
    ds = _read_full(name, path)
    transfer_syntax, assumed = _transfer_syntax(ds)
    _check_pixel_data_present(name, ds, pixel_tag_follows)
    frame = _first_frame(ds, transfer_syntax)
    _check_codestream_size(name, ds, frame)
    # Reduced JPEG 2000 decoding vouches for one-component codestreams only: colour decodes in full.
    wanted = needed_side and frame is not None and not is_colour(ds)
    reduced = decode_reduced(ds, frame, transfer_syntax, needed_side) if wanted else None
    stored, halvings = reduced if reduced else (_decode(name, ds, transfer_syntax, frame), 0)
    pixels, transform = _display(name, ds, stored)
    del stored
    del ds.PixelData  # keep the header for building DICOM results, not the pixels
    metadata = _metadata(ds, transfer_syntax, assumed, transform, halvings)
    return Radiograph(pixels=pixels, source=name, format=ImageFormat.DICOM.value, metadata=metadata, dicom=ds)


def _display(name: str, ds: Dataset, stored: np.ndarray) -> tuple[np.ndarray, DisplayTransform | None]:
    """Gray display values in [0, 1]; the grayscale transform, or None for a colour image."""
    if is_colour(ds):
        return gray_from_colour(name, ds, stored), None
    transform = display_transform(name, ds)
    return transform.apply(stored), transform


def _read_header(name: str, path: Path) -> tuple[Dataset, bool]:
    """The data set up to (not including) Pixel Data, and whether a Pixel Data element follows."""
    try:
        with path.open("rb") as stream:
            header = pydicom.dcmread(stream, force=True, stop_before_pixels=True)
            pixel_tag_follows = stream.read(4) in _PIXEL_DATA_TAGS
    except _READ_ERRORS as error:
        raise UnreadableImage(name, f"not a readable DICOM file: {error}") from error
    if not any(keyword in header for keyword in ("Rows", "Modality", "SOPClassUID")):
        raise UnreadableImage(
            name,
            "not a readable DICOM file: no (0008,0016) SOP Class, (0008,0060) Modality or (0028,0010) Rows",
        )
    return header, pixel_tag_follows


def _read_full(name: str, path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, force=True)
    except _READ_ERRORS as error:
        raise UnreadableImage(name, f"DICOM data after the header could not be read: {error}") from error


def _transfer_syntax(ds: Dataset) -> tuple[UID, bool]:
    """(0002,0010) Transfer Syntax UID, set from the detected encoding when the file has none."""
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is None:
        file_meta = FileMetaDataset()
        ds.file_meta = file_meta
    uid = file_meta.get("TransferSyntaxUID")
    if uid:
        return UID(str(uid)), False
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is False:
        uid = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
    else:
        uid = ImplicitVRLittleEndian
    file_meta.TransferSyntaxUID = uid
    return UID(uid), True


def _check_pixel_data_present(name: str, ds: Dataset, pixel_tag_follows: bool) -> None:
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnreadableImage(
                name, "(7FE0,0008/0009) float pixel data is not a radiograph format we read"
            )
        if pixel_tag_follows:
            raise TruncatedImage(
                name, "(7FE0,0010) Pixel Data starts but the file ends before its end: the file is truncated"
            )
        raise UnreadableImage(name, "(7FE0,0010) Pixel Data is missing: the file holds a header only")
    if not ds.PixelData:
        raise UnreadableImage(name, "(7FE0,0010) Pixel Data is empty (0 bytes)")


def _first_frame(ds: Dataset, transfer_syntax: UID) -> bytes | None:
    """The first frame's codestream of encapsulated pixel data; None when native or damaged."""
    if not transfer_syntax.is_compressed or not transfer_syntax.is_encapsulated:
        return None
    try:
        return next(generate_frames(ds.PixelData, number_of_frames=1))
    except (ValueError, StopIteration, struct.error, TypeError):
        return None  # damaged encapsulation: the decoder reports it


def _check_codestream_size(name: str, ds: Dataset, frame: bytes | None) -> None:
    """Compressed pixel data must declare the header's size: the decoder allocates what it declares.

    Rows and Columns were checked against the pixel limit, but a JPEG or JPEG 2000 codestream
    carries its own dimensions; a small file can declare a huge one (a decompression bomb),
    and any other mismatch cannot be decoded into Rows x Columns either.
    """
    if frame is None:
        return
    declared = codestream_size(frame) or _jpeg_frame_size(frame)
    rows, columns = int(ds.Rows), int(ds.Columns)
    if declared is None or declared == (rows, columns) or 0 in declared:
        return
    raise UnreadableImage(
        name,
        f"(7FE0,0010) Pixel Data codestream declares {declared[1]} x {declared[0]} pixels but "
        f"(0028,0011) Columns x (0028,0010) Rows are {columns} x {rows}; refused before decoding",
    )


def _jpeg_header_segments(frame: bytes) -> Iterator[tuple[int, bytes]]:
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


def _jpeg_frame_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from the start-of-frame marker of a JPEG or JPEG-LS codestream, else None."""
    for marker, segment in _jpeg_header_segments(frame):
        if marker in _JPEG_SOF_MARKERS:
            if len(segment) < 5:
                return None
            rows, columns = struct.unpack(">HH", segment[1:5])
            return rows, columns
    return None


def _decode(name: str, ds: Dataset, transfer_syntax: UID, frame: bytes | None) -> np.ndarray:
    """Decoded stored values (rows x columns), before any LUT; colour as rows x columns x RGB."""
    label = f"'{transfer_syntax.name}' ({transfer_syntax})"
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as error:
        raise UnreadableImage(name, f"(0002,0010) Transfer Syntax {label} is not supported") from error
    if not transfer_syntax.is_compressed:
        _check_native_length(name, ds)
    try:
        # pydicom converts YBR_FULL(_422) to RGB (as_rgb, its default) and undoes Planar Configuration 1.
        stored, properties = decoder.as_array(ds, **_colour_options(name, ds, transfer_syntax, frame))
    except _DECODE_ERRORS as error:
        raise UnreadableImage(name, _decode_failure(ds, transfer_syntax, label, error)) from error
    if is_colour(ds):
        _check_decoded_colour(name, stored, str(properties.get("photometric_interpretation", "")))
    elif stored.ndim != 2:
        raise UnreadableImage(name, f"decoded pixel data has shape {stored.shape}, expected rows x columns")
    _warn_if_outside_stored_range(name, ds, stored)
    return stored


def _colour_options(name: str, ds: Dataset, transfer_syntax: UID, frame: bytes | None) -> dict[str, int]:
    """Planar Configuration for the decoder, which pydicom requires for any 3-sample image.

    For compressed data it is irrelevant and shall be 0 (PS3.5 8.2): the codestream fixes the
    layout (RLE decodes plane by plane on its own). A stray 1 there would make pydicom reshape
    the interleaved JPEG output as planes and scramble the image, so it is not passed on.
    """
    if not is_colour(ds):
        return {}
    if transfer_syntax.is_compressed:
        options: dict = {"planar_configuration": 0}
        if transfer_syntax in _JPEG_DCT and str(ds.get("PhotometricInterpretation", "")).strip() == "RGB":
            if _jpeg_holds_ycbcr(frame or b""):
                options["photometric_interpretation"] = "YBR_FULL_422"
        return options
    return {"planar_configuration": header_int(name, ds, "PlanarConfiguration", "(0028,0006)", default=0)}


def _jpeg_holds_ycbcr(frame: bytes) -> bool:
    """Whether a 3-component JPEG codestream holds YCbCr, by libjpeg's rule (JFIF, Adobe APP14, IDs).

    Some encoders (GDCM among them) compress RGB as YCbCr without a JFIF or Adobe marker and
    keep "RGB" in the header; pydicom then hands back Y, Cb and Cr as if they were R, G and B,
    and a gray radiograph would look colourful. libjpeg decides: an Adobe marker's transform
    flag, else a JFIF marker (YCbCr), else component IDs 'R', 'G', 'B' (RGB), else YCbCr.
    """
    jfif, adobe_transform, ids = False, None, None
    for marker, segment in _jpeg_header_segments(frame):
        if marker == 0xE0 and segment.startswith(b"JFIF\0"):
            jfif = True
        elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            adobe_transform = segment[11]
        elif marker in _JPEG_SOF_MARKERS and len(segment) >= 6 + 3 * 3:
            ids = bytes(segment[6 + 3 * i] for i in range(3))
            break
    if adobe_transform is not None:
        return adobe_transform != 0
    return jfif or ids != b"RGB"


def _check_decoded_colour(name: str, stored: np.ndarray, photometric: str) -> None:
    """The decoder must hand back 8-bit RGB: gray is judged on RGB, never on Y, Cb and Cr."""
    if stored.ndim != 3 or stored.shape[2] != 3 or stored.dtype != np.uint8:
        raise UnreadableImage(
            name,
            f"decoded pixel data has shape {stored.shape} ({stored.dtype}), expected rows x columns x 3 "
            "samples of 8 bits as (0028,0002) Samples per Pixel 3 declares",
        )
    if photometric.strip().upper() != "RGB":
        raise UnreadableImage(
            name,
            f"(0028,0004) colour pixel data decoded as '{photometric}', not RGB: cannot judge its colour",
        )


def _check_native_length(name: str, ds: Dataset) -> None:
    """Uncompressed Pixel Data must hold Rows x Columns x samples x Bits Allocated; shorter is truncated."""
    rows, columns, allocated = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    samples = _native_samples_per_pixel(ds)
    expected = rows * columns * samples * allocated // 8
    actual = len(ds.PixelData)
    if actual < expected:
        shown = f" x {samples} samples" if samples != 1 else ""
        raise TruncatedImage(
            name,
            f"(7FE0,0010) Pixel Data holds {actual:,} bytes but {columns} x {rows} pixels{shown} at "
            f"{allocated} bits allocated need {expected:,}: the file is truncated",
        )


def _native_samples_per_pixel(ds: Dataset) -> int:
    """Stored samples per pixel: YBR_FULL_422 keeps one Cb and one Cr for every two pixels (PS3.3 C.7.6.3)."""
    samples = number_of_samples(ds)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    return 2 if samples == 3 and photometric == "YBR_FULL_422" else samples


def _decode_failure(ds: Dataset, transfer_syntax: UID, label: str, error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Unable to decode"):
        lines = lines[1:]  # pydicom's preamble; the per-plugin reasons follow, one a line
    detail = "; ".join(lines) or type(error).__name__
    if len(detail) > _MAX_REASON_CHARS:
        detail = detail[: _MAX_REASON_CHARS - 3] + "..."
    reason = f"(7FE0,0010) Pixel Data could not be decoded from {label}: {detail}"
    hint = _OPTIONAL_DECODER_HINT.get(transfer_syntax)
    if hint and int(ds.get("BitsStored", 8)) > 8:
        reason += f"; {hint}"
    return reason


def _warn_if_outside_stored_range(name: str, ds: Dataset, stored: np.ndarray) -> None:
    """Values beyond Bits Stored are clipped by the display table; say so once."""
    bits = int(ds.get("BitsStored", ds.BitsAllocated))
    if bits >= stored.dtype.itemsize * 8:
        return
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if int(stored.max()) > high or int(stored.min()) < low:
        logger.warning(
            "%s: pixel values exceed the (0028,0101) Bits Stored range %d..%d; clipped", name, low, high
        )


def _metadata(
    ds: Dataset, transfer_syntax: UID, assumed: bool, transform: DisplayTransform | None, halvings: int
) -> dict[str, Any]:
    """Non-identifying facts about the image: never names, IDs, dates or UIDs of the instance.

    ``transform`` is None for a colour image: divided by 255 like RGB PNG, no VOI, not inverted.
    """
    sop_class = str(ds.get("SOPClassUID", "") or "")
    mapping = IntensityMapping.TYPE_MAX if transform is None else IntensityMapping.DICOM_VOI
    return {
        "format": ImageFormat.DICOM.value,
        "modality": _text(ds, "Modality"),
        "sop_class": sop_class or None,
        "sop_class_name": UID(sop_class).name if sop_class else None,
        "photometric": _text(ds, "PhotometricInterpretation"),
        "bits_stored": int(ds.get("BitsStored", ds.BitsAllocated)),
        "bits_allocated": int(ds.BitsAllocated),
        "transfer_syntax": str(transfer_syntax),
        "transfer_syntax_name": transfer_syntax.name,
        "transfer_syntax_assumed": assumed,
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "decoded_at_scale": 1.0 / (1 << halvings),
        "body_part": _text(ds, "BodyPartExamined"),
        "view_position": _text(ds, "ViewPosition"),
        "pixel_spacing_mm": _pixel_spacing(ds),
        "inverted": transform.inverted if transform else False,
        "truncated": False,
        "intensity_mapping": mapping.value,
        "channels_merged": transform is None,
        "voi": transform.voi.value if transform else None,
        "window": list(transform.window) if transform and transform.window else None,
        "window_function": transform.window_function if transform else None,
        "presentation_lut_shape": _text(ds, "PresentationLUTShape"),
    }


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _pixel_spacing(ds: Dataset) -> list[float] | None:
    """(0028,0030) Pixel Spacing, else (0018,1164) Imager Pixel Spacing, as [row, column] mm."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            spacing = [float(v) for v in value] if value is not None else []
        except (TypeError, ValueError):
            continue
        if len(spacing) == 2 and all(s > 0 for s in spacing):
            return spacing
    return None
