"""Reading DICOM: every real sample in shared/data/dicom, plus planted variants of real files."""

from __future__ import annotations

import importlib.util
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import assert_refused
from pydicom.pixels import apply_voi

from fracsight.io import (
    MAX_PIXELS,
    NotARadiograph,
    Radiograph,
    RefusedInput,
    TruncatedImage,
    UnreadableImage,
    is_truncated,
    read_radiograph,
)

HAS_LIBJPEG = importlib.util.find_spec("libjpeg") is not None


@dataclass(frozen=True)
class Read:
    """Expected: read, with this shape, polarity handling and VOI step."""

    shape: tuple[int, int]
    inverted: bool
    voi: str


@dataclass(frozen=True)
class Refused:
    """Expected: refused with this error class and a reason containing ``reason``."""

    error: type[RefusedInput]
    reason: str


# Every file in shared/data/dicom, with the outcome its SOURCES.txt category line calls for.
EXPECTED: dict[str, Read | Refused] = {
    # DERIVED from hd_dx_image.dcm: same pixels as Implicit VR LE; lossy JPEG baseline copy.
    "drv_hd_dx_image_implicitVR.dcm": Read((169, 211), inverted=True, voi="window"),
    "drv_hd_dx_image_jpeg_baseline.dcm": Read((169, 211), inverted=True, voi="window"),
    # DERIVED broken files: no Pixel Data; cut inside Pixel Data.
    "drv_pyd_CR1_6154_no_pixeldata.dcm": Refused(UnreadableImage, "(7FE0,0010) Pixel Data is missing"),
    "drv_pyd_CR1_6154_truncated_odd.dcm": Refused(TruncatedImage, "the file is truncated"),
    # RADIOGRAPH, EDGE CASE: no preamble, no File Meta.
    "fod_CR-MONO1-10-chest": Read((440, 440), inverted=True, voi="window"),
    # RADIOGRAPH with a Modality LUT Sequence and no window.
    "fod_CR-ModalitySequenceLUT.dcm": Read((1576, 1976), inverted=True, voi="stored-range"),
    # NEGATIVE + MALFORMED (MR with empty Pixel Data): the modality is the first reason.
    "fod_GH1146.dcm": Refused(NotARadiograph, "(0008,0060) Modality 'MR'"),
    # NEGATIVE-ish: XA 96-frame angiography; MG mammography.
    "fod_HasFragmentSequence.dcm": Refused(NotARadiograph, "(0008,0060) Modality 'XA'"),
    "fod_OutOfBoundsOverlay.dcm": Refused(NotARadiograph, "mammography, which is not in fracsight's scope"),
    # RADIOGRAPH: DX, MONOCHROME1 + Presentation LUT Shape INVERSE.
    "hd_dx_image.dcm": Read((169, 211), inverted=True, voi="window"),
    # NON-RADIOGRAPH LUT TEST: a Secondary Capture (accepted by policy) with a VOI LUT Sequence.
    "pdd_vlut_04.dcm": Read((512, 512), inverted=False, voi="voi-lut"),
    # RADIOGRAPH, MALFORMED: corrupt JPEG 2000 codestream.
    "pljd_966.dcm": Refused(UnreadableImage, "Pixel Data could not be decoded from 'JPEG 2000"),
    "pljd_966_fixed.dcm": Read((2128, 2000), inverted=True, voi="window"),
    "pljd_NM_Kakadu44_SOTmarkerincons.dcm": Read((2500, 2048), inverted=False, voi="window"),
    "pljd_RG1_J2KI.dcm": Read((1955, 1841), inverted=True, voi="window"),
    "pljd_RG1_JLSN.dcm": Read((1955, 1841), inverted=True, voi="window"),
    "pljd_RG2_JLSL.dcm": Read((2140, 1760), inverted=False, voi="window"),
    "pljd_RG2_JLSN.dcm": Read((2140, 1760), inverted=False, voi="window"),
    "pljd_RG2_JPLL.dcm": Read((2140, 1760), inverted=False, voi="window"),
    # RADIOGRAPH, MALFORMED: JPEG SOS Se=0; no decoder reads it.
    "pljd_RG2_JPLY.dcm": Refused(UnreadableImage, "'JPEG Extended (Process 2 and 4)'"),
    # RADIOGRAPH: 12-bit JPEG Extended; only the optional GPL decoder reads it.
    "pljd_RG2_JPLY_fixed.dcm": (
        Read((2140, 1760), inverted=False, voi="window")
        if HAS_LIBJPEG
        else Refused(UnreadableImage, "needs the optional decoder pylibjpeg with pylibjpeg-libjpeg")
    ),
    "pljd_RG3_J2KI.dcm": Read((1760, 1760), inverted=True, voi="window"),
    "pljd_RG3_J2KR.dcm": Read((1760, 1760), inverted=True, voi="window"),
    # NEGATIVE: CT (whose preamble is a TIFF header: must still be read as DICOM) and MR.
    "pyd_CT_small.dcm": Refused(NotARadiograph, "(0008,0060) Modality 'CT'"),
    "pyd_MR_small.dcm": Refused(NotARadiograph, "(0008,0060) Modality 'MR'"),
    "pyd_MR_truncated.dcm": Refused(NotARadiograph, "(0008,0060) Modality 'MR'"),
    "pyd_dicomdirtests_77654033_CR1_6154": Read((16, 16), inverted=True, voi="window"),
    # The folder's own documentation: text, not images.
    "README.md": Refused(UnreadableImage, "a text file, not a PNG, JPEG, TIFF or DICOM image"),
    "SOURCES.txt": Refused(UnreadableImage, "a text file, not a PNG, JPEG, TIFF or DICOM image"),
}
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "SOPInstanceUID",
    "StudyInstanceUID",
)


def test_expected_table_covers_every_file_in_the_folder(dicom_dir: Path) -> None:
    on_disk = {p.name for p in dicom_dir.iterdir() if p.is_file()}
    missing, gone = sorted(on_disk - set(EXPECTED)), sorted(set(EXPECTED) - on_disk)
    assert not missing and not gone, f"not in EXPECTED: {missing}; in EXPECTED but gone from disk: {gone}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_shared_dicom_sample(dicom_dir: Path, name: str) -> None:
    path = dicom_dir / name
    expected = EXPECTED[name]
    if isinstance(expected, Refused):
        assert_refused(path, expected.error, expected.reason)
        return
    radiograph = read_radiograph(path)
    pixels = radiograph.pixels
    assert radiograph.format == "dicom"
    assert pixels.dtype == np.float32 and pixels.shape == expected.shape
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
    assert float(pixels.std()) > 0.02, "display mapping flattened the image"
    meta = radiograph.metadata
    assert meta["inverted"] is expected.inverted
    assert meta["voi"] == expected.voi
    assert meta["truncated"] is False
    assert (meta["rows"], meta["columns"]) == expected.shape
    assert meta["photometric"] == ("MONOCHROME1" if expected.inverted else "MONOCHROME2")
    assert "PixelData" not in radiograph.dicom


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if isinstance(e, Read)))
def test_metadata_logs_and_warnings_carry_no_patient_identifiers(
    dicom_dir: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = dicom_dir / name
    header = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        radiograph = read_radiograph(path)
    # The file's own path is the user's to choose (and is named in logs on purpose): leave it out.
    shown = (repr(radiograph.metadata) + caplog.text + " ".join(str(w.message) for w in caught)).replace(
        str(path), "<path>"
    )
    for keyword in IDENTIFYING_KEYWORDS:
        value = str(header.get(keyword, "") or "").strip()
        if len(value) >= 3:
            assert value not in shown, f"{keyword} leaked into metadata, logs or warnings"


def test_monochrome1_comes_out_with_bone_bright_and_air_dark(dicom_dir: Path) -> None:
    # Lateral dog thorax, MONOCHROME1 + INVERSE: stored values fall where the display brightens.
    path = dicom_dir / "hd_dx_image.dcm"
    radiograph = read_radiograph(path)
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    assert np.corrcoef(stored.ravel(), radiograph.pixels.ravel())[0, 1] < -0.99
    assert radiograph.pixels[:8].mean() < 0.2, "air above the back must be dark"
    # Chest radiographs, MONOCHROME1: the mediastinum (spine, heart) is brighter than both lungs.
    for name in ("fod_CR-MONO1-10-chest", "pljd_RG1_J2KI.dcm"):
        pixels = read_radiograph(dicom_dir / name).pixels
        height, width = pixels.shape
        band = pixels[int(0.35 * height) : int(0.6 * height)]
        mediastinum = band[:, int(0.45 * width) : int(0.55 * width)].mean()
        right_lung = band[:, int(0.22 * width) : int(0.32 * width)].mean()
        left_lung = band[:, int(0.68 * width) : int(0.78 * width)].mean()
        assert mediastinum > right_lung + 0.1 and mediastinum > left_lung + 0.1, name


def test_monochrome2_keeps_polarity(dicom_dir: Path) -> None:
    path = dicom_dir / "pljd_RG2_JPLL.dcm"
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    pixels = read_radiograph(path).pixels
    assert np.corrcoef(stored.ravel()[::7], pixels.ravel()[::7])[0, 1] > 0.95


def test_derived_copies_match_their_original(dicom_dir: Path) -> None:
    original = read_radiograph(dicom_dir / "hd_dx_image.dcm").pixels
    implicit = read_radiograph(dicom_dir / "drv_hd_dx_image_implicitVR.dcm").pixels
    assert np.array_equal(original, implicit)
    lossy = read_radiograph(dicom_dir / "drv_hd_dx_image_jpeg_baseline.dcm").pixels
    assert np.abs(lossy - original).mean() < 0.02
    assert np.corrcoef(lossy.ravel(), original.ravel())[0, 1] > 0.99


def test_lossless_and_near_lossless_encodings_of_one_image_agree(dicom_dir: Path) -> None:
    lossless = read_radiograph(dicom_dir / "pljd_RG2_JPLL.dcm").pixels
    jpeg_ls = read_radiograph(dicom_dir / "pljd_RG2_JLSL.dcm").pixels
    near_lossless = read_radiograph(dicom_dir / "pljd_RG2_JLSN.dcm").pixels
    assert np.array_equal(lossless, jpeg_ls)
    assert np.abs(near_lossless - lossless).max() < 0.01


def test_rescale_and_window_follow_the_standard_formula(dicom_dir: Path) -> None:
    # CR1_6154: Rescale 0.684/200, window 1600/2800 (LINEAR), MONOCHROME1: computed by hand here.
    path = dicom_dir / "pyd_dicomdirtests_77654033_CR1_6154"
    ds = pydicom.dcmread(path)
    values = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    windowed = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    expected = 1.0 - windowed
    np.testing.assert_allclose(read_radiograph(path).pixels, expected, atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_other_voi_lut_functions(dicom_dir: Path, tmp_path: Path, function: str) -> None:
    path = planted(
        dicom_dir,
        tmp_path,
        "hd_dx_image.dcm",
        "f.dcm",
        VOILUTFunction=function,
        WindowCenter=100,
        WindowWidth=80,
    )
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    if function == "LINEAR_EXACT":
        windowed = np.clip((stored - 100) / 80 + 0.5, 0, 1)
    else:
        windowed = 1 / (1 + np.exp(-4 * (stored - 100) / 80))
    radiograph = read_radiograph(path)
    assert radiograph.metadata["window_function"] == function
    np.testing.assert_allclose(radiograph.pixels, 1.0 - windowed, atol=1e-6)


def test_voi_lut_sequence_is_applied_and_scaled_by_its_table(dicom_dir: Path) -> None:
    path = dicom_dir / "pdd_vlut_04.dcm"
    ds = pydicom.dcmread(path)
    descriptor = [int(v) for v in ds.VOILUTSequence[0].LUTDescriptor]
    table = apply_voi(np.arange(descriptor[1], descriptor[1] + (descriptor[0] or 65536)), ds)
    mapped = apply_voi(ds.pixel_array.astype(np.int64), ds).astype(np.float64)
    expected = (mapped - table.min()) / (table.max() - table.min())
    np.testing.assert_allclose(read_radiograph(path).pixels, expected, atol=1e-6)


def test_file_without_preamble_reports_the_assumed_transfer_syntax(dicom_dir: Path) -> None:
    meta = read_radiograph(dicom_dir / "fod_CR-MONO1-10-chest").metadata
    assert meta["transfer_syntax"] == "1.2.840.10008.1.2"
    assert meta["transfer_syntax_assumed"] is True
    assert meta["modality"] == "CR" and meta["body_part"] == "CHEST"
    assert read_radiograph(dicom_dir / "hd_dx_image.dcm").metadata["transfer_syntax_assumed"] is False


def test_dicom_metadata_keys(dicom_dir: Path) -> None:
    meta = read_radiograph(dicom_dir / "pljd_966_fixed.dcm").metadata
    assert meta["format"] == "dicom" and meta["modality"] == "DX"
    assert meta["sop_class"] == "1.2.840.10008.5.1.4.1.1.1.1"
    assert meta["transfer_syntax"] == "1.2.840.10008.1.2.4.90"
    assert meta["bits_stored"] == 12 and meta["photometric"] == "MONOCHROME1"
    assert meta["body_part"] == "CHEST" and meta["pixel_spacing_mm"] == [0.16, 0.16]
    assert meta["window"] == [2048.0, 4096.0] and meta["presentation_lut_shape"] == "INVERSE"


# --- planted variants of real files ------------------------------------------------------------


def planted(dicom_dir: Path, tmp_path: Path, source: str, name: str, **changes: object) -> Path:
    """A copy of a real sample with some attributes changed (None deletes the attribute)."""
    ds = pydicom.dcmread(dicom_dir / source)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = tmp_path / name
    ds.save_as(out)
    return out


@pytest.mark.parametrize(
    ("changes", "error", "reason"),
    [
        ({"Modality": "CT"}, NotARadiograph, "(0008,0060) Modality 'CT' is computed tomography"),
        ({"Modality": "RF"}, NotARadiograph, "(0008,0060) Modality 'RF' is fluoroscopy"),
        ({"Modality": "US"}, NotARadiograph, "(0008,0060) Modality 'US'"),
        ({"Modality": "OT"}, NotARadiograph, "not a Secondary Capture image"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1.1"}, NotARadiograph, "send the 'For Presentation'"),
        ({"NumberOfFrames": 2}, NotARadiograph, "(0028,0008) Number of Frames is 2"),
        # Colour is read when gray (tests/test_io_dicom_rgb.py); these colour headers are not.
        ({"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB"}, UnreadableImage, "(0028,0006)"),
        ({"SamplesPerPixel": 3, "PhotometricInterpretation": "MONOCHROME1"}, UnreadableImage, "contradicts"),
        ({"SamplesPerPixel": 2}, UnreadableImage, "(0028,0002) Samples per Pixel is 2"),
        ({"PhotometricInterpretation": "RGB"}, NotARadiograph, "contradicts (0028,0002) Samples per Pixel 1"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, NotARadiograph, "is not grayscale"),
        ({"PhotometricInterpretation": None}, UnreadableImage, "(0028,0004) Photometric Interpretation is"),
        ({"BitsAllocated": 32, "BitsStored": 32}, UnreadableImage, "(0028,0100) Bits Allocated is 32"),
        ({"Rows": 60000, "Columns": 60000}, UnreadableImage, "exceeds the limit of 100,000,000"),
        ({"Rows": 0}, UnreadableImage, "zero-size image"),
        ({"Rows": None}, UnreadableImage, "(0028,0010) Rows is missing"),
        ({"PixelData": b""}, UnreadableImage, "(7FE0,0010) Pixel Data is empty"),
    ],
)
def test_planted_header_changes_are_refused(
    dicom_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, object],
    error: type[RefusedInput],
    reason: str,
) -> None:
    path = planted(dicom_dir, tmp_path, "hd_dx_image.dcm", "planted.dcm", **changes)

    def must_not_decode(*args: object) -> None:
        raise AssertionError("pixel data was decoded for a file the header already rules out")

    monkeypatch.setattr("fracsight.io.dicom_reader._decode", must_not_decode)
    assert_refused(path, error, reason)


def test_secondary_capture_is_read_and_a_non_image_class_is_not(dicom_dir: Path, tmp_path: Path) -> None:
    sc_from_dx = planted(
        dicom_dir,
        tmp_path,
        "hd_dx_image.dcm",
        "sc.dcm",
        Modality="OT",
        SOPClassUID="1.2.840.10008.5.1.4.1.1.7",
    )
    assert read_radiograph(sc_from_dx).metadata["modality"] == "OT"
    mr_class = planted(
        dicom_dir, tmp_path, "pdd_vlut_04.dcm", "ot_mr.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.4"
    )
    assert_refused(mr_class, NotARadiograph, "not a Secondary Capture image")


def test_pixel_limit_is_overridable(dicom_dir: Path) -> None:
    path = dicom_dir / "hd_dx_image.dcm"
    assert_refused(path, UnreadableImage, "exceeds the limit of 1,000", max_pixels=1000)
    assert read_radiograph(path, max_pixels=169 * 211).shape == (169, 211)
    assert MAX_PIXELS == 100_000_000


def test_presentation_lut_inverse_with_monochrome2_follows_photometric(
    dicom_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = planted(
        dicom_dir, tmp_path, "hd_dx_image.dcm", "m2_inverse.dcm", PhotometricInterpretation="MONOCHROME2"
    )
    with caplog.at_level(logging.WARNING):
        flipped = read_radiograph(path)
    original = read_radiograph(dicom_dir / "hd_dx_image.dcm")
    assert flipped.metadata["inverted"] is False
    np.testing.assert_allclose(flipped.pixels, 1.0 - original.pixels, atol=1e-6)
    assert "contradicts MONOCHROME2" in caplog.text and "m2_inverse.dcm" in caplog.text


def test_truncated_compressed_pixel_data_is_refused_as_truncated(dicom_dir: Path, tmp_path: Path) -> None:
    data = (dicom_dir / "pljd_RG3_J2KR.dcm").read_bytes()
    path = tmp_path / "cut_j2k.dcm"
    path.write_bytes(data[: len(data) // 2])
    assert_refused(path, TruncatedImage, "file ends before its end")
    assert is_truncated(path) is True
    assert is_truncated(dicom_dir / "pljd_RG3_J2KR.dcm") is False
    assert is_truncated(dicom_dir / "drv_pyd_CR1_6154_truncated_odd.dcm") is True


def test_a_3000_square_16_bit_dicom_reads_at_full_size(dicom_dir: Path, tmp_path: Path) -> None:
    # Real pixels (RG2 hip, 10-bit) resampled to 3000 x 3000 in an uncompressed 16-bit CR file;
    # its speed is measured in benchmarks/predict_speed.py, not here.
    source = pydicom.dcmread(dicom_dir / "pljd_RG2_JPLL.dcm").pixel_array
    rows = np.linspace(0, source.shape[0] - 1, 3000).astype(int)
    cols = np.linspace(0, source.shape[1] - 1, 3000).astype(int)
    big = np.ascontiguousarray(source[np.ix_(rows, cols)], dtype=np.uint16)
    ds = pydicom.dcmread(dicom_dir / "pyd_dicomdirtests_77654033_CR1_6154")
    ds.Rows, ds.Columns, ds.BitsStored, ds.HighBit = 3000, 3000, 12, 11
    ds.PixelData = big.tobytes()
    path = tmp_path / "big.dcm"
    ds.save_as(path)
    radiograph: Radiograph = read_radiograph(path)
    assert radiograph.shape == (3000, 3000) and radiograph.pixels.dtype == np.float32
    # MONOCHROME1 with a rising window: brighter on screen where the stored value is lower.
    sample = (slice(None, None, 37), slice(None, None, 41))
    order = np.corrcoef(big[sample].ravel(), radiograph.pixels[sample].ravel())[0, 1]
    assert order < -0.9


@pytest.mark.parametrize(
    ("find", "replace"),
    [
        (b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00QS"),  # (0008,0060) with a VR that does not exist
        (b"\x28\x00\x10\x00US\x02\x00", b"\x28\x00\x10\x00UL\x02\x00"),  # Rows: 2 bytes read as a 4-byte UL
    ],
    ids=["unknown-VR", "value-length"],
)
def test_malformed_header_elements_are_refused_not_raised(
    dicom_dir: Path, tmp_path: Path, find: bytes, replace: bytes
) -> None:
    # Damage found by fuzzing real files: pydicom only trips over it when the value is first used.
    data = (dicom_dir / "hd_dx_image.dcm").read_bytes()
    assert data.count(find) == 1
    path = tmp_path / "damaged.dcm"
    path.write_bytes(data.replace(find, replace))
    assert_refused(path, UnreadableImage, "DICOM data element is malformed")
