"""Gray radiographs stored as colour DICOM (RGB / YBR secondary capture): read like RGB PNG/JPEG.

Every file is built here from a bundled sample's gray pixels, so no shared data is needed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES_DIR, assert_refused
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from fracsight.io import NotARadiograph, RefusedInput, TruncatedImage, UnreadableImage, read_radiograph

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ONE_LEVEL = 1.0 / 255 + 1e-6
PATIENT_NAME = "Doe^Jane"


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    """Real radiograph pixels (a bundled FracAtlas sample), cropped to an even size."""
    with Image.open(SAMPLES_DIR / "IMG0000001.jpg") as image:
        pixels = np.asarray(image.convert("L"))
    return np.ascontiguousarray(pixels[:240, :200])


def as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def colourful(gray: np.ndarray) -> np.ndarray:
    """A photo-like image: the radiograph tinted by a hue that varies across it."""
    height, width = gray.shape
    hue = np.linspace(0, 2 * np.pi, width, dtype=np.float32)[None, :]
    tint = [np.sin(hue + shift) * 0.5 + 0.5 for shift in (0.0, 2.1, 4.2)]
    light = 0.3 + 0.7 * gray.astype(np.float32) / 255
    return (np.stack([t * light for t in tint], axis=2) * 255).astype(np.uint8)


def colour_sc(
    rgb: np.ndarray, photometric: str = "RGB", planar: int | None = 0, **attributes: object
) -> Dataset:
    """An uncompressed 8-bit colour Secondary Capture data set holding ``rgb`` (H x W x 3)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SECONDARY_CAPTURE, "1.2.3.4", "OT"
    ds.PatientName, ds.PatientID = PATIENT_NAME, "ID-98765"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, photometric
    if planar is not None:
        ds.PlanarConfiguration = planar
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    samples = convert_color_space(rgb, "RGB", "YBR_FULL") if photometric == "YBR_FULL" else rgb
    ds.PixelData = (samples.transpose(2, 0, 1) if planar == 1 else samples).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def encapsulated(ds: Dataset, frame: bytes, syntax: UID, photometric: str) -> Dataset:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PhotometricInterpretation = photometric
    ds.PlanarConfiguration = 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds


def jpeg_baseline(rgb: np.ndarray, **attributes: object) -> Dataset:
    """JPEG baseline as written by Pillow (JFIF, YCbCr 4:2:0), stored as YBR_FULL_422."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=90)
    return encapsulated(colour_sc(rgb, **attributes), buffer.getvalue(), JPEGBaseline8Bit, "YBR_FULL_422")


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=False)
    return path


def must_not_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("pixel data was decoded for a file the header already rules out")

    monkeypatch.setattr("fracsight.io.dicom_reader._decode", refuse)


def assert_gray_colour_read(path: Path, gray: np.ndarray, atol: float) -> dict[str, object]:
    radiograph = read_radiograph(path)
    assert radiograph.pixels.dtype == np.float32 and radiograph.shape == gray.shape
    np.testing.assert_allclose(radiograph.pixels, gray / 255.0, atol=atol)
    meta = radiograph.metadata
    assert meta["channels_merged"] is True and meta["intensity_mapping"] == "type-max"
    assert meta["inverted"] is False and meta["voi"] is None and meta["window"] is None
    assert "PixelData" not in radiograph.dicom
    return meta


# --- gray images stored as colour: read -------------------------------------------------------


@pytest.mark.parametrize("planar", [0, 1])
@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_gray_rgb_secondary_capture_uncompressed_is_read(
    tmp_path: Path, gray: np.ndarray, photometric: str, planar: int
) -> None:
    path = save(colour_sc(as_rgb(gray), photometric, planar), tmp_path / "sc.dcm")
    meta = assert_gray_colour_read(path, gray, ONE_LEVEL)
    assert meta["photometric"] == photometric and meta["modality"] == "OT"


# "RGB" on a JFIF (YCbCr) codestream is a common mislabelling; pydicom follows the codestream.
@pytest.mark.filterwarnings("ignore:.*JFIF APP marker:UserWarning")
@pytest.mark.parametrize("photometric", ["YBR_FULL_422", "RGB"])
def test_gray_rgb_jpeg_baseline_is_read(tmp_path: Path, gray: np.ndarray, photometric: str) -> None:
    ds = jpeg_baseline(as_rgb(gray))
    ds.PhotometricInterpretation = photometric
    path = save(ds, tmp_path / "sc_jpeg.dcm")
    meta = assert_gray_colour_read(path, gray, 0.08)  # JPEG: a few levels, more at sharp edges
    assert meta["transfer_syntax"] == JPEGBaseline8Bit and meta["photometric"] == photometric
    pixels = read_radiograph(path).pixels
    assert float(np.abs(pixels - gray / 255.0).mean()) < 0.005


def ybr_full_422_samples(rgb: np.ndarray) -> bytes:
    """Uncompressed YBR_FULL_422 (PS3.3 C.7.6.3.1.2): Y1 Y2 Cb Cr for each pair of pixels."""
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL").reshape(-1, 2, 3)
    return np.stack([ybr[:, 0, 0], ybr[:, 1, 0], ybr[:, 0, 1], ybr[:, 0, 2]], axis=1).tobytes()


def test_gray_uncompressed_ybr_full_422_is_read_and_its_length_checked(
    tmp_path: Path, gray: np.ndarray
) -> None:
    ds = colour_sc(as_rgb(gray), photometric="YBR_FULL_422")
    ds.PixelData = ybr_full_422_samples(as_rgb(gray))
    assert_gray_colour_read(save(ds, tmp_path / "ybr422.dcm"), gray, ONE_LEVEL)
    ds.PixelData = ds.PixelData[: gray.size]  # half of the 2 bytes per pixel
    assert_refused(save(ds, tmp_path / "ybr422_cut.dcm"), TruncatedImage, "the file is truncated")


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_gray_rgb_rle_is_read(tmp_path: Path, gray: np.ndarray, photometric: str) -> None:
    ds = colour_sc(as_rgb(gray), photometric)
    ds.compress(RLELossless)
    path = save(ds, tmp_path / "sc_rle.dcm")
    assert_gray_colour_read(path, gray, ONE_LEVEL)


@pytest.mark.parametrize("encoding", ["jpeg", "rle"])
@pytest.mark.parametrize("planar", [1, None])
def test_compressed_colour_ignores_planar_configuration(
    tmp_path: Path, gray: np.ndarray, encoding: str, planar: int | None
) -> None:
    # PS3.5 8.2: the codestream fixes the sample layout; a stray 1 (or none) must not scramble it.
    if encoding == "jpeg":
        ds = jpeg_baseline(as_rgb(gray))
    else:
        ds = colour_sc(as_rgb(gray))
        ds.compress(RLELossless)
    if planar is None:
        del ds.PlanarConfiguration
    else:
        ds.PlanarConfiguration = planar
    assert_gray_colour_read(save(ds, tmp_path / "sc_planar.dcm"), gray, 0.08)


def test_gray_rgb_jpeg_2000_falls_back_to_a_full_decode(tmp_path: Path, gray: np.ndarray) -> None:
    # Reduced-resolution decoding vouches for one-component codestreams only.
    buffer = io.BytesIO()
    Image.fromarray(as_rgb(gray)).save(buffer, "JPEG2000", irreversible=False, mct=1, no_jp2=True)
    ds = encapsulated(colour_sc(as_rgb(gray)), buffer.getvalue(), JPEG2000Lossless, "YBR_RCT")
    path = save(ds, tmp_path / "sc_j2k.dcm")
    radiograph = read_radiograph(path, needed_side=50)
    assert radiograph.metadata["decoded_at_scale"] == 1.0
    np.testing.assert_allclose(radiograph.pixels, gray / 255.0, atol=ONE_LEVEL)


def test_colour_image_ignores_grayscale_luts(tmp_path: Path, gray: np.ndarray) -> None:
    # Rescale and window are grayscale transforms (PS3.3 C.11); colour is divided by 255 as for PNG.
    ds = colour_sc(as_rgb(gray), WindowCenter=40, WindowWidth=20, RescaleSlope=2, RescaleIntercept=-5)
    assert_gray_colour_read(save(ds, tmp_path / "sc_window.dcm"), gray, ONE_LEVEL)


def test_small_coloured_marker_on_gray_rgb_is_read(tmp_path: Path, gray: np.ndarray) -> None:
    rgb = as_rgb(gray)
    rgb[4:14, 4:24] = (255, 0, 0)  # a red side marker: 200 of 48,000 pixels
    radiograph = read_radiograph(save(colour_sc(rgb), tmp_path / "marker.dcm"))
    np.testing.assert_allclose(radiograph.pixels[100], gray[100] / 255.0, atol=ONE_LEVEL)


# --- colourful images and unreadable colour encodings: refused --------------------------------


@pytest.mark.parametrize("encoding", ["native", "jpeg", "rle"])
def test_colourful_rgb_is_not_a_radiograph(tmp_path: Path, gray: np.ndarray, encoding: str) -> None:
    rgb = colourful(gray)
    if encoding == "jpeg":
        ds = jpeg_baseline(rgb)
    else:
        ds = colour_sc(rgb)
        if encoding == "rle":
            ds.compress(RLELossless)
    error = assert_refused(save(ds, tmp_path / "photo.dcm"), NotARadiograph, "colour image (channels differ)")
    assert "(0028,0004) Photometric Interpretation" in error.reason
    assert PATIENT_NAME not in str(error) and "98765" not in str(error)


def test_16_bit_rgb_is_refused_before_decoding(
    tmp_path: Path, gray: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    rgb16 = as_rgb(gray).astype(np.uint16) * 257
    ds = colour_sc(as_rgb(gray), BitsAllocated=16, BitsStored=16, HighBit=15)
    ds.PixelData = rgb16.tobytes()
    must_not_decode(monkeypatch)
    error = assert_refused(
        save(ds, tmp_path / "rgb16.dcm"), UnreadableImage, "(0028,0100) Bits Allocated is 16"
    )
    assert "8 bits per sample" in error.reason


@pytest.mark.parametrize(
    ("changes", "error", "reason"),
    [
        ({"BitsStored": 6, "HighBit": 5}, UnreadableImage, "(0028,0101) Bits Stored is 6"),
        ({"PixelRepresentation": 1}, UnreadableImage, "(0028,0103) Pixel Representation is 1"),
        ({"PlanarConfiguration": 2}, UnreadableImage, "(0028,0006) Planar Configuration is 2"),
        ({"PlanarConfiguration": None}, UnreadableImage, "(0028,0006) Planar Configuration is missing"),
        ({"PhotometricInterpretation": "MONOCHROME2"}, UnreadableImage, "contradicts"),
        ({"PhotometricInterpretation": "YBR_PARTIAL_420"}, UnreadableImage, "'YBR_PARTIAL_420'"),
        ({"SamplesPerPixel": 4}, UnreadableImage, "(0028,0002) Samples per Pixel is 4"),
        ({"NumberOfFrames": 2}, NotARadiograph, "(0028,0008) Number of Frames is 2"),
        ({"Modality": "US", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.6.1"}, NotARadiograph, "Modality 'US'"),
        ({"Rows": 60000, "Columns": 60000}, UnreadableImage, "exceeds the limit of 100,000,000"),
    ],
)
def test_colour_header_problems_are_refused_before_decoding(
    tmp_path: Path,
    gray: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, object],
    error: type[RefusedInput],
    reason: str,
) -> None:
    ds = colour_sc(as_rgb(gray))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    must_not_decode(monkeypatch)
    assert_refused(save(ds, tmp_path / "bad_colour.dcm"), error, reason)


def test_palette_colour_is_still_refused(tmp_path: Path, gray: np.ndarray) -> None:
    ds = colour_sc(as_rgb(gray), planar=None)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelData = 1, "PALETTE COLOR", gray.tobytes()
    assert_refused(save(ds, tmp_path / "palette.dcm"), NotARadiograph, "'PALETTE COLOR' is not grayscale")


def test_rgb_jpeg_declaring_another_size_is_refused_before_decoding(
    tmp_path: Path, gray: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = jpeg_baseline(as_rgb(gray))
    ds.Rows = 120
    must_not_decode(monkeypatch)
    assert_refused(save(ds, tmp_path / "mismatch.dcm"), UnreadableImage, "codestream declares 200 x 240")


def test_truncated_uncompressed_rgb_is_refused_as_truncated(tmp_path: Path, gray: np.ndarray) -> None:
    ds = colour_sc(as_rgb(gray))
    ds.PixelData = ds.PixelData[: gray.size * 2]  # two thirds of the samples
    assert_refused(save(ds, tmp_path / "cut_rgb.dcm"), TruncatedImage, "the file is truncated")


def _gdcm_jpeg_baseline(source: Path, target: Path) -> Path:
    """Recompress with GDCM (as `gdcmconv --jpeg` does): YCbCr inside, no JFIF or Adobe marker,
    and the header still says RGB."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGBaselineProcess1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return target


def test_gdcm_jpeg_labelled_rgb_holding_ycbcr_is_read_as_gray(gray: np.ndarray, tmp_path: Path) -> None:
    source = save(colour_sc(as_rgb(gray)), tmp_path / "sc.dcm")
    path = _gdcm_jpeg_baseline(source, tmp_path / "gdcm_jpeg.dcm")
    radiograph = read_radiograph(path)
    error = np.abs(radiograph.pixels - gray / 255.0)
    assert error.mean() < 0.005 and error.max() < 0.08


def test_gdcm_jpeg_of_a_colour_photo_is_still_refused(gray: np.ndarray, tmp_path: Path) -> None:
    source = save(colour_sc(colourful(gray)), tmp_path / "photo.dcm")
    assert_refused(_gdcm_jpeg_baseline(source, tmp_path / "gdcm_photo.dcm"), NotARadiograph, "colour")


def test_jpeg_kept_in_rgb_with_an_adobe_marker_is_read_as_rgb(gray: np.ndarray, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(as_rgb(gray)).save(buffer, "JPEG", quality=95, keep_rgb=True)
    ds = encapsulated(colour_sc(as_rgb(gray)), buffer.getvalue(), JPEGBaseline8Bit, "RGB")
    radiograph = read_radiograph(save(ds, tmp_path / "adobe_rgb.dcm"))
    assert np.abs(radiograph.pixels - gray / 255.0).mean() < 0.005
