"""DICOM grayscale display pipeline: stored value -> Modality LUT -> VOI -> polarity -> [0, 1].

The pipeline follows the DICOM grayscale standard display chain (PS3.3 C.11,
PS3.4 N.2): Modality LUT Sequence or Rescale Slope/Intercept, then the first VOI
LUT Sequence item, or else the first Window Center/Width pair (LINEAR,
LINEAR_EXACT or SIGMOID), or else the full stored range. MONOCHROME1 is then
inverted so that bone is bright. A VOI step that sends every storable value to one
gray level (a window beside the data, a flat table) falls back to the stored range;
a rescale that does so, or gives NaN, is refused.

Output scale: a window maps to [0, 1] exactly as the standard maps it to the
display range; a VOI LUT by the minimum and maximum of its table; with neither,
the modality values of the lowest and highest storable value (Bits Stored,
Pixel Representation) map to 0 and 1.

Polarity: Photometric Interpretation decides. The DX and MG IODs require
Presentation LUT Shape INVERSE with MONOCHROME1 and IDENTITY with MONOCHROME2,
so INVERSE + MONOCHROME1 is one inversion, not two. A file claiming INVERSE with
MONOCHROME2 breaks that rule; archives see such mislabelled shapes in the wild,
so we follow Photometric Interpretation and log a warning.

Speed: the whole chain is evaluated once per possible stored value (at most
65536) and applied to the image as one table lookup, in float32.

Colour-encoded images (Samples per Pixel 3) take none of these steps: Modality
LUT, VOI and Presentation LUT are grayscale transforms (PS3.3 C.11), and
MONOCHROME1 cannot apply. Their decoded RGB goes through the rule used for RGB
PNG and JPEG (:func:`~fracsight.io.intensity.gray_from_rgb`): gray within JPEG
noise is read as the channel mean over 255, anything colourful is refused.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.uid import UID

from fracsight.io.intensity import gray_from_rgb
from fracsight.io.radiograph import NotARadiograph, UnreadableImage
from fracsight.io.safe_text import failure, shown

logger = logging.getLogger(__name__)


# Grayscale transforms a colour image may still carry (copied from its source); never applied to it.
_GRAYSCALE_ONLY = (
    "ModalityLUTSequence",
    "RescaleSlope",
    "RescaleIntercept",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "PresentationLUTShape",
)


# Stored values looked up at once by DisplayTransform.apply (their 8-byte indices: 1.5 MB).
_LOOKUP_BAND = 1 << 18


class VoiSource(str, enum.Enum):
    """Which VOI step produced the display values; kept in ``metadata["voi"]``."""

    VOI_LUT = "voi-lut"  # (0028,3010) VOI LUT Sequence, first item
    WINDOW = "window"  # (0028,1050)/(0028,1051), first pair
    STORED_RANGE = "stored-range"  # no usable VOI: the whole storable range


def through_own_voi(voi: str | None) -> bool:
    """Whether display values came through the image's own VOI LUT or window (``metadata["voi"]``),
    so they already sit where its modality wants them; not for the stored range, nor non-DICOM."""
    return voi in (VoiSource.VOI_LUT, VoiSource.WINDOW)


@dataclass(frozen=True)
class DisplayTransform:
    """The display value in [0, 1] of every storable value, as one float32 lookup table."""

    table: np.ndarray  # table[i] is the display value of stored value ``first_value + i``
    first_value: int
    voi: VoiSource
    window: tuple[float, float] | None  # (center, width) when voi is WINDOW
    window_function: str | None
    inverted: bool

    def apply(self, stored: np.ndarray) -> np.ndarray:
        """Display values for decoded stored values; values outside the storable range are clipped.

        Looked up a band of rows at a time: numpy turns the indices into a temporary array of
        8-byte integers, which for a whole 3000 x 3000 image (72 MB) costs more than the lookup
        itself; a band's stays in the cache (0.6 of the time, the same values)."""
        out = np.empty(stored.shape, dtype=np.float32)
        flat_in, flat_out = stored.reshape(-1), out.reshape(-1)
        for start in range(0, flat_in.size, _LOOKUP_BAND):
            band = flat_in[start : start + _LOOKUP_BAND]
            if self.first_value != 0 or band.dtype.kind != "u":
                band = band.astype(np.int32)
                band -= np.int32(self.first_value)
            np.take(self.table, band, mode="clip", out=flat_out[start : start + _LOOKUP_BAND])
        return out


def display_transform(path: str, ds: Dataset) -> DisplayTransform:
    """Build the display lookup table from the dataset's grayscale attributes."""
    bits_stored = int(ds.get("BitsStored", ds.BitsAllocated))
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    first_value = -(1 << (bits_stored - 1)) if signed else 0
    stored = np.arange(first_value, first_value + (1 << bits_stored), dtype=np.int64)
    try:
        modality_values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as error:
        raise UnreadableImage(
            path, f"(0028,3000) Modality LUT / (0028,1053) Rescale could not be applied ({failure(error)})"
        ) from error
    _check_modality_values(path, ds, modality_values)
    window: tuple[float, float] | None = None
    function: str | None = None
    if ds.get("VOILUTSequence"):
        unit = _through_voi_lut(path, ds, modality_values)
        voi = VoiSource.VOI_LUT
    else:
        window, function = _first_window(path, ds)
        if window is not None and function is not None:
            unit = _through_window(modality_values, window, function)
            voi = VoiSource.WINDOW
        else:
            unit = _through_range(modality_values)
            voi = VoiSource.STORED_RANGE
    if voi is not VoiSource.STORED_RANGE and _is_constant(unit):
        logger.warning(
            "%s: the %s maps every storable value to one gray level; using the stored range", path, voi.value
        )
        unit, voi, window, function = _through_range(modality_values), VoiSource.STORED_RANGE, None, None
    inverted = _is_inverted(path, ds)
    if inverted:
        unit = 1.0 - unit
    table = np.clip(unit, 0.0, 1.0).astype(np.float32)
    return DisplayTransform(table, first_value, voi, window, function, inverted)


def gray_from_colour(path: str, ds: Dataset, rgb: np.ndarray) -> np.ndarray:
    """Decoded 8-bit RGB as gray in [0, 1], or NotARadiograph naming the colour attributes."""
    ignored = [keyword for keyword in _GRAYSCALE_ONLY if keyword in ds]
    if ignored:
        logger.debug("%s: colour image; grayscale-only %s not applied", path, ", ".join(ignored))
    try:
        return gray_from_rgb(path, rgb)
    except NotARadiograph as error:
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        raise NotARadiograph(
            path, f"(0028,0004) Photometric Interpretation {shown(photometric, 'CS')}: {error.reason}"
        ) from error


def _check_modality_values(path: str, ds: Dataset, values: np.ndarray) -> None:
    """Refuse a Modality LUT / rescale that is undefined ('nan' slope) or sends everything to one value.

    NaN would pass every later clip and reach the model; slope 0 would give a blank image.
    """
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    rescale = (
        f"(0028,1053) Rescale Slope {shown(slope, 'DS')}, "
        f"(0028,1052) Rescale Intercept {shown(intercept, 'DS')}"
    )
    step = "(0028,3000) Modality LUT" if ds.get("ModalityLUTSequence") else rescale
    if not np.all(np.isfinite(values)):
        raise UnreadableImage(path, f"{step} gives NaN or infinite values: the pixel values are undefined")
    if _is_constant(values):
        raise UnreadableImage(
            path, f"{step} maps every storable value to {float(values[0]):g}: the image would be blank"
        )


def _is_constant(values: np.ndarray) -> bool:
    return bool(float(values.max()) <= float(values.min()))


def _through_voi_lut(path: str, ds: Dataset, modality_values: np.ndarray) -> np.ndarray:
    """First VOI LUT item, scaled by the minimum and maximum of its table."""
    try:
        table, first = _voi_lut_table(ds)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError, NotImplementedError) as error:
        raise UnreadableImage(
            path, f"(0028,3010) VOI LUT Sequence could not be applied ({_lut_problem(error)})"
        ) from error
    index = np.rint(modality_values).astype(np.int64) - first
    mapped = table[np.clip(index, 0, table.size - 1)]
    low, high = float(table.min()), float(table.max())
    if high <= low:
        return np.zeros(mapped.shape, dtype=np.float64)
    return (mapped.astype(np.float64) - low) / (high - low)


class _LutProblem(ValueError):
    """A VOI LUT that contradicts itself; its message is ours and quotes only numbers."""


def _lut_problem(error: Exception) -> str:
    return str(error) if isinstance(error, _LutProblem) else failure(error)


def _voi_lut_table(ds: Dataset) -> tuple[np.ndarray, int]:
    """The first VOI LUT item's entries and the input value of its first entry.

    Read here rather than through pydicom's ``apply_voi``, which (pydicom 3.0) indexes a
    table of 8-bit entries with uint8, so inputs past the 256th entry wrap to its start.
    """
    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    if bits != 8 and not 10 <= bits <= 16:
        raise _LutProblem(f"(0028,3002) LUT Descriptor gives {bits} bits per entry; must be 8 or 10-16")
    value = item["LUTData"].value
    if isinstance(value, (bytes, bytearray)) and bits == 8 and len(value) in (entries, entries + 1):
        # 8-bit entries stored one per byte (PS3.3 C.11.2.1.1: "as if 8 bits allocated"; the
        # other common form pads each to a 16-bit word and is read below).
        table = np.frombuffer(value, dtype=np.uint8, count=entries).astype(np.int64)
    elif isinstance(value, (bytes, bytearray)):  # OW: 16-bit words in the data set's byte order
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        order = ">" if syntax and not UID(str(syntax)).is_little_endian else "<"
        table = np.frombuffer(value, dtype=f"{order}u2", count=len(value) // 2).astype(np.int64)
    else:
        table = np.atleast_1d(np.asarray(value, dtype=np.int64))
    if table.size < entries:
        raise _LutProblem(
            f"(0028,3006) LUT Data holds {table.size} entries; the descriptor declares {entries}"
        )
    return table[:entries], first


def _first_window(path: str, ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """The first (center, width) pair and VOI LUT Function, or (None, None) when unusable."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None, None
    try:
        center = float(_first(ds.WindowCenter))
        width = float(_first(ds.WindowWidth))
    except (TypeError, ValueError, IndexError):
        logger.warning("%s: (0028,1050)/(0028,1051) window is not numeric; using the stored range", path)
        return None, None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        logger.warning(
            "%s: (0028,1056) VOI LUT Function %s is unknown; using LINEAR", path, shown(function, "CS")
        )
        function = "LINEAR"
    usable = (
        np.isfinite(center) and np.isfinite(width) and (width >= 1.0 if function == "LINEAR" else width > 0)
    )
    if not usable:
        logger.warning(
            "%s: (0028,1051) Window Width %s is invalid for %s; using the stored range", path, width, function
        )
        return None, None
    return (center, width), function


def _first(value: object) -> object:
    return value[0] if isinstance(value, (list, tuple, MultiValue)) else value


def _through_window(values: np.ndarray, window: tuple[float, float], function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 windowing onto [0, 1] instead of the display's integer range."""
    center, width = window
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if width == 1.0:  # the standard's limit case: a threshold at center - 0.5
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _through_range(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    return (values - low) / (high - low)


def _is_inverted(path: str, ds: Dataset) -> bool:
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if photometric == "MONOCHROME2" and shape == "INVERSE":
        logger.warning(
            "%s: (2050,0020) Presentation LUT Shape INVERSE contradicts MONOCHROME2; "
            "following (0028,0004) Photometric Interpretation (not inverted)",
            path,
        )
    inverted = photometric == "MONOCHROME1"
    if inverted:
        logger.debug("%s: MONOCHROME1, inverted so that bone is bright", path)
    return inverted
