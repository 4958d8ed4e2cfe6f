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

Nothing here quotes the file: refusals show a header value only in the form its VR
allows and a library failure only by its type (:mod:`safe_text`). A deflated data set is
inflated once, bounded, before pydicom inflates it; compressed pixel data must agree with
the header before a decoder sees it (:mod:`dicom_codestream`).
"""

from __future__ import annotations

import logging
import struct
import zlib
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)

from fracsight.io.dicom_codestream import (
    JPEG_SOF_MARKERS,
    check_codestream,
    check_decoded_range,
    family,
    jpeg_header_segments,
)
from fracsight.io.dicom_display import DisplayTransform, display_transform, gray_from_colour
from fracsight.io.dicom_j2k import decode_reduced
from fracsight.io.dicom_policy import (
    check_radiograph_header,
    header_int,
    is_colour,
    number_of_frames,
    number_of_samples,
)
from fracsight.io.formats import ImageFormat
from fracsight.io.intensity import IntensityMapping
from fracsight.io.limits import check_pixel_count, max_file_bytes
from fracsight.io.radiograph import Radiograph, RefusedInput, UnreadableImage
from fracsight.io.safe_text import failure, is_code, is_uid, shown, uid_name
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
_MALFORMED_ERRORS = (
    *_DECODE_ERRORS,
    BytesLengthException,
    OverflowError,
    UnicodeError,
    LookupError,
    zlib.error,
)
# DCT JPEG processes, whose colour codestreams are usually YCbCr whatever the header says.
_JPEG_DCT = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})
# The File Meta group is read from this many first bytes to find a deflated data set.
_META_BYTES = 65536
_INFLATE_CHUNK = 1 << 20
# Explicit VRs with a 4-byte length field (PS3.5 7.1.2).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
# pydicom's decoder plug-ins, named in a refusal when they all failed (their messages are not).
_DECODER_PLUGINS = frozenset({"gdcm", "pylibjpeg", "pillow", "pyjpegls", "pydicom"})
_OPTIONAL_DECODER_HINT = {
    JPEGExtended12Bit: (
        "12-bit JPEG Extended needs the optional decoder pylibjpeg with pylibjpeg-libjpeg "
        "(GPL-3.0 licence, so not installed with fracsight); install both to read this file"
    ),
}


def read_dicom(name: str, stream: BinaryIO, max_pixels: int, needed_side: int | None = None) -> Radiograph:
    """Read a single-frame DICOM radiograph (grayscale, or gray stored as colour), or refuse it.

    ``stream`` is the seekable file that ``name`` stands for in messages.
    With ``needed_side``, JPEG 2000 pixel data may be decoded at a lower resolution
    level whose longer side is still at least that long (:mod:`dicom_j2k`).
    """
    try:
        return _read_dicom(name, stream, max_pixels, needed_side)
    except RefusedInput:
        raise
    except _MALFORMED_ERRORS as error:
        # pydicom parses element values lazily, so a corrupt header can surface at any step.
        raise UnreadableImage(name, f"DICOM data element is malformed ({failure(error)})") from error


def _read_dicom(name: str, stream: BinaryIO, max_pixels: int, needed_side: int | None) -> Radiograph:
    _check_inflated_size(name, stream, max_pixels)
    header, pixel_tag_follows = _read_header(name, stream)
    kept = _as_read(header)
    check_radiograph_header(name, header)
    rows = header_int(name, header, "Rows", "(0028,0010)")
    columns = header_int(name, header, "Columns", "(0028,0011)")
    check_pixel_count(name, rows, columns, number_of_frames(header), max_pixels)
    ds = _read_full(name, stream)
    transfer_syntax, assumed = _transfer_syntax(name, ds)
    _check_pixel_data_present(name, ds, pixel_tag_follows)
    frame = _first_frame(ds, transfer_syntax)
    checkable = frame is not None and family(transfer_syntax) is not None
    found = check_codestream(name, ds, frame, transfer_syntax) if checkable else None
    # Reduced JPEG 2000 decoding vouches for one-component codestreams only: colour decodes in full.
    wanted = needed_side and frame is not None and not is_colour(ds)
    reduced = decode_reduced(ds, frame, transfer_syntax, needed_side) if wanted else None
    stored, halvings = reduced if reduced else (_decode(name, ds, transfer_syntax, frame), 0)
    if check_decoded_range(name, ds, stored, found):
        logger.warning("%s: pixel values exceed the (0028,0101) Bits Stored range; clipped", name)
    pixels, transform = _display(name, ds, stored)
    del stored
    kept.file_meta = _as_read(ds.file_meta, FileMetaDataset)
    kept.file_meta.TransferSyntaxUID = transfer_syntax
    metadata = _metadata(ds, transfer_syntax, assumed, transform, halvings)
    return Radiograph(
        pixels=pixels, source=name, format=ImageFormat.DICOM.value, metadata=metadata, dicom=kept
    )


def _as_read(header: Dataset, kind: type[Dataset] = Dataset) -> Dataset:
    """The header's elements as they were read, for building DICOM results.

    The checks convert the values they look at, and pydicom warns (quoting the value)
    whenever a converted value is invalid, even when a copy is unpickled in another
    process: elements kept unconverted are converted only by whoever uses them.
    """
    return kind({tag: header.get_item(tag) for tag in header.keys()})


def _display(name: str, ds: Dataset, stored: np.ndarray) -> tuple[np.ndarray, DisplayTransform | None]:
    """Gray display values in [0, 1]; the grayscale transform, or None for a colour image."""
    if is_colour(ds):
        return gray_from_colour(name, ds, stored), None
    transform = display_transform(name, ds)
    return transform.apply(stored), transform


def _check_inflated_size(name: str, stream: BinaryIO, max_pixels: int) -> None:
    """Refuse a deflated data set that inflates past what one radiograph can take, before pydicom
    inflates it in one piece (1.6 MB of deflated zeros inflate to gigabytes)."""
    meta_end = _deflated_data_start(stream.read(_META_BYTES))
    if meta_end is None:
        stream.seek(0)
        return
    limit = max_file_bytes(max_pixels)
    stream.seek(meta_end)
    inflater, inflated = zlib.decompressobj(-zlib.MAX_WBITS), 0
    try:
        while not inflater.eof and (chunk := stream.read(_INFLATE_CHUNK)):
            while chunk and not inflater.eof and inflated <= limit:  # past the end: trailing bytes
                inflated += len(inflater.decompress(chunk, _INFLATE_CHUNK))
                chunk = inflater.unconsumed_tail
            if inflated > limit:
                raise UnreadableImage(
                    name,
                    f"(0002,0010) Deflated Explicit VR Little Endian: the data set inflates to more than "
                    f"{limit:,} bytes, more than one radiograph can take; refused while inflating",
                )
    except zlib.error as error:
        raise UnreadableImage(
            name,
            "(0002,0010) Deflated Explicit VR Little Endian: the data set cannot be inflated "
            f"({failure(error)})",
        ) from error
    stream.seek(0)


def _deflated_data_start(head: bytes) -> int | None:
    """Where the data set starts when the File Meta names the deflated transfer syntax, else None.

    Walks the File Meta group (explicit VR little endian after the 128-byte preamble and
    "DICM"), as pydicom reads it to choose the transfer syntax.
    """
    if head[128:132] != b"DICM":
        return None
    pos, syntax = 132, None
    while pos + 8 <= len(head) and struct.unpack_from("<H", head, pos)[0] == 0x0002:
        element = struct.unpack_from("<H", head, pos + 2)[0]
        if head[pos + 4 : pos + 6] in _LONG_VRS:
            if pos + 12 > len(head):
                return None
            length, start = struct.unpack_from("<I", head, pos + 8)[0], pos + 12
        else:
            length, start = struct.unpack_from("<H", head, pos + 6)[0], pos + 8
        if element == 0x0010:
            syntax = head[start : start + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
    return pos if syntax == DeflatedExplicitVRLittleEndian else None


def _read_header(name: str, stream: BinaryIO) -> tuple[Dataset, bool]:
    """The data set up to (not including) Pixel Data, and whether a Pixel Data element follows."""
    try:
        header = pydicom.dcmread(stream, force=True, stop_before_pixels=True)
        pixel_tag_follows = stream.read(4) in _PIXEL_DATA_TAGS
    except _READ_ERRORS as error:
        raise UnreadableImage(name, f"not a readable DICOM file ({failure(error)})") from error
    finally:
        stream.seek(0)
    if not any(keyword in header for keyword in ("Rows", "Modality", "SOPClassUID")):
        raise UnreadableImage(
            name,
            "not a readable DICOM file: no (0008,0016) SOP Class, (0008,0060) Modality or (0028,0010) Rows",
        )
    _check_element_lengths(name, header)
    return header, pixel_tag_follows


def _check_element_lengths(name: str, header: Dataset) -> None:
    """An element whose declared length runs past the end of the file was cut short: the file is
    damaged, and whatever follows it was swallowed into its value."""
    for element in header.elements():
        if not isinstance(element, RawDataElement) or element.value is None:
            continue
        if element.length != 0xFFFFFFFF and len(element.value) < element.length:
            raise UnreadableImage(
                name,
                f"DICOM element {element.tag} declares a value of {element.length:,} bytes but the file "
                f"ends {len(element.value):,} bytes into it: the file is damaged or truncated",
            )


def _read_full(name: str, stream: BinaryIO) -> Dataset:
    try:
        return pydicom.dcmread(stream, force=True)
    except _READ_ERRORS as error:
        raise UnreadableImage(
            name, f"DICOM data after the header could not be read ({failure(error)})"
        ) from error


def _transfer_syntax(name: str, ds: Dataset) -> tuple[UID, bool]:
    """(0002,0010) Transfer Syntax UID, set from the detected encoding when the file has none."""
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is None:
        file_meta = FileMetaDataset()
        ds.file_meta = file_meta
    uid = file_meta.get("TransferSyntaxUID")
    if uid:
        text = str(uid).strip().rstrip("\0")
        if not is_uid(text):
            raise UnreadableImage(name, f"(0002,0010) Transfer Syntax UID is {shown(uid, 'UI')}")
        return UID(text), False
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


def _decode(name: str, ds: Dataset, transfer_syntax: UID, frame: bytes | None) -> np.ndarray:
    """Decoded stored values (rows x columns), before any LUT; colour as rows x columns x RGB."""
    label = f"{uid_name(transfer_syntax)} ({transfer_syntax})"
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
    for marker, segment in jpeg_header_segments(frame):
        if marker == 0xE0 and segment.startswith(b"JFIF\0"):
            jfif = True
        elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            adobe_transform = segment[11]
        elif marker in JPEG_SOF_MARKERS and len(segment) >= 6 + 3 * 3:
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
            f"(0028,0004) colour pixel data decoded as {shown(photometric, 'CS')}, not RGB: "
            "cannot judge its colour",
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
    """Which decoders failed, never what they said: their messages may quote the data."""
    tried = [
        line.split(":", 1)[0].strip()
        for line in str(error).splitlines()[1:]
        if line.split(":", 1)[0].strip() in _DECODER_PLUGINS
    ]
    detail = f"every decoder failed ({', '.join(tried)})" if tried else f"decoding failed ({failure(error)})"
    reason = f"(7FE0,0010) Pixel Data could not be decoded from {label}: {detail}"
    hint = _OPTIONAL_DECODER_HINT.get(transfer_syntax)
    if hint and int(ds.get("BitsStored", 8)) > 8:
        reason += f"; {hint}"
    return reason


def _metadata(
    ds: Dataset, transfer_syntax: UID, assumed: bool, transform: DisplayTransform | None, halvings: int
) -> dict[str, Any]:
    """Non-identifying facts about the image: never names, IDs, dates or UIDs of the instance.

    ``transform`` is None for a colour image: divided by 255 like RGB PNG, no VOI, not inverted.
    """
    sop_class = str(ds.get("SOPClassUID", "") or "").strip().rstrip("\0")
    sop_class = sop_class if is_uid(sop_class) else ""
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
    """A code-string attribute for metadata, None when missing or malformed (it may hold other data)."""
    value = ds.get(keyword)
    text = str(value) if value is not None else ""
    return text.strip() or None if is_code(text) else None


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
