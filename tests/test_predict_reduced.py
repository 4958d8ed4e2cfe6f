"""Large images decoded already reduced (fracsight.io.reduced), as ``predict`` reads them: the
model input, the letterbox and the overlay picture must be those of the full image, bit for bit;
the overlay's size follows ``--overlay-max-side``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fracsight.cli import main
from fracsight.explain import overlay_image
from fracsight.inference import Analyser, _prepare
from fracsight.io import read_radiograph
from fracsight.io.dicom_display import DisplayTransform, VoiSource
from fracsight.io.radiograph import Radiograph
from fracsight.io.reduced import display_factor, float_image, full_shape, reduce_radiograph
from fracsight.preprocess import NotAnalysable, prepare

SIDE = 1024  # predict's default --overlay-max-side, the side the decoder reduces towards
MODEL_SIDE = 384


def _dicom(folder: Path, source: Path, height: int, width: int, name: str) -> Path:
    """A ``height`` x ``width`` 12-bit DX made from a real radiograph (``source``), uncompressed."""
    image = Image.open(source).convert("L").resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint16) * 16
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory, sample_images: list[Path]) -> list[Path]:
    """Square, and with sides that no reduction factor divides (edge boxes are partial)."""
    folder = tmp_path_factory.mktemp("large")
    sizes = [(3000, 3000), (2999, 2345), (2140, 1761), (1900, 4001)]
    return [
        _dicom(folder, sample_images[i % len(sample_images)], h, w, f"large_{h}x{w}.dcm")
        for i, (h, w) in enumerate(sizes)
    ]


def _rgb_hash(image: Image.Image) -> str:
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def test_reduced_read_gives_the_full_reads_model_input_overlay_and_geometry(
    large: list[Path], default_analyser: Analyser
) -> None:
    for path in large:
        full = read_radiograph(path, needed_side=SIDE)
        reduced = read_radiograph(path, needed_side=SIDE, model_side=MODEL_SIDE)
        factor = display_factor(*full.shape, SIDE)
        assert factor >= 2
        assert reduced.shape == tuple(-(-side // factor) for side in full.shape)  # partial edge boxes
        assert max(reduced.shape) >= SIDE and reduced.metadata["decoded_at_scale"] == 1 / factor
        assert full_shape(reduced) == full.shape and reduced.model_base is not None
        # Bit for bit: what the model sees, and where it maps back to.
        image_full, box_full = prepare(full.pixels, MODEL_SIDE)
        image_reduced, box_reduced = _prepare(reduced, MODEL_SIDE)
        np.testing.assert_array_equal(image_reduced, image_full)
        assert box_reduced == box_full
        # The overlay picture too: its size from the image's, the pixels from the same first reduce.
        finding = default_analyser.analyse(full)
        shown_full = overlay_image(full.pixels, finding)
        shown_reduced = overlay_image(reduced.pixels, finding)
        assert shown_reduced.size == shown_full.size and max(shown_full.size) == SIDE
        assert _rgb_hash(shown_reduced) == _rgb_hash(shown_full)


def test_the_decoder_process_hands_back_the_reduced_image(large: list[Path]) -> None:
    """Through the worker (model base pickled with the reply): the same answer as a full read."""
    full = Analyser(batch_size=1)
    reduced = Analyser(batch_size=1, reduce_pixels=True)
    try:
        for path in large[:2]:
            radiograph = reduced.read(path)
            assert radiograph.model_base is not None and max(radiograph.shape) < 2 * SIDE
            want, got = full.outcome(path), reduced.outcome(path)
            assert got.probability == want.probability and got.category == want.category
            assert got.letterbox == want.letterbox and got.peak() == want.peak()
            np.testing.assert_array_equal(got.heatmap, want.heatmap)
    finally:
        full.close()
        reduced.close()


def test_images_below_twice_the_side_are_left_as_read(sample_images: list[Path]) -> None:
    for path in sample_images:
        plain = read_radiograph(path, needed_side=SIDE)
        read = read_radiograph(path, needed_side=SIDE, model_side=MODEL_SIDE)
        np.testing.assert_array_equal(read.pixels, plain.pixels)
        assert read.model_base is None and full_shape(read) == plain.shape
    # 1024 x 1280, the larger FracAtlas size: not reduced either.
    pixels = np.random.default_rng(0).random((1280, 1024), dtype=np.float32)
    radiograph = reduce_radiograph(Radiograph(pixels, "x", "png"), SIDE, MODEL_SIDE)
    assert radiograph.pixels is pixels


def test_a_reduced_strip_is_refused_with_the_files_size() -> None:
    pixels = np.random.default_rng(1).random((4000, 300), dtype=np.float32)
    reduced = reduce_radiograph(Radiograph(pixels, "strip", "png"), SIDE, MODEL_SIDE)
    assert reduced.shape != (4000, 300)
    with pytest.raises(NotAnalysable, match="300 x 4000 pixels"):
        _prepare(reduced, MODEL_SIDE)


def test_jpeg2000_read_at_a_lower_level_reports_the_files_size(dicom_dir: Path) -> None:
    path = dicom_dir / "pljd_NM_Kakadu44_SOTmarkerincons.dcm"  # 2048 x 2500, read at half
    reduced = read_radiograph(path, needed_side=SIDE, model_side=MODEL_SIDE)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert reduced.metadata["decoded_at_scale"] == 0.5
    assert full_shape(reduced) == (int(ds.Rows), int(ds.Columns))
    _, box = _prepare(reduced, MODEL_SIDE)
    assert (box.height, box.width) == (int(ds.Rows), int(ds.Columns))


def _predict_overlay(tmp_path: Path, inputs: Path, *extra: str) -> tuple[int, Image.Image, dict]:
    """predict --json --heatmaps on the one file in ``inputs``: exit code, its picture, its record."""
    heat, out = tmp_path / "heat", tmp_path / "out.jsonl"
    options = ["--heatmaps", str(heat), "--output", str(out), "--no-progress", "--json", *extra]
    code = main(["predict", str(inputs), *options])
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    return code, Image.open(record["heatmap"]), record


def test_overlay_max_side(tmp_path: Path, large: list[Path]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    source = large[1]  # 2999 x 2345
    (folder / source.name).write_bytes(source.read_bytes())
    code, default, record = _predict_overlay(tmp_path / "a", folder)
    assert code == 0 and default.size == (round(2345 * SIDE / 2999), SIDE)
    assert record["image"] == {"width": 2345, "height": 2999}  # decoded reduced, told in the file's pixels
    code, small, _ = _predict_overlay(tmp_path / "b", folder, "--overlay-max-side", "300")
    assert code == 0 and small.size == (round(2345 * 300 / 2999), 300)
    code, whole, same = _predict_overlay(tmp_path / "c", folder, "--overlay-max-side", "0")
    assert code == 0 and whole.size == (2345, 2999)
    assert same["probability"] == record["probability"] and same["peak"] == record["peak"]


@pytest.mark.parametrize("value", ["-1", "50", "x"])
def test_overlay_max_side_refuses_what_cannot_be_drawn(value: str, tmp_path: Path, capsys) -> None:
    assert main(["predict", str(tmp_path), "--overlay-max-side", value]) == 2
    assert "--overlay-max-side" in capsys.readouterr().err


def test_float_image_holds_the_same_values() -> None:
    pixels = np.random.default_rng(2).random((301, 257), dtype=np.float32)
    for given in (pixels, pixels[:, ::2], pixels.astype(np.float64)):
        reference = Image.fromarray(np.asarray(given, dtype=np.float32), mode="F")
        np.testing.assert_array_equal(np.asarray(float_image(given)), np.asarray(reference))


def test_display_lookup_in_bands_equals_one_lookup() -> None:
    rng = np.random.default_rng(3)
    table = rng.random(4096, dtype=np.float32)
    unsigned = DisplayTransform(table, 0, VoiSource.WINDOW, None, None, False)
    stored = rng.integers(0, 5000, (700, 900), dtype=np.uint16)  # past the table: clipped
    np.testing.assert_array_equal(unsigned.apply(stored), np.take(table, stored, mode="clip"))
    signed = DisplayTransform(table, -2048, VoiSource.WINDOW, None, None, False)
    values = rng.integers(-3000, 3000, (700, 900), dtype=np.int16)
    want = np.take(table, values.astype(np.int32) + 2048, mode="clip")
    np.testing.assert_array_equal(signed.apply(values), want)
    assert unsigned.apply(stored[:0]).shape == (0, 900)
