"""JPEG 2000 DICOM decoded at a lower resolution level: same values as the full decode, smaller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder

from fracsight.inference import DECODE_SIDE
from fracsight.io import TruncatedImage, UnreadableImage, read_radiograph
from fracsight.io.dicom_j2k import _decode_codestream, codestream_precision, reduction_level

# The JPEG 2000 radiographs among the shared samples (12, 15 and 10 bits stored; lossless and lossy).
J2K_SAMPLES = [
    "pljd_966_fixed.dcm",
    "pljd_NM_Kakadu44_SOTmarkerincons.dcm",
    "pljd_RG1_J2KI.dcm",
    "pljd_RG3_J2KI.dcm",
    "pljd_RG3_J2KR.dcm",
]


def _frame(path: Path) -> tuple[pydicom.Dataset, bytes]:
    ds = pydicom.dcmread(path)
    return ds, next(generate_frames(ds.PixelData, number_of_frames=1))


@pytest.mark.parametrize("name", J2K_SAMPLES)
def test_full_level_through_pillow_equals_gdcm_stored_values(dicom_dir: Path, name: str) -> None:
    # Level 0 of the fast path must give exactly the stored values the LUTs expect:
    # this is what proves the precision shift right for every bit depth here.
    ds, frame = _frame(dicom_dir / name)
    reference, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, decoding_plugin="gdcm")
    # The codestream's own precision rules (Kakadu44 says 16 bits for 12 stored).
    assert codestream_precision(frame) in (int(ds.BitsStored), int(ds.BitsAllocated))
    np.testing.assert_array_equal(_decode_codestream(frame, 0), reference)


@pytest.mark.parametrize("name", J2K_SAMPLES)
def test_reduced_read_is_a_smaller_copy_of_the_full_read(dicom_dir: Path, name: str) -> None:
    path = dicom_dir / name
    full = read_radiograph(path)
    reduced = read_radiograph(path, needed_side=512)
    scale = reduced.metadata["decoded_at_scale"]
    factor = round(1 / scale)
    assert factor >= 2 and full.metadata["decoded_at_scale"] == 1.0
    assert max(reduced.shape) >= 512
    assert reduced.shape == tuple(-(-side // factor) for side in full.shape)
    assert reduced.metadata["rows"] == full.metadata["rows"]  # the header's size is kept
    # The lower resolution level is a low-pass copy: compare with block means of the full image.
    h, w = (side // factor for side in full.shape)
    blocks = full.pixels[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3))
    assert np.abs(blocks - reduced.pixels[:h, :w]).mean() < 0.02
    assert reduced.metadata["inverted"] == full.metadata["inverted"]


def test_no_reduction_when_the_image_is_not_larger_than_needed(dicom_dir: Path) -> None:
    path = dicom_dir / "pljd_RG3_J2KR.dcm"  # 1760 x 1760
    same = read_radiograph(path, needed_side=1000)
    assert same.metadata["decoded_at_scale"] == 1.0
    np.testing.assert_array_equal(same.pixels, read_radiograph(path).pixels)


def test_reduction_level_keeps_the_longer_side_at_least_as_needed() -> None:
    assert reduction_level(3000, 3000, 1024) == 1
    assert reduction_level(3000, 2000, 700) == 2
    assert reduction_level(1000, 4100, 1024) == 2
    assert reduction_level(500, 500, 384) == 0
    assert reduction_level(100_000, 100_000, 1) == 5  # never more levels than a codestream usually has


def test_broken_j2k_is_refused_with_or_without_reduction(dicom_dir: Path, tmp_path: Path) -> None:
    # A real codestream that neither decoder can read, and one cut in half: the fast path
    # steps aside and the full decode gives the usual refusal.
    for kwargs in ({}, {"needed_side": 256}):
        with pytest.raises(UnreadableImage, match="could not be decoded from 'JPEG 2000"):
            read_radiograph(dicom_dir / "pljd_966.dcm", **kwargs)
    data = (dicom_dir / "pljd_RG3_J2KR.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedImage):
        read_radiograph(cut, needed_side=256)


def test_signed_j2k_takes_the_full_decode(dicom_dir: Path, tmp_path: Path) -> None:
    ds, frame = _frame(dicom_dir / "pljd_RG3_J2KR.dcm")
    signed = bytearray(frame)
    signed[42] |= 0x80  # the SIZ marker's sign bit
    assert codestream_precision(bytes(signed)) is None
    assert codestream_precision(b"\x00" * 64) is None  # a JP2 wrapper or junk, not a codestream


def test_prediction_on_a_reduced_decode_matches_the_full_one(dicom_dir: Path, default_analyser) -> None:
    path = dicom_dir / "pljd_NM_Kakadu44_SOTmarkerincons.dcm"  # 2500 x 2048
    reduced = default_analyser.read(path)
    assert reduced.metadata["decoded_at_scale"] == 0.5 and max(reduced.shape) >= DECODE_SIDE
    fast = default_analyser.analyse(reduced)
    full = default_analyser.analyse(read_radiograph(path))
    assert abs(fast.probability - full.probability) < 0.03
    assert np.abs(fast.heatmap - full.heatmap).max() < 0.1


def test_evaluation_reads_in_full_so_expert_boxes_keep_their_coordinates(dicom_dir: Path) -> None:
    from fracsight.inference import Analyser

    full = Analyser(decode_side=None).read(dicom_dir / "pljd_NM_Kakadu44_SOTmarkerincons.dcm")
    assert full.shape == (2500, 2048) and full.metadata["decoded_at_scale"] == 1.0
