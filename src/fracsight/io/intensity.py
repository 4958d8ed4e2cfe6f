"""One fixed convention for turning decoded PNG/JPEG/TIFF pixels into gray values in [0, 1].

Integer images are divided by their type's maximum (255 for 8-bit, 65535 for
16-bit), whatever range the pixels actually use: a 16-bit PNG that holds 12-bit
data comes out dark, and that is intended. Stretching by each image's own
min/max or percentiles here would hide how the file was written; contrast is
normalised per image later, in preprocessing, in one documented place.

Float images have no type maximum: values already in [0, 1] are kept, any other
finite range is mapped linearly from its min/max (recorded as ``"min-max"``).

Colour is the exception that needs a judgement: many radiographs are saved as
RGB with equal channels, and JPEG compression makes those channels differ by a
few levels. An image counts as gray while fewer than ``MAX_COLOURED_SHARE`` of
its pixels have channels more than ``COLOUR_SPREAD_LEVELS`` apart (this tolerates
JPEG noise and small coloured burnt-in markers); gray is the channel mean.
Colour-encoded DICOM (8-bit RGB or YBR, decoded to RGB) follows the same rule
(:func:`fracsight.io.dicom_display.gray_from_colour`), so a scanned film sent as
colour Secondary Capture reads as it would as a PNG.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from fracsight.io.radiograph import NotARadiograph, UnreadableImage

COLOUR_SPREAD_LEVELS = 24  # of 255: well above JPEG chroma noise on gray images (a few levels)
MAX_COLOURED_SHARE = 0.01  # 1% of pixels: room for a coloured side marker or ruler, not a photo


class IntensityMapping(str, enum.Enum):
    """How stored values became [0, 1]; kept in ``metadata["intensity_mapping"]``."""

    TYPE_MAX = "type-max"  # integer value / maximum of the integer type
    AS_IS = "as-is"  # float values already in [0, 1]
    MIN_MAX = "min-max"  # float values mapped from their own min/max
    DICOM_VOI = "dicom-voi"  # DICOM Modality LUT/rescale, then VOI LUT/window or stored range


@dataclass(frozen=True)
class GrayPixels:
    """Gray float32 pixels in [0, 1] and the facts about how they were obtained."""

    pixels: np.ndarray
    bits: int  # bits per sample in the decoded data (8, 16 or 32 for float)
    mapping: IntensityMapping
    channels_merged: bool  # True when equal-channel RGB was reduced to gray


def integer_to_unit(values: np.ndarray, type_max: int) -> np.ndarray:
    """Integer pixels divided by ``type_max``, as float32, without a float64 copy."""
    out = values.astype(np.float32)
    out *= np.float32(1.0 / type_max)
    return out


def float_to_unit(path: str, values: np.ndarray) -> tuple[np.ndarray, IntensityMapping]:
    """Float pixels in [0, 1]: kept when already there, else mapped from their min/max."""
    out = values.astype(np.float32)
    if not np.all(np.isfinite(out)):
        bad = int(np.count_nonzero(~np.isfinite(out)))
        raise UnreadableImage(path, f"{bad} float pixels are NaN or infinite: the image data is corrupt")
    low, high = float(out.min()), float(out.max())
    if low >= 0.0 and high <= 1.0:
        return out, IntensityMapping.AS_IS
    if high == low:
        return np.zeros_like(out), IntensityMapping.MIN_MAX
    out -= np.float32(low)
    out *= np.float32(1.0 / (high - low))
    np.clip(out, 0.0, 1.0, out=out)
    return out, IntensityMapping.MIN_MAX


def gray_from_rgb(path: str, rgb: np.ndarray) -> np.ndarray:
    """An 8-bit H x W x 3 array reduced to float32 gray in [0, 1], or NotARadiograph if colourful."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(red, green) and np.array_equal(green, blue):
        return integer_to_unit(red, 255)
    spread = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    coloured_share = float(np.count_nonzero(spread > COLOUR_SPREAD_LEVELS)) / spread.size
    if coloured_share > MAX_COLOURED_SHARE:
        raise NotARadiograph(
            path,
            "colour image (channels differ): not a radiograph; "
            f"{coloured_share:.1%} of pixels differ by more than {COLOUR_SPREAD_LEVELS} of 255 levels "
            f"between red, green and blue (a gray image saved as RGB stays under {MAX_COLOURED_SHARE:.0%})",
        )
    gray = rgb.sum(axis=2, dtype=np.float32)
    gray *= np.float32(1.0 / (3 * 255))
    return gray
