"""Result making against ordinary header variation: every DICOM of ``../shared/data/dicom`` that
fracsight analyses, and copies of their headers with one change each (a type 2 or optional element
of the patient, study, series or image modules removed or emptied, invalid dates and codes,
character sets, multi-valued windows, VOI LUT and Modality LUT forms), must yield its Secondary
Capture and SR (and, for a grayscale image, its presentation state), each written, read back with
pydicom, in the source's study with the source's patient; dciodvfy (where installed) finds no new
error on a sample of them, errors inherited from a source listed apart. Each file as it is gets
the shipped model's own finding on its own pixels; the changed copies a synthetic finding (a peak
in the heat map, fracture or doubt, so a presentation state is made too) on a small image.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import random
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom")

import pydicom  # noqa: E402
from dicom_checks import (  # noqa: E402
    DCIODVFY,
    DCMP2PGM,
    dciodvfy_errors,
    render,
    sc_and_rendering_grey,
    split_inherited,
)
from pydicom.dataset import Dataset  # noqa: E402

from fracsight.finding import Finding  # noqa: E402
from fracsight.io import RefusedInput  # noqa: E402
from fracsight.io.dicom_display import through_own_voi  # noqa: E402
from fracsight.model_card import Category  # noqa: E402
from fracsight.preprocess import Letterbox, NotAnalysable  # noqa: E402
from fracsight.service.dicom_results import (  # noqa: E402
    GSPS_CLASS,
    SC_CLASS,
    SR_CLASS,
    TYPE2,
    Algorithm,
    ResultUIDs,
    StudyAnswer,
    build_results,
    reference_header,
)

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
# Elements of the patient, study, series and image modules a modality or anonymiser may leave out
# or empty (type 2, 2C and 3), and those the image pixel and LUT modules may hold or not.
OPTIONAL = [
    *(k for keywords in TYPE2.values() for k in keywords),
    "StudyDescription", "Modality", "SeriesDescription", "Laterality", "BodyPartExamined", "SeriesDate",
    "SeriesTime", "InstitutionName", "ManufacturerModelName", "PatientOrientation", "ImageLaterality",
    "ContentDate", "ContentTime", "AcquisitionDate", "ImageType", "ViewPosition", "ImagerPixelSpacing",
    "PixelSpacing", "FrameOfReferenceUID", "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "SpecificCharacterSet", "PatientAge",
    "OtherPatientIDs", "ReferringPhysicianName", "BurnedInAnnotation", "LossyImageCompression",
]  # fmt: skip
NAMES = {  # character set -> a patient name only it (or UTF-8) can hold
    "ISO_IR 100": "Müller^Jürgen",
    "ISO_IR 144": "Иванов^Иван",
    "ISO_IR 192": "山田^太郎",
    "GB18030": "王^小明",
    ("", "ISO 2022 IR 87"): "山田^太郎",
    ("ISO 2022 IR 6", "ISO 2022 IR 100"): "Åström^Åsa",
    "ISO_IR 999": "UNKNOWN^SET",  # not a defined term: pydicom reads it as the default, with a warning
}


def _remove(keyword: str) -> Callable[[Dataset], None]:
    return lambda ds: ds.pop(keyword, None)


def _empty(keyword: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        if keyword in ds:
            ds[keyword].value = None
        else:
            setattr(ds, keyword, None)

    return change


def _set(**values) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return change


def _voi_lut(bits: int, vr: str = "US", entries: int = 256, first: int = 0, window: bool = False):
    def change(ds: Dataset) -> None:
        item = Dataset()
        item.LUTDescriptor = [entries, first, bits]
        data = np.linspace(0, 2**bits - 1, entries).astype(np.uint16)
        if vr == "OW":
            item.add_new("LUTData", "OW", data.tobytes())
        else:
            item.add_new("LUTData", "US", [int(v) for v in data])
        item.LUTExplanation = f"{bits}-bit {vr}"
        ds.VOILUTSequence = [item, copy.deepcopy(item)]  # two: the first is the default
        if not window:
            for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
                ds.pop(keyword, None)

    return change


def _modality_lut(bits: int, vr: str = "OW") -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        item = Dataset()
        entries = 1024
        item.LUTDescriptor = [entries, 0, bits]
        data = np.arange(entries, dtype=np.uint16)
        item.add_new("LUTData", vr, data.tobytes() if vr == "OW" else [int(v) for v in data])
        item.ModalityLUTType = "US"
        ds.ModalityLUTSequence = [item]
        for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
            ds.pop(keyword, None)

    return change


def mutations() -> dict[str, Callable[[Dataset], None]]:
    out: dict[str, Callable[[Dataset], None]] = {"as received": lambda ds: None}
    for keyword in OPTIONAL:
        out[f"no {keyword}"] = _remove(keyword)
        out[f"empty {keyword}"] = _empty(keyword)
    out.update({
        "invalid PatientSex": _set(PatientSex="X"),
        "invalid PatientBirthDate": _set(PatientBirthDate="unknown"),
        "invalid StudyDate": _set(StudyDate="2020-13-45"),
        "invalid StudyTime": _set(StudyTime="25:61"),
        "StudyTime with fraction": _set(StudyTime="101010.123456"),
        "invalid PatientOrientation": _set(PatientOrientation=["Q", "Z"]),
        "three PatientOrientation values": _set(PatientOrientation=["L", "F", "A"]),
        "invalid Laterality": _set(Laterality="B"),
        "long AccessionNumber": _set(AccessionNumber="d14a028c2a3a2bc9476102bb288234c4"),
        "multi-valued windows": _set(WindowCenter=[500, 800], WindowWidth=[1000, 2000],
                                     WindowCenterWidthExplanation="ONE"),
        "window of width 0": _set(WindowCenter=100, WindowWidth=0),
        "window with SIGMOID": _set(WindowCenter=500, WindowWidth=1000, VOILUTFunction="SIGMOID"),
        "VOI LUT 12 bits US": _voi_lut(12),
        "VOI LUT 16 bits OW": _voi_lut(16, "OW"),
        "VOI LUT 8 bits": _voi_lut(8),
        "VOI LUT 10 bits from 100, 4096 entries": _voi_lut(10, entries=4096, first=100),
        "VOI LUT and window": _voi_lut(12, window=True),
        "Modality LUT 16 bits OW": _modality_lut(16),
        "Modality LUT 10 bits US": _modality_lut(10, "US"),
        "rescale without type": lambda ds: (_set(RescaleSlope=2, RescaleIntercept=-100)(ds),
                                            ds.pop("RescaleType", None)),
        "rescale type OD": _set(RescaleSlope=0.001, RescaleIntercept=0, RescaleType="OD"),
    })  # fmt: skip
    for charset, name in NAMES.items():
        value = list(charset) if isinstance(charset, tuple) else charset
        out[f"character set {charset}"] = _set(SpecificCharacterSet=value, PatientName=name)
    return out


MUTATIONS = mutations()
# Every change on these (a DX without character set, a CR in ISO_IR 100, a Secondary Capture with a
# VOI LUT); on the other analysed files, the file as it is and a seeded sample of changes.
EVERY_CHANGE = ("hd_dx_image.dcm", "pljd_RG1_JLSN.dcm", "pdd_vlut_04.dcm")
SAMPLED = 6


@pytest.fixture(scope="module")
def analysed(dicom_dir: Path, default_analyser) -> dict[str, Dataset]:
    """Header of every file of the shared DICOM folder that fracsight analyses (as the node does:
    refused ones get no results), with the model's finding and the pixels it analysed."""
    out = {}
    for path in sorted(dicom_dir.iterdir()):
        try:
            radiograph = default_analyser.read(path)
            finding = default_analyser.analyse(radiograph)
        except (RefusedInput, NotAnalysable):
            continue
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        MODEL_SAYS[path.name] = (finding, radiograph.pixels)
        out[path.name] = header
    assert {*EVERY_CHANGE, "fod_CR-ModalitySequenceLUT.dcm", "fod_CR-MONO1-10-chest"} <= set(out)
    return out


MODEL_SAYS: dict[str, tuple[Finding, np.ndarray]] = {}


def _finding(source: Dataset, model, category: Category = Category.FRACTURE) -> Finding:
    rows, columns = int(source.Rows), int(source.Columns)
    scale = 384 / max(rows, columns)
    box = Letterbox(width=columns, height=rows, scale=scale, pad_x=int((384 - columns * scale) // 2),
                    pad_y=int((384 - rows * scale) // 2), size=384)  # fmt: skip
    heat = np.zeros((24, 24), np.float32)
    heat[11, 12], heat[12, 12], heat[11, 13] = 1.0, 0.7, 0.6
    return Finding(probability=0.94, category=category, heatmap=heat, letterbox=box, model=model)


def _cases(analysed: dict[str, Dataset]) -> list[tuple[str, str]]:
    pick = random.Random(26)
    cases = []
    for name in analysed:
        every = name in EVERY_CHANGE
        changes = list(MUTATIONS) if every else ["as received", *pick.sample(list(MUTATIONS), SAMPLED)]
        cases += [(name, change) for change in changes]
    return cases


def _read_back(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_every_analysed_image_and_header_variation_yields_its_results(
    analysed: dict[str, Dataset], default_analyser, tmp_path: Path
) -> None:
    model = Algorithm.of(default_analyser.identity, "test")
    pixels = np.random.default_rng(1).random((48, 40), dtype=np.float32)
    lost, sample, checked = [], [], 0
    for number, (name, change) in enumerate(_cases(analysed)):
        source = copy.deepcopy(analysed[name])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the invalid values set on purpose
            MUTATIONS[change](source)
            before = _read_back(source) if number % 2 == 0 else None
            category = Category.DOUBT if number % 3 == 0 else Category.FRACTURE
            finding = _finding(source, default_analyser.identity, category)
            shown = pixels
            if change == "as received":
                finding, shown = MODEL_SAYS[name]
                category = finding.category
            uids = ResultUIDs.derived(f"{name}{change}", "g", model)
            objects = build_results(source, shown, finding, model, uids, WHEN,
                                    study=StudyAnswer(category, 0.94, 2), sc_max_side=96)  # fmt: skip
            if before is not None:  # the caller's header is left as it was
                assert _read_back(source) == before, (name, change)
        grey = str(source.get("PhotometricInterpretation")) in ("MONOCHROME1", "MONOCHROME2")
        outlined = grey and category in (Category.FRACTURE, Category.DOUBT)  # a presentation state
        wanted = {"sc", "sr", "gsps"} if outlined else {"sc", "sr"}
        if objects.failures or set(objects.made()) != wanted:
            lost.append((name, change, objects.failures))
            continue
        ref = reference_header(source)
        for kind, ds in objects.made().items():
            back = _read_back(ds)
            checked += 1
            assert back.SOPClassUID == {"sc": SC_CLASS, "sr": SR_CLASS, "gsps": GSPS_CLASS}[kind]
            assert back.StudyInstanceUID == source.StudyInstanceUID, (name, change, kind)
            for keyword in TYPE2["Patient"] + TYPE2["General Study"]:
                assert keyword in back, (name, change, kind, keyword)  # type 2: present, maybe empty
                kept = str(back[keyword].value or "") == str(ref[keyword].value or "")
                assert kept, (name, change, kind, keyword)
            if change.startswith("character set"):
                assert str(back.PatientName) == str(source.PatientName), (name, change, kind)
        if number % 17 == 0 or change.startswith(("VOI LUT", "Modality LUT", "character set", "multi")):
            sample.append((name, change, source, objects))
    assert lost == [], f"{len(lost)} of {len(_cases(analysed))} lost their results: {lost[:10]}"
    assert checked > 300
    if DCIODVFY:
        _validate(sample, tmp_path)


def _validate(sample: list, folder: Path) -> None:
    """No error of dciodvfy's on a result that its source (as changed) does not have already."""
    new_errors, inherited = [], []
    for number, (name, change, source, objects) in enumerate(sample):
        source_file = folder / f"source-{number}.dcm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = copy.deepcopy(source)
            header.file_meta = getattr(source, "file_meta", pydicom.dataset.FileMetaDataset())
            header.save_as(source_file)
        from_source = dciodvfy_errors(source_file)
        for kind, ds in objects.made().items():
            path = folder / f"{number}-{kind}.dcm"
            ds.save_as(path, enforce_file_format=True)
            new, old = split_inherited(dciodvfy_errors(path), from_source)
            if _nonconformant_modality_lut(source):  # 8 or 16 bits only: held in 16, values kept
                old += [line for line in new if "number of bits = 16 but maximum LUT Data value" in line]
                new = [line for line in new if line not in old]
            new_errors += [(name, change, kind, line) for line in new]
            inherited += [(name, change, kind, line) for line in old]
    assert new_errors == [], "\n".join(sorted({f"{c} {k}: {line}" for _, c, k, line in new_errors}))
    print(f"dciodvfy: {len(sample)} sources checked; errors inherited from them: {len(inherited)}")


def _nonconformant_modality_lut(source: Dataset) -> bool:
    """A Modality LUT of other than 8 or 16 bits an entry (PS3.3 C.11.1.1.1): the result holds it
    in 16 bits with its values unchanged, which dciodvfy flags as data too small for 16 bits."""
    sequence = source.get("ModalityLUTSequence")
    return bool(sequence) and int(sequence[0].LUTDescriptor[2]) not in (8, 16)


def test_errors_inherited_from_sources_are_only_those_of_the_source(
    dicom_dir: Path, default_analyser, tmp_path: Path
) -> None:
    """Errors dciodvfy reports on results of the shared files that come from the sources themselves
    (their invalid UIDs, over-long identifiers, LUTs copied as they are), listed apart."""
    if not DCIODVFY:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    model = Algorithm.of(default_analyser.identity, "test")
    pixels = np.random.default_rng(2).random((48, 40), dtype=np.float32)
    inherited: dict[str, list[str]] = {}
    for name in ("fod_CR-ModalitySequenceLUT.dcm", "pljd_966_fixed.dcm", "fod_CR-MONO1-10-chest"):
        source = pydicom.dcmread(dicom_dir / name, stop_before_pixels=True, force=True)
        objects = build_results(source, pixels, _finding(source, default_analyser.identity), model,
                                ResultUIDs.derived(name, "g", model), WHEN)  # fmt: skip
        assert not objects.failures, objects.failures
        from_source = dciodvfy_errors(dicom_dir / name)
        for kind, ds in objects.made().items():
            ds.save_as(tmp_path / f"{name}-{kind}.dcm", enforce_file_format=True)
            new, old = split_inherited(dciodvfy_errors(tmp_path / f"{name}-{kind}.dcm"), from_source)
            assert new == [], (name, kind, new)
            inherited[f"{name} {kind}"] = old
    # the invalid SOP Instance UID "999.999.01.23.45.6789", referenced by every result
    assert any("999.999.01.23.45.6789" in line for line in inherited["fod_CR-ModalitySequenceLUT.dcm sr"])
    # the source's Modality LUT (16-bit descriptor, 10-bit data), copied faithfully
    assert any("Modality LUT" in line for line in inherited["fod_CR-ModalitySequenceLUT.dcm gsps"])
    # type 2 elements the source lacks are present (empty) in every result: nothing missing
    assert not any("Missing attribute" in line for lines in inherited.values() for line in lines)


def _twelve_bit_voi_lut(ds: Dataset) -> None:
    """The VOI LUT as 12 bits an entry (LUT Data as US), the same curve."""
    item = ds.VOILUTSequence[0]
    item.LUTDescriptor = [int(item.LUTDescriptor[0]), int(item.LUTDescriptor[1]), 12]
    item["LUTData"].value = [int(v) >> 4 for v in item.LUTData]


@pytest.mark.skipif(not DCMP2PGM, reason="DCMTK's dcmp2pgm is not installed")
@pytest.mark.parametrize(
    "name, change",
    [("pdd_vlut_04.dcm", None), ("pdd_vlut_04.dcm", _twelve_bit_voi_lut), ("pljd_RG2_JPLL.dcm", None),
     ("pljd_RG3_J2KR.dcm", None), ("hd_dx_image.dcm", None)],
    ids=["VOI LUT 16 bits", "VOI LUT 12 bits", "window, CR", "window, JPEG 2000", "MONOCHROME1 DX"],
)  # fmt: skip
def test_the_presentation_state_and_the_sc_show_the_image_s_own_grey_levels(
    analysed: dict[str, Dataset], dicom_dir: Path, default_analyser, tmp_path: Path, name: str, change
) -> None:
    """Rendered by DCMTK through the presentation state, the image keeps the grey levels it has
    without it (a VOI LUT copied faithfully, not made almost black), and the SC shows the same
    grey levels outside the heat map (mean within 10 %); the outline is a doubt's, whatever the
    model says of the image."""
    source = pydicom.dcmread(dicom_dir / name)
    if change is not None:
        change(source)
    if source.file_meta.TransferSyntaxUID.is_compressed:  # dcmp2pgm decodes few compressed forms
        source.decompress()
    shown = tmp_path / "source.dcm"
    source.save_as(shown, enforce_file_format=True)
    radiograph = default_analyser.read(shown)
    finding = _finding(source, default_analyser.identity, Category.DOUBT)
    model = Algorithm.of(default_analyser.identity, "test")
    windowed = through_own_voi(radiograph.metadata.get("voi"))
    objects = build_results(source, radiograph.pixels, finding, model, ResultUIDs.derived(name, "g", model),
                            WHEN, windowed=windowed)  # fmt: skip
    made = objects.made()
    assert {"sc", "gsps"} <= set(made), objects.failures
    state = tmp_path / "state.dcm"
    made["gsps"].save_as(state, enforce_file_format=True)
    plain = render(shown, tmp_path / "plain.pgm")
    through = render(shown, tmp_path / "through.pgm", state)
    assert abs(through.mean() - plain.mean()) <= 0.1 * plain.mean(), (through.mean(), plain.mean())
    sc_grey, ps_grey = sc_and_rendering_grey(_read_back(made["sc"]).pixel_array, through)
    assert abs(ps_grey - sc_grey) <= 0.1 * sc_grey, (ps_grey, sc_grey)
