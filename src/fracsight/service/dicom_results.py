"""Analysed radiographs -> the DICOM objects a PACS receives back (built with highdicom).

* a **Secondary Capture** per image: the image with the heat map, the category and probability
  burned in and the caption "AI result, an aid, not a diagnosis"; same patient and study, in the
  study's result series (the node passes the study as the UIDs' group), the source image
  referenced;
* a **Comprehensive SR** per study (:func:`study_report`) following TID 1500 (Measurement
  Report), as the IHE Radiology AI Results (AIR) profile uses it: the algorithm as observer
  device and in each finding's algorithm identification (model name, version, sha256 and
  operating points); per analysed image the finding "fracture of bone" with the probability, the
  category, the two operating points and the heat-map peak as a point on that image; per image
  not analysed "not analysed: <reason>"; and the study's category once. A later version names
  the one it replaces (Predecessor Documents Sequence);
* a **Grayscale Softcopy Presentation State** for images in category fracture or doubt: the
  outline of the hot region (heat-map cells at half the peak's value or more, around the peak), a
  circle at the peak and the category drawn on the original image, for the PACS viewer to switch
  on and off. For "no fracture" it would only show a peak the model gives no weight to, so
  none is made; nor for colour images, which a grayscale presentation state cannot describe.

Builders are pure: they take the source header, the analysis, the clock and the UIDs, and
return pydicom datasets; :mod:`fracsight.service.results_stage` decides when and writes them.
They never read the source directly: :func:`reference_header` first turns it into the header they
copy from (type 2 elements present, empty where the source has none; dates, times and codes that
highdicom checks made valid or empty; text decoded and its character set one pydicom can write),
since real modalities and anonymisers leave out or empty what the standard lets them. Each object
is made on its own (:func:`build_results`): one that cannot be made does not stop the others, and
its reason is returned in words without patient data.
Codes are SNOMED CT and DICOM where those exist; fracsight's categories and operating points use
the private coding scheme :data:`SCHEME` (declared in the SR).
"""

from __future__ import annotations

import copy
import datetime as dt
import re
import uuid
import warnings
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import charset as dicom_charset
from pydicom import uid as dicom_uid
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from fracsight.decide import CATEGORIES, CODING_SCHEME, Category, StudyAnswer
from fracsight.explain import CAPTION, overlay_image
from fracsight.finding import Finding

# highdicom warns about person names it finds odd and quotes them: patient data must not reach
# the log, and the names are the source's to keep as they are.
warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent", module="highdicom")

MANUFACTURER = "fracsight"
SCHEME = CODING_SCHEME  # fracsight.decide's private scheme (designators start with 99, PS3.3 8.2)
SC_SERIES_NUMBER, SR_SERIES_NUMBER, PR_SERIES_NUMBER = 9901, 9902, 9903
SERIES_DESCRIPTIONS = {
    "sc": "fracsight AI result: heat map burned in",
    "sr": "fracsight AI result: structured report",
    "gsps": "fracsight AI result: peak region overlay",
}
SC_CLASS = dicom_uid.SecondaryCaptureImageStorage
SR_CLASS = dicom_uid.ComprehensiveSRStorage
GSPS_CLASS = dicom_uid.GrayscaleSoftcopyPresentationStateStorage
KINDS = ("sc", "sr", "gsps")

FRACTURE = hd.sr.CodedConcept("125605004", "SCT", "Fracture of bone")
RADIOGRAPHY = hd.sr.CodedConcept("363680008", "SCT", "Radiographic imaging procedure")
PROBABILITY = hd.sr.CodedConcept(codes.DCM.Probability.value, "DCM", codes.DCM.Probability.meaning)
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
CATEGORY = hd.sr.CodedConcept("category", SCHEME, "fracsight category")
STUDY_CATEGORY = hd.sr.CodedConcept("study-category", SCHEME, "fracsight study category")
NOT_ANALYSED = hd.sr.CodedConcept("not-analysed", SCHEME, "Not analysed")
OPERATING_POINTS = {
    "fracture": hd.sr.CodedConcept("op-fracture", SCHEME, "Fracture operating point (high specificity)"),
    "doubt": hd.sr.CodedConcept("op-doubt", SCHEME, "Doubt operating point (high sensitivity)"),
}
# Each category's code and word, from fracsight.decide (the one owner).
CATEGORY_CODES = {c: hd.sr.CodedConcept(e.dicom_code, SCHEME, e.dicom_meaning) for c, e in CATEGORIES.items()}
_WORDS = {c: e.word for c, e in CATEGORIES.items()}


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


_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "fracsight result objects")


def derived_uid(*parts: str) -> str:
    """A UID that follows from ``parts``: 2.25 and a name-based (version 5) UUID (PS3.5 B.2).
    (pydicom's generate_uid ignores its entropy sources under the 2.25 root: its UIDs are random.)"""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(0).join(parts)).int}"


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
        """UIDs that follow from the image and its group (the node's is the study key: one series
        of each kind per study): made again after a restart they are the same, so the PACS keeps
        one copy of each object."""

        def uid(*parts: str) -> str:
            return derived_uid("fracsight", *parts)

        return cls(
            sc=uid(image_id, "sc"),
            sr=uid(image_id, "sr"),
            gsps=uid(image_id, "gsps"),
            sc_series=uid(group, "sc-series"),
            sr_series=uid(group, "sr-series"),
            gsps_series=uid(group, "gsps-series"),  # (result_series_uids says the same)
            device=uid("device", model.sha256),
        )


def result_series_uids(study_key: str) -> set[str]:
    """The Series Instance UIDs of the result series fracsight makes for a study (SC, SR, GSPS):
    how the node knows its own results when a PACS sends them back."""
    return {derived_uid("fracsight", study_key, f"{kind}-series") for kind in KINDS}


@dataclass(frozen=True)
class ResultObjects:
    """What could be made of one image: each object, or None with the reason in ``failures``
    (kind -> short text without patient data). No presentation state for "no fracture" or a colour
    image is not a failure."""

    sc: Dataset | None
    sr: Dataset | None
    gsps: Dataset | None
    failures: dict[str, str] = field(default_factory=dict)

    def made(self) -> dict[str, Dataset]:
        return {kind: ds for kind in KINDS if (ds := getattr(self, kind)) is not None}


class SourceError(ValueError):
    """The source header lacks what no result object can be made without."""


# The source's type 2 elements the result objects copy (PS3.3 C.7.1.1 Patient Module, C.7.2.1
# General Study Module, C.7.3.1 General Series Module, C.7.5.1 General Equipment Module, C.7.6.1
# General Image Module): present in every result, empty where the source has none.
TYPE2 = {
    "Patient": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"),
    "General Study": ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"),
    "General Series": ("SeriesNumber",),
    "General Equipment": ("Manufacturer",),
    "General Image": ("InstanceNumber",),
}
# Type 1 elements without which a result cannot say which image (and study) it is about.
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns")
# General Series Modality (type 1) for a source without one: the modality its SOP class implies.
MODALITY_OF_CLASS = {
    dicom_uid.ComputedRadiographyImageStorage: "CR",
    dicom_uid.DigitalXRayImageStorageForPresentation: "DX",
    dicom_uid.DigitalXRayImageStorageForProcessing: "DX",
    dicom_uid.DigitalMammographyXRayImageStorageForPresentation: "MG",
    dicom_uid.DigitalMammographyXRayImageStorageForProcessing: "MG",
    dicom_uid.DigitalIntraOralXRayImageStorageForPresentation: "IO",
    dicom_uid.DigitalIntraOralXRayImageStorageForProcessing: "IO",
    dicom_uid.XRayAngiographicImageStorage: "XA",
    dicom_uid.XRayRadiofluoroscopicImageStorage: "RF",
}
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # Float, Double Float and Pixel Data
_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
_UTF8 = "ISO_IR 192"


def reference_header(source: Dataset) -> Dataset:
    """The header the builders copy patient, study and image from: a copy of ``source`` (which is
    left as it is) without its pixels, with

    * every type 2 element of :data:`TYPE2` present, empty where the source has none or an invalid
      value highdicom would refuse (Patient Birth Date, Patient's Sex, Study Date, Study Time);
    * a General Series Modality (type 1) from the SOP class where the source has none;
    * its text decoded with the source's Specific Character Set and that character set kept where
      pydicom can write it and it holds every value, else UTF-8 (ISO_IR 192).

    Raises :class:`SourceError` without a SOP Class or Instance, Study or Series Instance UID,
    Rows or Columns."""
    missing = [k for k in REQUIRED if not source.get(k)]
    if missing:
        raise SourceError(f"the source has no {', '.join(missing)}")
    ref = Dataset()
    for tag in source.keys():  # raw elements, copied undecoded: the source is not touched
        if tag not in _PIXEL_TAGS:
            ref[tag] = copy.deepcopy(source.get_item(tag))
    for _ in ref.iterall():  # every raw element decoded with the source's set before it changes
        pass  # (Dataset.decode would garble person names set as text rather than read from bytes)
    ref.SpecificCharacterSet = _character_set(ref)
    if ref.SpecificCharacterSet is None:
        del ref.SpecificCharacterSet
    for keywords in TYPE2.values():
        for keyword in keywords:
            if keyword not in ref:
                setattr(ref, keyword, None)
    for keyword, kind in (("PatientBirthDate", DA), ("StudyDate", DA), ("StudyTime", TM)):
        if not _valid(ref[keyword].value, kind):
            ref[keyword].value = None
    if str(ref.PatientSex or "") not in ("M", "F", "O", ""):
        ref.PatientSex = None
    if not str(ref.get("Modality") or "").strip():
        ref.Modality = MODALITY_OF_CLASS.get(str(ref.SOPClassUID), "OT")
    return ref


def _valid(value, kind) -> bool:
    if value in (None, ""):
        return True
    if isinstance(value, MultiValue | list):
        return False
    try:
        kind(value)
    except (ValueError, TypeError):
        return False
    return True


def _character_set(ref: Dataset) -> str | list[str] | None:
    """The Specific Character Set the results are written in: the source's where pydicom knows
    every term and every text value of the header can be written in it, else UTF-8; None (the
    default repertoire) where the source has none and its text is ASCII."""
    value = ref.get("SpecificCharacterSet")
    values = value if isinstance(value, MultiValue | list) else [value or ""]
    terms = [str(v).strip() for v in values]
    texts = _texts(ref)
    if terms == [""]:
        return None if all(t.isascii() for t in texts) else _UTF8
    if not all(t in dicom_charset.python_encoding for t in terms):
        return _UTF8
    encodings = [dicom_charset.python_encoding[t] for t in terms]
    for text in texts:
        for character in set(text) - set(_ASCII):
            if not any(_encodes(character, e) for e in encodings):
                return _UTF8
    return terms[0] if len(terms) == 1 else terms


_ASCII = "".join(chr(i) for i in range(128))


def _encodes(character: str, encoding: str) -> bool:
    try:
        character.encode(encoding)
    except (UnicodeError, LookupError):
        return False
    return True


def _texts(ref: Dataset) -> list[str]:
    out = []
    for element in ref.iterall():
        if element.VR in _TEXT_VRS and element.value not in (None, ""):
            values = element.value if isinstance(element.value, MultiValue | list) else [element.value]
            out.extend(str(v) for v in values)
    return out


def failure_reason(exc: BaseException) -> str:
    """A short account of why an object could not be made, without patient data: the exception's
    type and the DICOM keywords it names (never its message, which can quote header values)."""
    name = type(exc).__name__
    keywords: list[str] = []
    if isinstance(exc, AttributeError) and getattr(exc, "name", None):
        keywords.append(str(exc.name))
    words = re.findall(r"\b[A-Z][A-Za-z0-9]{2,63}\b", str(exc))
    keywords += [w for w in words if tag_for_keyword(w) is not None and w not in keywords]
    if isinstance(exc, SourceError):
        return f"{name}: {exc}"[:200]
    return (f"{name} ({', '.join(keywords[:4])})" if keywords else name)[:200]


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
    kinds: tuple[str, ...] = KINDS,
    windowed: bool = False,
) -> ResultObjects:
    """The result objects of one analysed image, each made on its own: one that fails leaves the
    others and its reason in :attr:`ResultObjects.failures`. ``source``: its header (no pixels
    needed, left unchanged); ``pixels``: the image as analysed (float in [0, 1], any resolution of
    the same aspect); ``kinds``: which to make (the node makes the SR per study, with
    :func:`study_report`, and asks for SC and GSPS only); ``windowed``: the pixels came through
    the image's own VOI LUT or window (:func:`fracsight.io.dicom_display.through_own_voi`), so the
    SC shows them as they are, with the grey levels of the presentation state."""
    try:
        ref = reference_header(source)
    except Exception as exc:  # noqa: BLE001 - reported as every object's failure
        reason = failure_reason(exc)
        return ResultObjects(None, None, None, {kind: reason for kind in KINDS})
    makers = {
        "sc": lambda: secondary_capture(
            ref, pixels, finding, model, uids, when, instance_number, sc_max_side, windowed
        ),
        "sr": lambda: structured_report(ref, finding, model, uids, when, instance_number, study),
    }
    if finding.category in (Category.FRACTURE, Category.DOUBT) and _is_grayscale(ref):
        makers["gsps"] = lambda: presentation_state(ref, finding, model, uids, when, instance_number)
    made: dict[str, Dataset | None] = dict.fromkeys(KINDS)
    failures: dict[str, str] = {}
    for kind, make in makers.items():
        if kind not in kinds:
            continue
        try:
            made[kind] = make()
        except Exception as exc:  # noqa: BLE001 - one object failing must not cost the others
            failures[kind] = failure_reason(exc)
    return ResultObjects(made["sc"], made["sr"], made["gsps"], failures)


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


def _set_character_set(ds: Dataset, ref: Dataset) -> None:
    """The reference header's character set (:func:`reference_header`) on a result object: the
    text highdicom copied from it is decoded and is encoded in that set when written."""
    if "SpecificCharacterSet" in ref:
        ds.SpecificCharacterSet = copy.deepcopy(ref.SpecificCharacterSet)
    elif "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet


def secondary_capture(
    source: Dataset,
    pixels: np.ndarray,
    finding: Finding,
    model: Algorithm,
    uids: ResultUIDs,
    when: dt.datetime,
    instance_number: int,
    max_side: int,
    windowed: bool = False,
) -> Dataset:
    # Pixels through the source's own window or VOI LUT have the grey levels its viewer and the
    # presentation state show: the SC keeps them. Otherwise fracsight's contrast stretch (the
    # stored range of a 16-bit file holding 12-bit data would show almost black).
    shown = overlay_image(pixels, finding, max_side=max_side, stretch=not windowed)
    picture = np.asarray(shown.convert("RGB"))
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
        specific_character_set=None,  # set below: highdicom knows fewer sets than pydicom writes
        **_common(when, model, "sc"),
    )
    _set_character_set(sc, source)
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
    sc.ImageComments = f"{_answer_words(finding)}. {CAPTION}"
    return sc


def _answer_words(finding: Finding) -> str:
    """The answer as the SC's comments and the presentation state's text say it: the category and
    probability, or for an image out of scope that it was not scored and why."""
    if finding.category == Category.OUT_OF_SCOPE:
        reason = finding.scope.reason if finding.scope is not None and finding.scope.reason else ""
        return f"{_WORDS[finding.category]}, not scored" + (f": {reason}" if reason else "")
    return f"{_WORDS[finding.category]}, p={finding.probability:.2f}"


# Body parts (Body Part Examined defined terms) that have no left and right: General Series
# Laterality must be absent for them, and present (empty when unknown) for any other.
_UNPAIRED = frozenset(
    "ABDOMEN ABDOMENPELVIS CHEST CHESTABDOMEN CHESTABDPELVIS COCCYX CSPINE HEAD HEADNECK HEART LSPINE "
    "NECK PELVIS SACRUM SKULL SPINE SSPINE TLSPINE TSPINE WHOLEBODY".split()
)


def _set_laterality(ds: Dataset, source: Dataset) -> None:
    """The new series' Laterality: absent for an unpaired body part (even where the source gives an
    image laterality: a chest radiograph marked R), else the source's (series or image laterality,
    L or R), else empty (unknown)."""
    if "Laterality" in ds:
        del ds.Laterality
    if str(source.get("BodyPartExamined") or "").strip().upper() in _UNPAIRED:
        return
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword) or "").strip().upper()
        if value in ("L", "R"):
            ds.Laterality = value
            return
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


@dataclass(frozen=True)
class StudyImage:
    """One image of a study as its structured report tells it: analysed (``finding``) or not
    (``reason``, words without patient data). ``source``: its header, None where unreadable."""

    source: Dataset | None
    sop_instance_uid: str
    finding: Finding | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ReportUIDs:
    """The UIDs of one version of a study's structured report."""

    sr: str
    series: str
    device: str
    predecessor: str | None = None  # the version it replaces

    @classmethod
    def derived(
        cls, study_key: str, content: str, model: Algorithm, predecessor: str | None = None
    ) -> ReportUIDs:
        """UIDs that follow from the study and what the report covers (``content``: its images and
        their states): the same series for every version (the study's report series), a new
        instance only for new content, so a report made again says nothing twice."""
        return cls(
            sr=derived_uid("fracsight", study_key, "sr", content),
            series=derived_uid("fracsight", study_key, "sr-series"),
            device=derived_uid("fracsight", "device", model.sha256),
            predecessor=predecessor,
        )


def structured_report(
    source: Dataset,
    finding: Finding,
    model: Algorithm,
    uids: ResultUIDs,
    when: dt.datetime,
    instance_number: int,
    study: StudyAnswer | None,
) -> Dataset:
    """The report of a study of one analysed image (:func:`study_report`)."""
    return study_report(
        [StudyImage(source, str(source.SOPInstanceUID), finding)],
        model,
        ReportUIDs(uids.sr, uids.sr_series, uids.device),
        when,
        instance_number,
        study,
    )


def study_report(
    images: list[StudyImage],
    model: Algorithm,
    uids: ReportUIDs,
    when: dt.datetime,
    version: int,
    study: StudyAnswer | None,
) -> Dataset:
    """A study's Comprehensive SR (TID 1500): one finding group per analysed image (probability,
    category, operating points, the heat-map peak as a point on it), one group per image not
    analysed saying "not analysed: <reason>", and the study's answer once. ``version`` is its
    Instance Number; ``uids.predecessor`` the report it replaces (Predecessor Documents
    Sequence). Patient and study are copied from the first image whose header can be used
    (:func:`reference_header`); the sources are the evidence."""
    refs: dict[str, Dataset] = {}
    first_error: Exception | None = None
    for image in images:
        if image.source is None:
            continue
        try:
            refs[image.sop_instance_uid] = reference_header(image.source)
        except Exception as exc:  # noqa: BLE001 - told as not analysed, or raised if none serves
            first_error = first_error or exc
    analysed = [i for i in images if i.finding is not None and i.sop_instance_uid in refs]
    if not refs:
        raise first_error or SourceError("no image of the study has a usable header")
    main = refs[analysed[0].sop_instance_uid] if analysed else next(iter(refs.values()))
    study_uid = str(main.StudyInstanceUID)
    evidence = [r for r in refs.values() if str(r.StudyInstanceUID) == study_uid]
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
    groups: list = []
    for number, image in enumerate(images, start=1):
        if image.finding is not None and image.sop_instance_uid in refs:
            source = refs[image.sop_instance_uid]
            groups.append(_finding_group(source, image.finding, model, algorithm, number))
        else:
            reason = image.reason or "its analysis cannot be reported"
            groups.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=derived_uid(image.sop_instance_uid, "not analysed"),
                        identifier=f"image {number} ({image.sop_instance_uid}): not analysed: {reason}",
                    ),
                    qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=CATEGORY, value=NOT_ANALYSED)],
                )
            )
    if study is not None:
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid(uids.sr, "study"),
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
        referenced_images=[_library_entry(refs[i.sop_instance_uid]) for i in analysed] or None,
    )
    previous = None
    if uids.predecessor:
        earlier = Dataset()
        earlier.StudyInstanceUID = study_uid
        earlier.SeriesInstanceUID = uids.series
        earlier.SOPClassUID = SR_CLASS
        earlier.SOPInstanceUID = uids.predecessor
        previous = [earlier]
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uids.series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr,
        instance_number=version,
        manufacturer=MANUFACTURER,
        is_complete=True,
        previous_versions=previous,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=SCHEME,
                name="fracsight categories and operating points",
                responsible_organization="fracsight project",
            )
        ],
        specific_character_set=None,
        **_common(when, model, "sr"),
    )
    _set_character_set(sr, main)
    return sr


def _finding_group(
    source: Dataset, finding: Finding, model: Algorithm, algorithm: hd.sr.AlgorithmIdentification, number: int
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """One analysed image's finding: the probability, the operating points and the category, at
    the heat-map peak as a point on the image."""
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
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(str(source.SOPInstanceUID), "finding"),
            identifier=f"image {number}: fracture finding, heat-map peak",
        ),
        referenced_region=region,
        finding_type=FRACTURE,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=CATEGORY, value=CATEGORY_CODES[finding.category])
        ],
    )


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
    words = f"fracsight: {_answer_words(finding)}. {CAPTION}"
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
        specific_character_set=None,
        # Placeholders, replaced below by the source's own: given, highdicom reads no LUT itself.
        modality_lut_transformation=hd.ModalityLUTTransformation(
            rescale_intercept=0.0, rescale_slope=1.0, rescale_type=hd.RescaleTypeValues.US
        ),
        voi_lut_transformations=[hd.pr.SoftcopyVOILUTTransformation(window_center=0.0, window_width=1.0)],
    )
    _set_character_set(state, source)
    _copy_modality_lut(state, source)
    voi = _softcopy_voi(source)
    if voi is None:
        del state.SoftcopyVOILUTSequence
    else:
        state.SoftcopyVOILUTSequence = [voi]
    if source.get("BodyPartExamined"):
        state.BodyPartExamined = source.BodyPartExamined
    _set_laterality(state, source)
    state.PresentationCreationDate = when.strftime("%Y%m%d")  # highdicom takes its own clock
    state.PresentationCreationTime = when.strftime("%H%M%S")
    return state


_MODALITY_LUT_KEYWORDS = ("RescaleIntercept", "RescaleSlope", "RescaleType", "ModalityLUTSequence")
_LUT_KEYWORDS = ("LUTDescriptor", "LUTExplanation", "LUTData")


def _copy_modality_lut(state: Dataset, source: Dataset) -> None:
    """The source's Modality LUT in the presentation state's Modality LUT Module (PS3.3 C.11.1):
    its Modality LUT Sequence (first item, descriptor and data as they are) or else its rescale,
    Rescale Type "US" (unspecified) where the source gives none; nothing where it has neither."""
    for keyword in _MODALITY_LUT_KEYWORDS:
        if keyword in state:
            delattr(state, keyword)
    sequence = source.get("ModalityLUTSequence")
    linear = _linear_modality_lut(source) if sequence else None
    if linear is not None:  # the same mapping as a rescale: exact, and no LUT bit depth to get wrong
        state.RescaleIntercept, state.RescaleSlope = linear
        state.RescaleType = str(sequence[0].get("ModalityLUTType") or "US")
    elif sequence:
        item = Dataset()
        for keyword in (*_LUT_KEYWORDS, "ModalityLUTType"):
            if keyword in sequence[0]:
                item[keyword] = copy.deepcopy(sequence[0][keyword])
        descriptor = item.get("LUTDescriptor")
        if descriptor and len(descriptor) == 3 and 8 < int(descriptor[2]) < 16:
            # 8 or 16 bits an entry (PS3.3 C.11.1.1.1): the same output values, held in 16 bits
            item.LUTDescriptor = [int(descriptor[0]), int(descriptor[1]), 16]
        if not item.get("ModalityLUTType"):
            item.ModalityLUTType = "US"
        state.ModalityLUTSequence = [item]
    elif source.get("RescaleSlope") not in (None, "") and source.get("RescaleIntercept") not in (None, ""):
        state.RescaleIntercept = source.RescaleIntercept
        state.RescaleSlope = source.RescaleSlope
        state.RescaleType = str(source.get("RescaleType") or "US")


def _first(value):
    if isinstance(value, MultiValue | list):
        return value[0] if len(value) else None
    return value


def _softcopy_voi(source: Dataset) -> Dataset | None:
    """The item of the Softcopy VOI LUT Sequence (PS3.3 C.11.8) that shows the source as a viewer
    does by default: its first VOI LUT (descriptor, bit depth and data copied as they are) and its
    first window with its explanation and VOI LUT Function; a presentation state holds one of
    each. None where the source has neither."""
    item = Dataset()
    sequence = source.get("VOILUTSequence")
    if sequence and all(k in sequence[0] for k in ("LUTDescriptor", "LUTData")):
        lut = Dataset()
        for keyword in _LUT_KEYWORDS:
            if keyword in sequence[0]:
                lut[keyword] = copy.deepcopy(sequence[0][keyword])
        item.VOILUTSequence = [_as_8_or_16_bits(lut)]
    try:
        centre = float(_first(source.get("WindowCenter")))
        width = float(_first(source.get("WindowWidth")))
    except (TypeError, ValueError):
        centre = width = None
    if centre is not None and width is not None and width >= 1:
        item.WindowCenter = centre
        item.WindowWidth = width
        explanation = _first(source.get("WindowCenterWidthExplanation"))
        if explanation:
            item.WindowCenterWidthExplanation = explanation
        function = str(source.get("VOILUTFunction") or "").strip().upper()
        if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            item.VOILUTFunction = function
    if not len(item) and source.get("ModalityLUTSequence"):
        # No VOI: a viewer shows the Modality LUT's output range, but a presentation state without
        # a VOI stretches the range the LUT Descriptor's bit depth claims (16 bits for 10-bit data
        # in many files: almost one grey). The window the viewer shows is written instead.
        span = _modality_lut_span(source)
        if span is not None:
            item.WindowCenter = (span[0] + span[1] + 1) / 2
            item.WindowWidth = span[1] - span[0] + 1
            item.WindowCenterWidthExplanation = "range of the Modality LUT"
    return item if len(item) else None


def _as_8_or_16_bits(lut: Dataset) -> Dataset:
    """A VOI LUT as a presentation state may hold it (PS3.3 C.11.8: 8 or 16 bits an entry): one of
    9 to 15 bits (12 is common) becomes 16 bits, each entry scaled by (2**16 - 1) / (2**bits - 1),
    so the display shows the same grey levels; 8 and 16 bits are copied as they are. (Taking the
    descriptor to 16 bits without scaling the data renders the image almost black.)"""
    try:
        bits = int(lut.LUTDescriptor[2])
        if not 8 < bits < 16:
            return lut
        data = lut.LUTData
        if isinstance(data, bytes):
            values = np.frombuffer(data, dtype="<u2").astype(np.int64)
        else:
            values = np.asarray(data if isinstance(data, MultiValue | list) else [data], dtype=np.int64)
    except (AttributeError, IndexError, TypeError, ValueError):
        return lut
    scaled = np.clip(np.rint(values * ((2**16 - 1) / (2**bits - 1))), 0, 2**16 - 1).astype(np.uint16)
    out = copy.deepcopy(lut)
    out.LUTDescriptor = [int(v) for v in lut.LUTDescriptor[:2]] + [16]
    del out.LUTData
    out.add_new("LUTData", "OW", scaled.astype("<u2").tobytes())
    return out


def _modality_lut_table(source: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(stored values, outputs) of the source's Modality LUT Sequence (first item); None if it
    cannot be read. LUT Data as US values or OW words (8-bit entries one or two to a word)."""
    try:
        item = source.ModalityLUTSequence[0]
        entries, first, bits = (int(v) for v in item.LUTDescriptor[:3])
        entries = entries or 65536
        data = item.LUTData
        if isinstance(data, bytes):
            packed = bits <= 8 and len(data) < 2 * entries
            values = np.frombuffer(data, dtype="u1" if packed else "<u2")
        else:
            values = np.asarray(data if isinstance(data, MultiValue | list) else [data])
        values = values[:entries].astype(np.float64)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    if len(values) != entries:
        return None
    return np.arange(first, first + entries), values


def _linear_modality_lut(source: Dataset) -> tuple[str, str] | None:
    """(Rescale Intercept, Rescale Slope) equal to the source's Modality LUT Sequence where that
    LUT is a straight line over every stored value the image can hold (from 0, unsigned)."""
    table = _modality_lut_table(source)
    bits = int(source.get("BitsStored") or 16)
    if table is None or len(table[0]) < 2 or table[0][0] != 0 or len(table[0]) < 2**bits:
        return None
    stored, out = table
    slope = (out[-1] - out[0]) / (stored[-1] - stored[0])
    if slope == 0 or not np.allclose(out, out[0] + slope * (stored - stored[0]), atol=1e-6):
        return None
    return f"{out[0] - slope * stored[0]:g}", f"{slope:g}"


def _modality_lut_span(source: Dataset) -> tuple[float, float] | None:
    """The lowest and highest output of the source's Modality LUT Sequence; None if unreadable."""
    table = _modality_lut_table(source)
    return None if table is None else (float(table[1].min()), float(table[1].max()))
