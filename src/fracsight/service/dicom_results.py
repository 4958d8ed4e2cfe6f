"""One analysed radiograph -> the DICOM objects a PACS receives back (built with highdicom).

* a **Secondary Capture**: the image with the heat map, the category and probability burned in
  and the caption "AI result, an aid, not a diagnosis"; same patient and study, a series of its
  own, the source image referenced;
* a **Comprehensive SR** following TID 1500 (Measurement Report), as the IHE Radiology AI Results
  (AIR) profile uses it: the algorithm as observer device and in the finding's algorithm
  identification (model name, version, sha256 and operating points), the finding "fracture of
  bone" with the probability, the category, the two operating points and the heat-map peak as a
  point on the source image, and, once its images are analysed, the study's category;
* a **Grayscale Softcopy Presentation State** for images in category fracture or doubt: the
  outline of the hot region (heat-map cells at half the peak's value or more, around the peak), a
  circle at the peak and the category drawn on the original image, for the PACS viewer to switch
  on and off. For "no fracture" it would only show a peak the model gives no weight to, so
  none is made; nor for colour images, which a grayscale presentation state cannot describe.

Builders are pure: they take the source header, the analysis, the clock and the UIDs, and
return pydicom datasets; :mod:`fracsight.service.results_stage` decides when and writes them.
Codes are SNOMED CT and DICOM where those exist; fracsight's categories and operating points use
the private coding scheme :data:`SCHEME` (declared in the SR).
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fracsight.decide import Category
from fracsight.explain import CAPTION, overlay_image
from fracsight.finding import Finding

# highdicom warns about person names it finds odd and quotes them: patient data must not reach
# the log, and the names are the source's to keep as they are.
warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent", module="highdicom")

MANUFACTURER = "fracsight"
SCHEME = "99FRACSIGHT"  # private coding scheme designators start with 99 (PS3.3 8.2)
SC_SERIES_NUMBER, SR_SERIES_NUMBER, PR_SERIES_NUMBER = 9901, 9902, 9903
SERIES_DESCRIPTIONS = {
    "sc": "fracsight AI result: heat map burned in",
    "sr": "fracsight AI result: structured report",
    "gsps": "fracsight AI result: peak region overlay",
}
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"

FRACTURE = hd.sr.CodedConcept("125605004", "SCT", "Fracture of bone")
RADIOGRAPHY = hd.sr.CodedConcept("363680008", "SCT", "Radiographic imaging procedure")
PROBABILITY = hd.sr.CodedConcept(codes.DCM.Probability.value, "DCM", codes.DCM.Probability.meaning)
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
CATEGORY = hd.sr.CodedConcept("category", SCHEME, "fracsight category")
STUDY_CATEGORY = hd.sr.CodedConcept("study-category", SCHEME, "fracsight study category")
OPERATING_POINTS = {
    "fracture": hd.sr.CodedConcept("op-fracture", SCHEME, "Fracture operating point (high specificity)"),
    "doubt": hd.sr.CodedConcept("op-doubt", SCHEME, "Doubt operating point (high sensitivity)"),
}
CATEGORY_CODES = {
    Category.FRACTURE: hd.sr.CodedConcept("fracture", SCHEME, "Fracture likely"),
    Category.DOUBT: hd.sr.CodedConcept("doubt", SCHEME, "Doubt: look again"),
    Category.NO_FRACTURE: hd.sr.CodedConcept("no-fracture", SCHEME, "No fracture found by the model"),
}
_WORDS = {Category.FRACTURE: "fracture", Category.DOUBT: "doubt", Category.NO_FRACTURE: "no fracture"}


@dataclass(frozen=True)
class Algorithm:
    """What the results say about the algorithm that made them: the model (from its card) and
    fracsight's own version, which DICOM records as the device's software version."""

    name: str  # the model card's model_id
    version: str  # fracsight's version (and the model's, where its card gives one)
    sha256: str  # of the ONNX file
    thresholds: dict[str, float]

    @classmethod
    def of(cls, model: Algorithm, software_version: str) -> Algorithm:
        version = software_version + (f" model {model.version}" if model.version else "")
        thresholds = {k: float(v) for k, v in model.thresholds.items() if k in OPERATING_POINTS}
        return cls(model.model_id, version[:64], model.onnx_sha256 or "", thresholds)


@dataclass(frozen=True)
class ResultUIDs:
    """The UIDs of one image's result objects and the series they belong to."""

    sc: str
    sr: str
    gsps: str
    sc_series: str
    sr_series: str
    gsps_series: str
    device: str

    @classmethod
    def derived(cls, image_id: str, group: str, model: Algorithm) -> ResultUIDs:
        """UIDs that follow from the image and its group (study and batch): made again after a
        restart they are the same, so the PACS keeps one copy of each object."""

        def uid(*parts: str) -> str:
            return generate_uid(prefix=None, entropy_srcs=["fracsight", *parts])

        return cls(
            sc=uid(image_id, "sc"),
            sr=uid(image_id, "sr"),
            gsps=uid(image_id, "gsps"),
            sc_series=uid(group, "sc-series"),
            sr_series=uid(group, "sr-series"),
            gsps_series=uid(group, "gsps-series"),
            device=uid("device", model.sha256),
        )


@dataclass(frozen=True)
class StudyAnswer:
    """The study's category: that of its most suspicious analysed image."""

    category: Category
    probability: float
    images: int  # how many analysed images it is taken over


@dataclass(frozen=True)
class ResultObjects:
    sc: Dataset
    sr: Dataset
    gsps: Dataset | None


def peak_on_source(finding: Finding, source: Dataset) -> tuple[float, float]:
    """The heat-map peak in the source image's pixel coordinates (column, row; (0, 0) is the
    top-left corner of the top-left pixel), whatever resolution the image was analysed at."""
    x, y = finding.peak()
    box = finding.letterbox
    columns, rows = int(source.Columns), int(source.Rows)
    sx, sy = columns / box.width, rows / box.height
    return float(np.clip(x * sx, 0, columns)), float(np.clip(y * sy, 0, rows))


def outline_on_source(finding: Finding, source: Dataset) -> list[tuple[float, float]]:
    """The hot region's outline (:meth:`Finding.outline`) in the source image's pixel coordinates."""
    box = finding.letterbox
    columns, rows = int(source.Columns), int(source.Rows)
    sx, sy = columns / box.width, rows / box.height
    return [
        (float(np.clip(x * sx, 0, columns)), float(np.clip(y * sy, 0, rows))) for x, y in finding.outline()
    ]


def peak_radius_on_source(finding: Finding, source: Dataset) -> float:
    """One heat-map cell, in source pixels: the size of the region the peak stands for."""
    box = finding.letterbox
    cell_model_px = box.size / finding.heatmap.shape[0]
    return cell_model_px / box.scale * int(source.Columns) / box.width


def build_results(
    source: Dataset,
    pixels: np.ndarray,
    finding: Finding,
    model: Algorithm,
    uids: ResultUIDs,
    when: dt.datetime,
    instance_number: int = 1,
    study: StudyAnswer | None = None,
    sc_max_side: int = 1024,
) -> ResultObjects:
    """The result objects of one analysed image. ``source``: its header (no pixels needed);
    ``pixels``: the image as analysed (float in [0, 1], any resolution of the same aspect)."""
    sc = secondary_capture(source, pixels, finding, model, uids, when, instance_number, sc_max_side)
    sr = structured_report(source, finding, model, uids, when, instance_number, study)
    gsps = None
    if finding.category != Category.NO_FRACTURE and _is_grayscale(source):
        gsps = presentation_state(source, finding, model, uids, when, instance_number)
    return ResultObjects(sc, sr, gsps)


def _is_grayscale(source: Dataset) -> bool:
    return str(source.get("PhotometricInterpretation", "")) in ("MONOCHROME1", "MONOCHROME2")


def _common(when: dt.datetime, model: Algorithm, kind: str) -> dict:
    return {
        "series_description": SERIES_DESCRIPTIONS[kind],
        "manufacturer_model_name": model.name[:64],
        "software_versions": model.version,
        "device_serial_number": model.sha256[:16],
        "content_date": when.date(),
        "content_time": when.time().replace(microsecond=0),
        "series_date": when.date(),
        "series_time": when.time().replace(microsecond=0),
    }


def _source_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def secondary_capture(
    source: Dataset,
    pixels: np.ndarray,
    finding: Finding,
    model: Algorithm,
    uids: ResultUIDs,
    when: dt.datetime,
    instance_number: int,
    max_side: int,
) -> Dataset:
    picture = np.asarray(overlay_image(pixels, finding, max_side=max_side).convert("RGB"))
    orientation = _orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=picture,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=orientation or ("L", "F"),
        series_instance_uid=uids.sc_series,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **_common(when, model, "sc"),
    )
    if orientation is None:  # unknown in the source: said so (empty), not made up
        sc.PatientOrientation = ""
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    _set_laterality(sc, source)
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = (
        f"fracsight {model.version}, model {model.name}: heat map and answer burned in. {CAPTION}"
    )[:1024]
    sc.SourceImageSequence = [_source_reference(source)]
    sc.ImageComments = f"{_WORDS[finding.category]}, p={finding.probability:.2f}. {CAPTION}"
    return sc


# Body parts (Body Part Examined defined terms) that have no left and right: General Series
# Laterality must be absent for them, and present (empty when unknown) for any other.
_UNPAIRED = frozenset(
    "ABDOMEN ABDOMENPELVIS CHEST CHESTABDOMEN CHESTABDPELVIS COCCYX CSPINE HEAD HEADNECK HEART LSPINE "
    "NECK PELVIS SACRUM SKULL SPINE SSPINE TLSPINE TSPINE WHOLEBODY".split()
)


def _set_laterality(ds: Dataset, source: Dataset) -> None:
    """The new series' Laterality: the source's (series or image laterality, L or R), absent for an
    unpaired body part, else empty (unknown)."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword) or "").strip().upper()
        if value in ("L", "R"):
            ds.Laterality = value
            return
    if "Laterality" in ds:
        del ds.Laterality
    if str(source.get("BodyPartExamined") or "").strip().upper() not in _UNPAIRED:
        ds.Laterality = ""


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it is two valid direction codes, else None."""
    value = source.get("PatientOrientation")
    if not value or len(value) != 2:
        return None
    try:
        return tuple(hd.PatientOrientationValuesBiped(str(v)).value for v in value)  # type: ignore[return-value]
    except ValueError:
        return None


def _algorithm(model: Algorithm) -> hd.sr.AlgorithmIdentification:
    parameters = [f"model sha256 {model.sha256}"] + [
        f"{name} operating point {value:.6f}" for name, value in sorted(model.thresholds.items())
    ]
    return hd.sr.AlgorithmIdentification(name=model.name[:64], version=model.version, parameters=parameters)


def structured_report(
    source: Dataset,
    finding: Finding,
    model: Algorithm,
    uids: ResultUIDs,
    when: dt.datetime,
    instance_number: int,
    study: StudyAnswer | None,
) -> Dataset:
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.device,
            name="fracsight",
            manufacturer_name=MANUFACTURER,
            model_name=model.name[:64],
            serial_number=model.sha256[:16],
        ),
    )
    algorithm = _algorithm(model)
    x, y = peak_on_source(finding, source)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[x, y]], dtype=float),
        source_image=hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID),
    )
    probability = round(finding.probability, 6)
    measurements = [
        hd.sr.Measurement(name=PROBABILITY, value=probability, unit=NO_UNITS, algorithm_id=algorithm)
    ] + [
        # The threshold as the card gives it (up to 7 decimals): a rounded one could put a
        # probability on the other side of it from the category fracsight reported.
        hd.sr.Measurement(name=OPERATING_POINTS[name], value=float(value), unit=NO_UNITS)
        for name, value in sorted(model.thresholds.items())
    ]  # fmt: skip
    groups: list = [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(prefix=None, entropy_srcs=[uids.sr, "finding"]),
                identifier="fracture finding, heat-map peak",
            ),
            referenced_region=region,
            finding_type=FRACTURE,
            algorithm_id=algorithm,
            measurements=measurements,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(name=CATEGORY, value=CATEGORY_CODES[finding.category])
            ],
        )
    ]
    if study is not None:
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(prefix=None, entropy_srcs=[uids.sr, "study"]),
                    identifier=f"study: most suspicious of {study.images} analysed images",
                ),
                finding_type=FRACTURE,
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(name=PROBABILITY, value=round(study.probability, 6), unit=NO_UNITS)
                ],
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(name=STUDY_CATEGORY, value=CATEGORY_CODES[study.category])
                ],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=RADIOGRAPHY,
        imaging_measurements=groups,
        referenced_images=[_library_entry(source)],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report,
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=SCHEME,
                name="fracsight categories and operating points",
                responsible_organization="fracsight project",
            )
        ],
        **_common(when, model, "sr"),
    )
    return sr


def _library_entry(source: Dataset) -> Dataset:
    """What the SR's image library says about the source: highdicom describes a projection
    radiograph by its orientation and imager pixel spacing, which many files lack; those
    descriptors are left out then rather than made up."""
    entry = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "FrameOfReferenceUID", "Modality",
                    "PatientOrientation", "ImagerPixelSpacing"):  # fmt: skip
        if keyword in source:
            setattr(entry, keyword, source[keyword].value)
    spacing = entry.get("ImagerPixelSpacing")
    if _orientation(source) is None or not spacing or len(spacing) != 2:
        entry.Modality = "OT"  # only gates the projection descriptors; the entry's modality code
        # comes from the SOP class
    return entry


def presentation_state(
    source: Dataset,
    finding: Finding,
    model: Algorithm,
    uids: ResultUIDs,
    when: dt.datetime,
    instance_number: int,
) -> Dataset:
    x, y = peak_on_source(finding, source)
    radius = peak_radius_on_source(finding, source)
    columns, rows = int(source.Columns), int(source.Rows)
    layer = hd.pr.GraphicLayer(layer_name="FRACSIGHT", order=1, description="fracsight AI result")
    words = f"fracsight: {_WORDS[finding.category]}, p={finding.probability:.2f}. {CAPTION}"
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[source],
        graphic_layer=layer,
        graphic_objects=[
            hd.pr.GraphicObject(  # the hot region: cells at half the peak's value or more
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=np.array(outline_on_source(finding, source), dtype=float),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
            ),
            hd.pr.GraphicObject(  # the peak, one heat-map cell across
                graphic_type=hd.pr.GraphicTypeValues.CIRCLE,
                graphic_data=np.array([[x, y], [min(x + radius, columns), y]], dtype=float),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
            ),
        ],
        text_objects=[
            hd.pr.TextObject(
                text_value=words,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                bounding_box=(1.0, 1.0, max(2.0, columns * 0.9), max(2.0, rows * 0.08)),
                text_justification=hd.pr.TextJustificationValues.LEFT,
            )
        ],
    )
    inverse = str(source.get("PhotometricInterpretation")) == "MONOCHROME1"
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=uids.gsps_series,
        series_number=PR_SERIES_NUMBER,
        sop_instance_uid=uids.gsps,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model.name[:64],
        software_versions=model.version,
        device_serial_number=model.sha256[:16],
        content_label="FRACSIGHT",
        content_description=f"fracsight {_WORDS[finding.category]}"[:64],
        graphic_annotations=[annotation],
        graphic_layers=[layer],
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape=(
                hd.PresentationLUTShapeValues.INVERSE if inverse else hd.PresentationLUTShapeValues.IDENTITY
            )
        ),
        series_description=SERIES_DESCRIPTIONS["gsps"],
        series_date=when.date(),
        series_time=when.time().replace(microsecond=0),
    )
    if source.get("BodyPartExamined"):
        state.BodyPartExamined = source.BodyPartExamined
    _set_laterality(state, source)
    state.PresentationCreationDate = when.strftime("%Y%m%d")  # highdicom takes its own clock
    state.PresentationCreationTime = when.strftime("%H%M%S")
    return state
