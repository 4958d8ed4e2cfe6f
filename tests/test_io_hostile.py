"""Files made to hurt the reader: header against codestream, allocation limits, no patient data in messages.

Each case comes from the hostile-sender review (issue 11) and is built here from the bundled
DX sample (re-encoded with python-gdcm where a compressed syntax is needed), so none needs
../shared.
"""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import SAMPLE_PATIENT, assert_refused, gdcm_encode, stretched_sop_class_uid
from PIL import Image

from fracsight.io import DecoderFailed, DecoderPool, NotARadiograph, UnreadableImage, read_radiograph

gdcm = pytest.importorskip("gdcm")


@pytest.fixture(scope="module")
def sample(samples_dir: Path) -> Path:
    return samples_dir / "hd_dx_image.dcm"


def _with_header(source: Path, target: Path, **changes: object) -> Path:
    ds = pydicom.dcmread(source)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(target)
    return target


ENCODINGS = {
    "JPEG-LS": gdcm.TransferSyntax.JPEGLSLossless,
    "JPEG 2000": gdcm.TransferSyntax.JPEG2000Lossless,
    "JPEG": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
}


@pytest.mark.parametrize("kind", sorted(ENCODINGS))
def test_encoded_samples_still_read(sample: Path, tmp_path: Path, kind: str) -> None:
    encoded = gdcm_encode(sample, tmp_path / "encoded.dcm", ENCODINGS[kind])
    np.testing.assert_allclose(read_radiograph(encoded).pixels, read_radiograph(sample).pixels, atol=1e-6)


@pytest.mark.parametrize("kind", ["JPEG-LS", "JPEG 2000"])
def test_gray_codestream_under_an_rgb_header_is_refused_before_gdcm_sees_it(
    sample: Path, tmp_path: Path, kind: str
) -> None:
    """GDCM aborted the whole process on these (exit 134, the batch's CSV empty)."""
    encoded = gdcm_encode(sample, tmp_path / "gray.dcm", ENCODINGS[kind])
    path = _with_header(
        encoded,
        tmp_path / "rgb.dcm",
        SamplesPerPixel=3,
        PhotometricInterpretation="RGB",
        PlanarConfiguration=0,
    )
    refusal = assert_refused(path, UnreadableImage, "the codestream has 1 components but (0028,0002)")
    assert "refused before decoding" in refusal.reason and kind in refusal.reason
    with DecoderPool(workers=1) as pool, pytest.raises(UnreadableImage, match="Samples per Pixel is 3"):
        pool.read(path)


def test_codestream_of_another_size_is_refused(sample: Path, tmp_path: Path) -> None:
    encoded = gdcm_encode(sample, tmp_path / "ls.dcm", ENCODINGS["JPEG-LS"])
    path = _with_header(encoded, tmp_path / "rows.dcm", Rows=170)
    assert_refused(path, UnreadableImage, "the codestream declares 211 x 169 pixels but (0028,0011) Columns")


def _twelve_bit(sample: Path, path: Path) -> Path:
    """The sample as 12 bits stored in 16 allocated (values up to 4080); GDCM encodes it at 16 bits."""
    ds = pydicom.dcmread(sample)
    ds.PixelData = (ds.pixel_array.astype(np.uint16) * 16).tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.save_as(path)
    return path


def test_bits_stored_below_the_codestream_precision_is_refused_not_clipped(
    sample: Path, tmp_path: Path
) -> None:
    """Lowered Bits Stored clipped the pixels with only a log warning, and the answer could change."""
    encoded = gdcm_encode(
        _twelve_bit(sample, tmp_path / "12.dcm"), tmp_path / "j2k.dcm", ENCODINGS["JPEG 2000"]
    )
    assert read_radiograph(encoded).shape == (169, 211)
    path = _with_header(encoded, tmp_path / "bits10.dcm", BitsStored=10, HighBit=9)
    refusal = assert_refused(path, UnreadableImage, "outside the (0028,0101) Bits Stored range 0..1023")
    assert "of a 16-bit codestream" in refusal.reason and "refused rather than clipped" in refusal.reason


def test_bits_stored_above_the_codestream_precision_is_refused(sample: Path, tmp_path: Path) -> None:
    encoded = gdcm_encode(sample, tmp_path / "ls.dcm", ENCODINGS["JPEG-LS"])
    path = _with_header(encoded, tmp_path / "bits12.dcm", BitsAllocated=16, BitsStored=12, HighBit=11)
    assert_refused(
        path, UnreadableImage, "the codestream holds 8-bit samples but (0028,0101) Bits Stored is 12"
    )


def test_wider_codestream_than_bits_allocated_is_refused(sample: Path, tmp_path: Path) -> None:
    encoded = gdcm_encode(
        _twelve_bit(sample, tmp_path / "12.dcm"), tmp_path / "wide_ls.dcm", ENCODINGS["JPEG-LS"]
    )
    path = _with_header(encoded, tmp_path / "narrow.dcm", BitsAllocated=8, BitsStored=8, HighBit=7)
    assert_refused(path, UnreadableImage, "more than (0028,0100) Bits Allocated 8 can hold")


def test_codestream_of_another_family_than_the_transfer_syntax_is_refused(
    sample: Path, tmp_path: Path
) -> None:
    encoded = gdcm_encode(sample, tmp_path / "j2k.dcm", ENCODINGS["JPEG 2000"])
    ds = pydicom.dcmread(encoded)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLSLossless
    ds.save_as(tmp_path / "mislabelled.dcm")
    assert_refused(tmp_path / "mislabelled.dcm", UnreadableImage, "holds a JPEG 2000 codestream, not JPEG-LS")


def test_rle_segments_must_match_the_samples(sample: Path, tmp_path: Path) -> None:
    encoded = gdcm_encode(sample, tmp_path / "rle.dcm", gdcm.TransferSyntax.RLELossless)
    assert read_radiograph(encoded).shape == (169, 211)
    path = _with_header(encoded, tmp_path / "rle16.dcm", BitsAllocated=16, BitsStored=12, HighBit=11)
    assert_refused(
        path, UnreadableImage, "the RLE header lists 1 segments but 1 samples of 16 bits allocated need 2"
    )


def _deflate_bomb(sample: Path, path: Path, inflated_mb: int) -> Path:
    """A deflated data set of ``inflated_mb`` MB of zeros, a few hundred KB on disk."""
    ds = pydicom.dcmread(sample, stop_before_pixels=True)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)  # the file meta, then a deflated header
    head = path.read_bytes()
    meta_end = 132 + 12 + struct.unpack_from("<I", head, 140)[0]
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)  # history reset: repeatable
    path.write_bytes(head[:meta_end] + block * inflated_mb + packer.flush())
    return path


def test_deflate_bomb_is_refused_while_inflating(sample: Path, tmp_path: Path) -> None:
    """1.6 MB inflated to 6.45 GB of memory and took 35 s; the inflated size is bounded first."""
    path = _deflate_bomb(sample, tmp_path / "bomb.dcm", 600)
    assert path.stat().st_size < 2_000_000
    started = time.perf_counter()
    assert_refused(path, UnreadableImage, "the data set inflates to more than 500,000,000 bytes")
    assert time.perf_counter() - started < 10


def test_deflated_data_set_followed_by_other_bytes_ends(sample: Path, tmp_path: Path) -> None:
    """Found by fuzzing: bytes after the end of the deflated stream made the size check loop forever."""
    path = _deflate_bomb(sample, tmp_path / "trailing.dcm", 2)
    path.write_bytes(path.read_bytes() + b"bytes after the deflated stream")
    with DecoderPool(workers=1, timeout_s=10) as pool, pytest.raises(UnreadableImage) as refused:
        pool.read(path)
    assert not isinstance(refused.value, DecoderFailed), refused.value.reason


def test_deflated_data_set_within_the_limit_is_read(sample: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(sample)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(
        read_radiograph(tmp_path / "deflated.dcm").pixels, read_radiograph(sample).pixels
    )


def _offset_of(data: bytes, tag: tuple[int, int], vr: bytes) -> int:
    found = data.find(struct.pack("<HH", *tag) + vr)
    assert found > 0
    return found


def test_element_longer_than_the_file_is_refused_without_allocating_it(sample: Path, tmp_path: Path) -> None:
    """A 4 GB length must cost neither 4 GB of memory nor a traceback."""
    data = bytearray(sample.read_bytes())
    at = _offset_of(data, (0x0018, 0x1020), b"LO")  # Software Versions, before the image module
    data[at + 4 : at + 8] = b"UN\x00\x00"  # a 4-byte length field
    data[at + 8 : at + 8] = struct.pack("<I", 0xFFFFFFF0)
    path = tmp_path / "long.dcm"
    path.write_bytes(bytes(data))
    with DecoderPool(workers=1, memory_bytes=256 << 20) as pool:
        with pytest.raises(UnreadableImage) as refused:
            pool.read(path)
    assert "more memory" not in refused.value.reason
    assert_refused(path, UnreadableImage, "declares a value of 4,294,967,280 bytes")


def test_tiff_with_200000_page_directories_is_refused_at_once(tmp_path: Path) -> None:
    """Counting every page directory (Pillow's n_frames) took 196 s."""
    Image.new("L", (64, 64), 100).save(tmp_path / "one.tif")
    data = bytearray((tmp_path / "one.tif").read_bytes())
    first = struct.unpack_from("<I", data, 4)[0]
    next_at = first + 2 + 12 * struct.unpack_from("<H", data, first)[0]
    chain = bytearray()
    start = len(data)
    for i in range(200_000):  # empty directories, each pointing at the next
        following = start + 6 * (i + 1) if i < 199_999 else 0
        chain += struct.pack("<HI", 0, following)
    struct.pack_into("<I", data, next_at, start)
    path = tmp_path / "pages.tif"
    path.write_bytes(bytes(data + chain))
    started = time.perf_counter()
    assert_refused(path, NotARadiograph, "TIFF holds more than 1,000 images")
    assert time.perf_counter() - started < 2


def test_stretched_sop_class_uid_does_not_quote_the_patient(
    sample: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A SOP Class UID whose length runs over the next elements once quoted the name and ID."""
    path = tmp_path / "stretched.dcm"
    path.write_bytes(stretched_sop_class_uid(sample.read_bytes()))
    refusal = assert_refused(path, NotARadiograph, "(0008,0016) SOP Class is a malformed value")
    caplog.clear()  # pydicom, in this process, warned with the raw value: predict reads in workers
    with DecoderPool(workers=1) as pool, pytest.raises(NotARadiograph) as in_worker:
        pool.read(path)
    for text in (str(refusal), str(in_worker.value), caplog.text):
        assert not any(value in text for value in SAMPLE_PATIENT), text


def test_unknown_modality_is_described_not_quoted_when_malformed(sample: Path, tmp_path: Path) -> None:
    path = _with_header(sample, tmp_path / "modality.dcm", Modality="Dog^AVeryGood")
    refusal = assert_refused(path, NotARadiograph, "(0008,0060) Modality a malformed value of 13 characters")
    assert "AVeryGood" not in str(refusal)


def test_uncompressed_codestream_check_is_skipped(sample: Path) -> None:
    """Native pixel data has no codestream header: nothing to compare, nothing refused."""
    assert read_radiograph(sample).metadata["transfer_syntax"] == pydicom.uid.ExplicitVRLittleEndian
