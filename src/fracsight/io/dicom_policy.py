"""Which DICOM objects fracsight reads as radiographs, decided from the header alone.

Accepted: single-frame grayscale projection radiographs, i.e. Modality CR or DX
(For Presentation), and Secondary Capture images (Modality OT or absent), which
is how many sites export or re-scan radiographs. The model's accuracy was
measured on such images only, so everything else is refused with the reason:

* CT, MR, NM, PT, US and other non-projection modalities;
* MG (mammography): X-ray, but breast imaging is not in fracsight's scope;
* RF and XA (fluoroscopy, angiography): cine or spot images from a different
  acquisition chain, often multi-frame, on which accuracy was never measured;
* IO and PX (dental): outside the skeletal regions the model was trained on;
* "For Processing" images: raw detector data not meant for display;
* multi-frame objects, colour (Samples per Pixel != 1, non-MONOCHROME), and bit
  depths outside 8..16 bits stored.

These checks run on the header before any pixel data is read or decoded.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import UID

from fracsight.io.radiograph import NotARadiograph, UnreadableImage

ACCEPTED_MODALITIES = frozenset({"CR", "DX"})

_CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
_DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
_RADIOGRAPH_SOP_CLASSES = frozenset({_CR_STORAGE, _DX_FOR_PRESENTATION})
SECONDARY_CAPTURE_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC (single frame accepted)
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC (single frame accepted)
    }
)
_FOR_PROCESSING_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray - For Processing
        "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography - For Processing
        "1.2.840.10008.5.1.4.1.1.1.3.1",  # Digital Intra-Oral X-Ray - For Processing
    }
)
_SECONDARY_CAPTURE_MODALITIES = frozenset({"", "OT"})

_WHAT_WE_READ = "fracsight reads CR, DX and secondary-capture radiographs"
_MODALITY_REASONS = {
    "CT": "computed tomography (cross-sectional), not a projection radiograph",
    "MR": "magnetic resonance, not a projection radiograph",
    "NM": "nuclear medicine, not a projection radiograph",
    "PT": "PET, not a projection radiograph",
    "US": "ultrasound, not a projection radiograph",
    "MG": "mammography, which is not in fracsight's scope (breast imaging, not the skeleton)",
    "RF": "fluoroscopy, on which fracsight's accuracy was never measured",
    "XA": "X-ray angiography (cine), on which fracsight's accuracy was never measured",
    "IO": "intra-oral dental imaging, outside the skeletal regions fracsight was trained on",
    "PX": "panoramic dental imaging, outside the skeletal regions fracsight was trained on",
}
_GRAYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})


def check_radiograph_header(path: str, header: Dataset) -> None:
    """Raise NotARadiograph / UnreadableImage unless ``header`` describes a radiograph we read."""
    _check_kind(path, header)
    _check_image_pixel_module(path, header)


def header_int(path: str, header: Dataset, keyword: str, tag: str, default: int | None = None) -> int:
    """An integer attribute, or UnreadableImage naming the tag when it is missing or malformed."""
    value = header.get(keyword, default)
    if value in (None, "") and default is not None:
        value = default
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        shown = "missing" if value in (None, "") else f"{value!r}, not an integer"
        raise UnreadableImage(path, f"{tag} {keyword} is {shown}") from error


def number_of_frames(header: Dataset) -> int:
    """(0028,0008) Number of Frames, 1 when absent or empty."""
    value = header.get("NumberOfFrames")
    try:
        return int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        return 1


def _check_kind(path: str, header: Dataset) -> None:
    modality = str(header.get("Modality", "") or "").strip().upper()
    sop_class = str(header.get("SOPClassUID", "") or "").strip()
    if sop_class in _FOR_PROCESSING_SOP_CLASSES:
        raise NotARadiograph(
            path,
            f"(0008,0016) SOP Class '{UID(sop_class).name}' holds raw detector data not meant for "
            "display; send the 'For Presentation' image instead",
        )
    intent = str(header.get("PresentationIntentType", "") or "").strip().upper()
    if intent == "FOR PROCESSING":
        raise NotARadiograph(
            path,
            "(0008,0068) Presentation Intent Type 'FOR PROCESSING': raw detector data not meant for "
            "display; send the 'For Presentation' image instead",
        )
    if modality in ACCEPTED_MODALITIES:
        return
    if modality in _SECONDARY_CAPTURE_MODALITIES and sop_class in SECONDARY_CAPTURE_SOP_CLASSES:
        return
    if modality == "" and sop_class in _RADIOGRAPH_SOP_CLASSES:
        return
    if modality == "":
        sop_text = f"'{UID(sop_class).name}'" if sop_class else "missing"
        raise NotARadiograph(
            path, f"(0008,0060) Modality is missing and (0008,0016) SOP Class is {sop_text}; {_WHAT_WE_READ}"
        )
    explanation = _MODALITY_REASONS.get(modality, "not a modality fracsight reads")
    if modality == "OT":
        explanation = "'other', and the object is not a Secondary Capture image"
    raise NotARadiograph(path, f"(0008,0060) Modality '{modality}' is {explanation}; {_WHAT_WE_READ}")


def _check_image_pixel_module(path: str, header: Dataset) -> None:
    frames = number_of_frames(header)
    if frames > 1:
        raise NotARadiograph(
            path,
            f"(0028,0008) Number of Frames is {frames}: a multi-frame (cine or stack) object, "
            "not a single radiograph",
        )
    samples = header_int(path, header, "SamplesPerPixel", "(0028,0002)", default=1)
    if samples != 1:
        raise NotARadiograph(
            path, f"(0028,0002) Samples per Pixel is {samples}: a colour image, not a grayscale radiograph"
        )
    photometric = str(header.get("PhotometricInterpretation", "") or "").strip().upper()
    if not photometric:
        raise UnreadableImage(
            path, "(0028,0004) Photometric Interpretation is missing: cannot tell black from white"
        )
    if photometric not in _GRAYSCALE:
        raise NotARadiograph(
            path,
            f"(0028,0004) Photometric Interpretation '{photometric}' is not grayscale "
            "(MONOCHROME1 or MONOCHROME2)",
        )
    header_int(path, header, "Rows", "(0028,0010)")
    header_int(path, header, "Columns", "(0028,0011)")
    allocated = header_int(path, header, "BitsAllocated", "(0028,0100)")
    stored = header_int(path, header, "BitsStored", "(0028,0101)", default=allocated)
    representation = header_int(path, header, "PixelRepresentation", "(0028,0103)", default=0)
    if representation not in (0, 1):
        raise UnreadableImage(path, f"(0028,0103) Pixel Representation is {representation}; must be 0 or 1")
    if allocated not in (8, 16):
        raise UnreadableImage(
            path, f"(0028,0100) Bits Allocated is {allocated}; fracsight reads 8- or 16-bit pixel data"
        )
    if not 8 <= stored <= allocated:
        raise UnreadableImage(
            path,
            f"(0028,0101) Bits Stored is {stored} with {allocated} bits allocated; "
            "fracsight reads 8 to 16 bits stored",
        )
