"""Regression tests for reader defects found in review: each input is built here, no shared data."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_refused
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from fracsight.io import RefusedInput, TruncatedImage, UnreadableImage, read_radiograph

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
# A 12-bit ramp: every column a different stored value, 0 .. 4032.
RAMP = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (8, 1))


def synthetic_dx(stored: np.ndarray, bits_stored: int = 12, **attributes: object) -> Dataset:
    """A minimal uncompressed DX For Presentation data set holding ``stored``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = DX_FOR_PRESENTATION, "1.2.3.4", "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=False)
    return path


# --- special files ----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
def test_named_pipe_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "scan.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            read_radiograph(fifo)
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)
    if reader.is_alive():
        with fifo.open("wb"):  # let the blocked open() return so the thread ends
            pass
        reader.join(timeout=5)
        pytest.fail("read_radiograph blocked opening a named pipe")
    assert isinstance(outcome[0], UnreadableImage), outcome
    assert "scan.png" in str(outcome[0]) and "named pipe (FIFO)" in outcome[0].reason


# --- DICOM display pipeline ---------------------------------------------------------------------


def test_nan_rescale_slope_is_refused_not_returned_as_nan_pixels(tmp_path: Path) -> None:
    path = save(synthetic_dx(RAMP, RescaleSlope=1.25, RescaleIntercept=0), tmp_path / "nan_slope.dcm")
    data = path.read_bytes()
    assert data.count(b"1.25") == 1
    path.write_bytes(data.replace(b"1.25", b"nan "))  # a damaged DS string that parses as NaN
    assert_refused(path, UnreadableImage, "(0028,1053) Rescale Slope nan")


def test_zero_rescale_slope_is_refused_not_returned_blank(tmp_path: Path) -> None:
    path = save(synthetic_dx(RAMP, RescaleSlope=0, RescaleIntercept=5), tmp_path / "zero_slope.dcm")
    assert_refused(path, UnreadableImage, "maps every storable value to 5: the image would be blank")


def voi_lut(entries: int, first: int, bits: int, data: list[int]) -> Sequence:
    item = Dataset()
    item.LUTDescriptor = [entries, first, bits]
    item.add_new(0x00283006, "US", data)
    return Sequence([item])


def test_voi_lut_with_8_bit_entries_maps_past_its_256th_entry(tmp_path: Path) -> None:
    # 4096 entries of 8 bits (12-bit stored -> 8-bit display); pydicom 3.0 wraps indexes at 256.
    table = [int(v) for v in np.arange(4096) >> 4]
    path = save(synthetic_dx(RAMP, VOILUTSequence=voi_lut(4096, 0, 8, table)), tmp_path / "voi8.dcm")
    radiograph = read_radiograph(path)
    assert radiograph.metadata["voi"] == "voi-lut"
    expected = (RAMP[0] >> 4) / 255.0
    np.testing.assert_allclose(radiograph.pixels[0], expected, atol=1e-6)


def test_voi_lut_with_8_bit_entries_one_per_byte_in_ow(tmp_path: Path) -> None:
    """PS3.3 C.11.2.1.1: 8-bit LUT Data may be stored as if 8 bits allocated, one entry a byte."""
    table = (np.arange(4096) >> 4).astype(np.uint8)
    lut = voi_lut(4096, 0, 8, [0])
    lut[0].add_new(0x00283006, "OW", table.tobytes())
    radiograph = read_radiograph(save(synthetic_dx(RAMP, VOILUTSequence=lut), tmp_path / "voi8ow.dcm"))
    np.testing.assert_allclose(radiograph.pixels[0], (RAMP[0] >> 4) / 255.0, atol=1e-6)


def test_constant_voi_lut_falls_back_to_the_stored_range(tmp_path: Path) -> None:
    path = save(synthetic_dx(RAMP, VOILUTSequence=voi_lut(16, 0, 16, [7] * 16)), tmp_path / "flat_voi.dcm")
    radiograph = read_radiograph(path)
    assert radiograph.metadata["voi"] == "stored-range"
    np.testing.assert_allclose(radiograph.pixels[0], RAMP[0] / 4095.0, atol=1e-6)


# --- codestreams that declare another size than the DICOM header -------------------------------------


def encapsulated_dx(codestream: bytes, syntax: str, rows: int, columns: int, bits: int) -> Dataset:
    ds = synthetic_dx(np.zeros((rows, columns), np.uint16 if bits > 8 else np.uint8), bits)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    return ds


@pytest.mark.parametrize("needed_side", [None, 32])
def test_j2k_codestream_larger_than_the_header_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, needed_side: int | None
) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((512, 640), np.uint16)).save(buffer, format="JPEG2000", no_jp2=True)
    path = save(encapsulated_dx(buffer.getvalue(), JPEG2000Lossless, 64, 64, 16), tmp_path / "j2k_lie.dcm")

    def must_not_decode(*args: object) -> None:
        raise AssertionError("the codestream was decoded before its size was checked")

    monkeypatch.setattr("fracsight.io.dicom_reader._decode", must_not_decode)
    monkeypatch.setattr("fracsight.io.dicom_j2k._decode_codestream", must_not_decode)
    with pytest.raises(RefusedInput) as caught:
        read_radiograph(path, needed_side=needed_side)
    assert isinstance(caught.value, UnreadableImage) and "j2k_lie.dcm" in str(caught.value)
    assert "codestream declares 640 x 512 pixels but (0028,0011) Columns x (0028,0010) Rows are 64 x 64" in (
        caught.value.reason
    )


def test_jpeg_codestream_of_another_size_than_the_header_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((200, 300), 90, np.uint8)).save(buffer, format="JPEG")
    path = save(encapsulated_dx(buffer.getvalue(), JPEGBaseline8Bit, 20, 20, 8), tmp_path / "jpeg_lie.dcm")
    assert_refused(path, UnreadableImage, "codestream declares 300 x 200 pixels")
    same = save(encapsulated_dx(buffer.getvalue(), JPEGBaseline8Bit, 200, 300, 8), tmp_path / "jpeg_ok.dcm")
    assert read_radiograph(same).shape == (200, 300)


# --- truncated progressive JPEG ------------------------------------------------------------------


def progressive_jpeg() -> tuple[np.ndarray, bytes]:
    rng = np.random.default_rng(3)
    gray = (np.add.outer(np.arange(256), np.arange(256)) % 256 + rng.integers(-20, 20, (256, 256))).clip(
        0, 255
    )
    buffer = io.BytesIO()
    Image.fromarray(gray.astype(np.uint8)).save(buffer, format="JPEG", progressive=True, quality=95)
    return gray, buffer.getvalue()


def test_progressive_jpeg_cut_before_its_last_scans_is_refused(tmp_path: Path) -> None:
    # Each scan covers every row: a cut leaves a complete-looking but coarse image, no gray tail.
    _, data = progressive_jpeg()
    second_scan = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    path = tmp_path / "progressive_dc_only.jpg"
    path.write_bytes(data[:second_scan])
    assert_refused(path, TruncatedImage, "progressive JPEG is truncated after 1 scans")
    half = tmp_path / "progressive_half.jpg"
    half.write_bytes(data[: len(data) // 2])
    assert_refused(half, TruncatedImage, "never reached full precision")


def test_progressive_jpeg_missing_only_its_end_marker_is_read(tmp_path: Path) -> None:
    gray, data = progressive_jpeg()
    path = tmp_path / "progressive_no_eoi.jpg"
    path.write_bytes(data[:-2])
    radiograph = read_radiograph(path)
    assert radiograph.metadata["truncated"] is True
    assert np.abs(radiograph.pixels * 255 - gray).mean() < 3


# --- messages ----------------------------------------------------------------------------------


def test_webp_is_named_in_the_refusal(tmp_path: Path) -> None:
    path = tmp_path / "wrist.webp"
    Image.new("L", (16, 16), 80).save(path, format="WEBP")
    assert_refused(path, UnreadableImage, "a WebP image, not a PNG, JPEG, TIFF or DICOM file")


@pytest.mark.parametrize("head", [b"\x89PNG\r\n\x1a\n", b"\0" * 128 + b"DICM"])
def test_file_too_large_for_one_radiograph_is_refused_before_reading(
    tmp_path: Path, head: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 500 MB file is refused from its size: nothing is read into memory first."""
    from fracsight.io import limits

    path = tmp_path / "huge.img"
    with path.open("wb") as fh:
        fh.write(head)
        fh.truncate(limits.FILE_BYTES_PER_PIXEL * limits.MAX_PIXELS + 1)  # sparse: no disk space used

    def no_reading(*_args, **_kwargs):
        raise AssertionError("the file was read")

    monkeypatch.setattr(Path, "read_bytes", no_reading)
    monkeypatch.setattr("pydicom.dcmread", no_reading)
    with pytest.raises(UnreadableImage, match=r"huge.img.*bytes, more than one radiograph of at most"):
        read_radiograph(path)


def test_file_at_the_pixel_limit_in_float32_is_not_refused_for_its_size(tmp_path: Path) -> None:
    """100 MP of float32 TIFF is 400 MB of pixels plus a header: within the file-size limit."""
    from fracsight.io import limits

    limits.check_file_size(tmp_path / "f.tif", 4 * limits.MAX_PIXELS + 10_000)
    limits.check_file_size(tmp_path / "f.dcm", 40_000, max_pixels=1000)  # small limits: the header decides
    raised = 2 * limits.MAX_PIXELS
    limits.check_file_size(tmp_path / "f.tif", 4 * raised, max_pixels=raised)
    with pytest.raises(UnreadableImage):
        limits.check_file_size(tmp_path / "f.tif", 6 * raised, max_pixels=raised)
