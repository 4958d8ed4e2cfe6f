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
* multi-frame objects, and grayscale bit depths outside 8..16 bits stored;
* PALETTE COLOR (pseudo-colour through a lookup table: how ultrasound and
  functional maps are shown, not how radiographs are stored).

Colour-encoded images (Samples per Pixel 3: RGB, YBR_FULL, YBR_FULL_422 as JPEG
baseline stores colour, YBR_ICT/YBR_RCT in JPEG 2000) pass the header when they
use 8 unsigned bits per sample, as scanned films and screenshots sent to PACS as
Secondary Capture do. Whether the pixels are gray is decided after decoding, by
the rule that PNG and JPEG files follow (:func:`fracsight.io.intensity.gray_from_rgb`).

These checks run on the header before any pixel data is read or decoded.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalIntraOralXRayImageStorageForProcessing,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ImplicitVRLittleEndian,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
)

from fracsight.io.radiograph import NotARadiograph, UnreadableImage
from fracsight.io.safe_text import shown, uid_name

ACCEPTED_MODALITIES = frozenset({"CR", "DX"})

_RADIOGRAPH_SOP_CLASSES = frozenset({ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation})
SECONDARY_CAPTURE_SOP_CLASSES = frozenset(
    {
        SecondaryCaptureImageStorage,
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage,  # single frame accepted
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,  # single frame accepted
    }
)
_FOR_PROCESSING_SOP_CLASSES = frozenset(
    {
        DigitalXRayImageStorageForProcessing,
        DigitalMammographyXRayImageStorageForProcessing,
        DigitalIntraOralXRayImageStorageForProcessing,
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
# Colour models pydicom decodes to RGB: YBR_FULL(_422) by its colour conversion, YBR_ICT and
# YBR_RCT by the JPEG 2000 decoder's inverse component transform.
COLOUR_PHOTOMETRICS = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})


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
        what = "missing" if value in (None, "") else f"{shown(value, 'IS')}, not an integer"
        raise UnreadableImage(path, f"{tag} {keyword} is {what}") from error


def number_of_frames(header: Dataset) -> int:
    """(0028,0008) Number of Frames, 1 when absent or empty."""
    return _count_or_one(header, "NumberOfFrames")


def _count_or_one(header: Dataset, keyword: str) -> int:
    """An integer count attribute, 1 when absent, empty or malformed."""
    value = header.get(keyword)
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
            f"(0008,0016) SOP Class {uid_name(sop_class)} holds raw detector data not meant for "
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
        sop_text = uid_name(sop_class) if sop_class else "missing"
        raise NotARadiograph(
            path, f"(0008,0060) Modality is missing and (0008,0016) SOP Class is {sop_text}; {_WHAT_WE_READ}"
        )
    explanation = _MODALITY_REASONS.get(modality, "not a modality fracsight reads")
    if modality == "OT":
        explanation = "'other', and the object is not a Secondary Capture image"
    raise NotARadiograph(
        path, f"(0008,0060) Modality {shown(modality, 'CS')} is {explanation}; {_WHAT_WE_READ}"
    )


def is_colour(header: Dataset) -> bool:
    """True for colour-encoded pixel data (Samples per Pixel 3), which the policy let through as 8-bit."""
    return number_of_samples(header) == 3


def number_of_samples(header: Dataset) -> int:
    """(0028,0002) Samples per Pixel, 1 when absent or malformed (the policy has refused those)."""
    return _count_or_one(header, "SamplesPerPixel")


def _check_image_pixel_module(path: str, header: Dataset) -> None:
    frames = number_of_frames(header)
    if frames > 1:
        raise NotARadiograph(
            path,
            f"(0028,0008) Number of Frames is {frames}: a multi-frame (cine or stack) object, "
            "not a single radiograph",
        )
    samples = header_int(path, header, "SamplesPerPixel", "(0028,0002)", default=1)
    photometric = _photometric(path, header)
    header_int(path, header, "Rows", "(0028,0010)")
    header_int(path, header, "Columns", "(0028,0011)")
    if samples == 3:
        _check_colour(path, header, photometric)
        return
    if samples != 1:
        raise UnreadableImage(
            path,
            f"(0028,0002) Samples per Pixel is {samples}; fracsight reads 1 (grayscale) or "
            "3 (RGB or YBR colour)",
        )
    if photometric not in _GRAYSCALE:
        raise NotARadiograph(path, _not_grayscale(photometric))
    _check_grayscale_bits(path, header)


def _photometric(path: str, header: Dataset) -> str:
    photometric = str(header.get("PhotometricInterpretation", "") or "").strip().upper()
    if not photometric:
        raise UnreadableImage(
            path, "(0028,0004) Photometric Interpretation is missing: cannot tell black from white"
        )
    return photometric


def _not_grayscale(photometric: str) -> str:
    reason = f"(0028,0004) Photometric Interpretation {shown(photometric, 'CS')} is not grayscale"
    if photometric == "PALETTE COLOR":
        return f"{reason}: pseudo-colour through a lookup table, used for colour maps, not radiographs"
    if photometric in COLOUR_PHOTOMETRICS:
        return f"{reason} and contradicts (0028,0002) Samples per Pixel 1"
    return f"{reason} (MONOCHROME1 or MONOCHROME2)"


def _check_grayscale_bits(path: str, header: Dataset) -> None:
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


def _check_colour(path: str, header: Dataset, photometric: str) -> None:
    """3 samples per pixel: 8 unsigned bits in a colour model pydicom decodes to RGB.

    8 bits only: that is what scanned films and screenshots are, and what RGB PNG and JPEG
    give; deeper colour is photography or pathology, not a radiograph kept as colour.
    """
    if photometric in _GRAYSCALE or photometric == "PALETTE COLOR":
        raise UnreadableImage(
            path,
            f"(0028,0004) Photometric Interpretation {shown(photometric, 'CS')} contradicts (0028,0002) "
            "Samples per Pixel 3: cannot tell how the samples make a pixel",
        )
    if photometric not in COLOUR_PHOTOMETRICS:
        raise UnreadableImage(
            path,
            f"(0028,0004) Photometric Interpretation {shown(photometric, 'CS')} with 3 samples per pixel "
            "is not a colour model fracsight reads (RGB, YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT)",
        )
    rule = "fracsight reads colour images at 8 bits per sample only, as for RGB PNG and JPEG"
    allocated = header_int(path, header, "BitsAllocated", "(0028,0100)")
    if allocated != 8:
        raise UnreadableImage(
            path,
            f"(0028,0100) Bits Allocated is {allocated} with (0028,0002) Samples per Pixel 3; {rule}; "
            "store a deeper radiograph as grayscale (MONOCHROME2)",
        )
    stored = header_int(path, header, "BitsStored", "(0028,0101)", default=allocated)
    if stored != 8:
        raise UnreadableImage(path, f"(0028,0101) Bits Stored is {stored} with 3 samples per pixel; {rule}")
    representation = header_int(path, header, "PixelRepresentation", "(0028,0103)", default=0)
    if representation != 0:
        raise UnreadableImage(
            path, f"(0028,0103) Pixel Representation is {representation} with 3 samples per pixel; must be 0"
        )
    _check_planar_configuration(path, header)


def _check_planar_configuration(path: str, header: Dataset) -> None:
    """(0028,0006) says how uncompressed samples are laid out; guessing wrong scrambles the image."""
    if header.get("PlanarConfiguration") in (None, "") and _is_native(header):
        raise UnreadableImage(
            path,
            "(0028,0006) Planar Configuration is missing with 3 uncompressed samples per pixel: "
            "cannot tell interleaved (0) from planar (1) colour samples",
        )
    planar = header_int(path, header, "PlanarConfiguration", "(0028,0006)", default=0)
    if planar not in (0, 1):
        raise UnreadableImage(path, f"(0028,0006) Planar Configuration is {planar}; must be 0 or 1")


def _is_native(header: Dataset) -> bool:
    """Uncompressed pixel data; a file without File Meta (ACR-NEMA style) is read as uncompressed."""
    file_meta = getattr(header, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    return not UID(str(syntax or ImplicitVRLittleEndian)).is_compressed
