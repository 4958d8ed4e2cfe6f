"""PNG, JPEG and TIFF radiographs, decoded with Pillow.

Pillow's format plugins are opened directly (the format is already known from
the file's content), so no process-wide Pillow setting is read or changed: the
size limit is ours (checked from the header before decoding) and a truncated
JPEG is completed locally by appending an end-of-image marker, which is what
Pillow's global ``LOAD_TRUNCATED_IMAGES`` switch would do for every caller.
Pillow's messages are never passed on (a broken chunk's name or a tag's value is the
file's own data): a refusal names the step that failed and the exception type.
"""

from __future__ import annotations

import io
import logging
import struct
from typing import Any

import numpy as np
from PIL import ImageFile, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

from fracsight.io.formats import ImageFormat
from fracsight.io.intensity import (
    GrayPixels,
    IntensityMapping,
    float_to_unit,
    gray_from_rgb,
    integer_to_unit,
)
from fracsight.io.limits import check_pixel_count
from fracsight.io.radiograph import NotARadiograph, Radiograph, UnreadableImage
from fracsight.io.safe_text import failure
from fracsight.io.truncation import (
    MIN_DECODED_FRACTION,
    TruncatedImage,
    decoded_row_fraction,
    missing_progressive_detail,
)

logger = logging.getLogger(__name__)

_OPENERS: dict[ImageFormat, type[ImageFile.ImageFile]] = {
    ImageFormat.PNG: PngImagePlugin.PngImageFile,
    ImageFormat.JPEG: JpegImagePlugin.JpegImageFile,
    ImageFormat.TIFF: TiffImagePlugin.TiffImageFile,
}
_JPEG_END_OF_IMAGE = b"\xff\xd9"
_EXIF_ORIENTATION = 0x0112
# Pillow reports corrupt data through many exception types, depending on the plugin.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError)
_RGB_LIKE_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"})
_TIFF_BYTE_ORDERS = {b"II": "<", b"MM": ">"}
# Page directories counted before a multi-page TIFF is refused as "more than" this many.
_TIFF_PAGES_COUNTED = 1000


def read_pillow_image(name: str, data: bytes, image_format: ImageFormat, max_pixels: int) -> Radiograph:
    """Decode a PNG, JPEG or TIFF file's bytes into a gray :class:`Radiograph`; ``name`` stands for it."""
    label = image_format.value.upper()
    try:
        image = _OPENERS[image_format](io.BytesIO(data))
    except _DECODE_ERRORS as error:
        raise UnreadableImage(name, f"not a valid {label} file ({failure(error)})") from error
    with image:
        width, height = image.size
        check_pixel_count(name, height, width, 1, max_pixels)
        try:
            tiff = image_format is ImageFormat.TIFF
            frames = _tiff_pages(data) if tiff else int(getattr(image, "n_frames", 1))
        except _DECODE_ERRORS as error:
            raise UnreadableImage(name, f"not a valid {label} file ({failure(error)})") from error
        if frames > 1:
            shown = f"more than {_TIFF_PAGES_COUNTED:,}" if frames > _TIFF_PAGES_COUNTED else str(frames)
            raise NotARadiograph(
                name, f"{label} holds {shown} images (pages or frames): fracsight reads one image per file"
            )
        if image.mode == "1":
            raise NotARadiograph(name, "1-bit black-and-white image: a radiograph needs gray levels")
        decoded = _load(name, image, data, image_format)
        try:
            truncated = decoded is not image
            decoded_fraction = decoded_row_fraction(np.asarray(decoded)) if truncated else 1.0
            if truncated:
                _refuse_if_mostly_missing(name, decoded_fraction)
            gray = _gray_pixels(name, decoded)
        finally:
            if decoded is not image:
                decoded.close()
        mode = image.mode
        orientation = _exif_orientation(image)
    pixels = orient_as_displayed(gray.pixels, orientation)
    height, width = pixels.shape
    metadata: dict[str, Any] = {
        "format": image_format.value,
        "rows": height,
        "columns": width,
        "bits_stored": gray.bits,
        "mode": mode,
        "inverted": False,
        "truncated": truncated,
        "intensity_mapping": gray.mapping.value,
        "channels_merged": gray.channels_merged,
        "exif_orientation": orientation,
    }
    if truncated:
        metadata["decoded_fraction"] = round(decoded_fraction, 4)
    return Radiograph(pixels=pixels, source=name, format=image_format.value, metadata=metadata)


def _tiff_pages(data: bytes, enough: int = _TIFF_PAGES_COUNTED + 1) -> int:
    """Page directories of a TIFF, counted up to ``enough``: a second page is reason to refuse, and
    Pillow's ``n_frames`` walks them all (minutes for 200,000 of them, or a loop)."""
    order = _TIFF_BYTE_ORDERS[data[:2]]
    big = data[2:4] in (b"\x2b\x00", b"\x00\x2b")  # BigTIFF: 8-byte offsets and counts
    offset_format, count_format, entry_size = ("Q", "Q", 20) if big else ("I", "H", 12)
    pos = struct.unpack_from(order + offset_format, data, 8 if big else 4)[0]
    pages = 0
    while pos and pages < enough:
        pages += 1
        count = struct.unpack_from(order + count_format, data, pos)[0]
        next_at = pos + struct.calcsize(count_format) + count * entry_size
        pos = struct.unpack_from(order + offset_format, data, next_at)[0]
    return pages


def _exif_orientation(image: ImageFile.ImageFile) -> int:
    try:
        value = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except _DECODE_ERRORS:
        return 1
    return value if 1 <= value <= 8 else 1


def orient_as_displayed(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation so pixels are as a viewer displays them (and as experts annotate).

    Same result as Pillow's ``ImageOps.exif_transpose``: 2 mirror, 3 rotate 180, 4 flip,
    5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
    """
    if orientation == 2:
        return np.ascontiguousarray(pixels[:, ::-1])
    if orientation == 3:
        return np.ascontiguousarray(pixels[::-1, ::-1])
    if orientation == 4:
        return np.ascontiguousarray(pixels[::-1, :])
    if orientation == 5:
        return np.ascontiguousarray(pixels.T)
    if orientation == 6:
        return np.ascontiguousarray(np.rot90(pixels, -1))
    if orientation == 7:
        return np.ascontiguousarray(np.rot90(pixels, 2).T)
    if orientation == 8:
        return np.ascontiguousarray(np.rot90(pixels, 1))
    return pixels


def _load(
    name: str, image: ImageFile.ImageFile, data: bytes, image_format: ImageFormat
) -> ImageFile.ImageFile:
    """Decode ``image``; for a truncated JPEG return a second image completed with an end marker."""
    label = image_format.value.upper()
    try:
        image.load()
    except _DECODE_ERRORS as error:
        if not _is_truncation(error):
            raise UnreadableImage(name, f"{label} data could not be decoded ({failure(error)})") from error
        if image_format is not ImageFormat.JPEG:
            raise TruncatedImage(
                name, f"{label} file is truncated (image data ends early; {failure(error)})"
            ) from error
        return _complete_truncated_jpeg(name, data)
    return image


def _is_truncation(error: Exception) -> bool:
    return isinstance(error, EOFError) or "truncated" in str(error)


def _complete_truncated_jpeg(name: str, data: bytes) -> ImageFile.ImageFile:
    """A JPEG that ends early, decoded up to its end as if the end-of-image marker had arrived."""
    progressive_gap = missing_progressive_detail(data)
    if progressive_gap:
        raise TruncatedImage(name, progressive_gap)
    try:
        image = JpegImagePlugin.JpegImageFile(io.BytesIO(data + _JPEG_END_OF_IMAGE))
        image.load()
    except _DECODE_ERRORS as error:
        raise TruncatedImage(
            name, f"JPEG is truncated and nothing could be decoded ({failure(error)})"
        ) from error
    return image


def _refuse_if_mostly_missing(name: str, decoded_fraction: float) -> None:
    """Keep a truncated JPEG only when most of its rows arrived (and say so in the log)."""
    if decoded_fraction < MIN_DECODED_FRACTION:
        raise TruncatedImage(
            name,
            f"JPEG is truncated: only {decoded_fraction:.1%} of its rows were received "
            f"(at least {MIN_DECODED_FRACTION:.0%} needed; the rest would be flat gray)",
        )
    logger.warning(
        "%s: JPEG is truncated; %.1f%% of rows decoded, any missing tail is flat gray",
        name,
        100 * decoded_fraction,
    )


def _gray_pixels(name: str, image: ImageFile.ImageFile) -> GrayPixels:
    """The decoded image as float32 gray in [0, 1], by the convention in :mod:`intensity`."""
    mode = image.mode
    if mode in ("L", "LA"):
        values = np.asarray(image)
        if values.ndim == 3:
            values = values[..., 0]  # drop alpha: transparency carries no anatomy
        return GrayPixels(integer_to_unit(values, 255), 8, IntensityMapping.TYPE_MAX, False)
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit(name, np.asarray(image))
    if mode == "F":
        pixels, mapping = float_to_unit(name, np.asarray(image))
        return GrayPixels(pixels, 32, mapping, False)
    if mode in _RGB_LIKE_MODES:
        rgb_image = image if mode in ("RGB", "RGBA", "RGBX") else image.convert("RGB")
        rgb = np.asarray(rgb_image)[..., :3]
        return GrayPixels(gray_from_rgb(name, rgb), 8, IntensityMapping.TYPE_MAX, True)
    raise UnreadableImage(name, f"pixel mode {mode!r} is not supported (fracsight reads 8/16-bit gray, RGB)")


def _sixteen_bit(name: str, values: np.ndarray) -> GrayPixels:
    """16-bit gray (Pillow modes I;16*, or I holding 16-bit values) divided by 65535."""
    if values.dtype.kind == "u" and values.dtype.itemsize == 2:
        return GrayPixels(integer_to_unit(values, 65535), 16, IntensityMapping.TYPE_MAX, False)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise UnreadableImage(
            name,
            f"integer pixels range from {low} to {high}, outside the 16-bit range 0..65535 "
            "that fracsight reads",
        )
    return GrayPixels(integer_to_unit(values, 65535), 16, IntensityMapping.TYPE_MAX, False)
