"""Duplicate fingerprints and grouping, on real FracAtlas radiographs copied and altered in tmp_path."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from fracsight.data.duplicates import (
    DuplicateKind,
    FingerprintError,
    duplicate_groups,
    find_duplicate_pairs,
    group_images,
    image_fingerprint,
    scan_image,
    scan_images,
    truncation_fill_mask,
)
from fracsight.io.pillow_reader import orient_as_displayed

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FRACATLAS = SHARED / "data" / "fracatlas"


def _atlas(name: str) -> Path:
    if not FRACATLAS.is_dir():
        pytest.skip(f"shared data not found at {FRACATLAS}")
    hits = list((FRACATLAS / "images").glob(f"*/{name}"))
    assert hits, f"{name} missing from FracAtlas"
    return hits[0]


def _gray(path: Path) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(path)).convert("L")


def _jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_fingerprint_rejects_bad_arrays() -> None:
    with pytest.raises(FingerprintError, match="2-D"):
        image_fingerprint(np.zeros(10))
    with pytest.raises(FingerprintError, match="NaN"):
        image_fingerprint(np.full((8, 8), np.nan))
    with pytest.raises(FingerprintError, match="empty"):
        image_fingerprint(np.zeros((0, 5)))


def test_identical_pixels_share_digest_and_rgb_matches_its_luma() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (60, 50), dtype=np.uint8)
    a, b = image_fingerprint(img), image_fingerprint(img.copy())
    assert a.sha256 == b.sha256
    assert a.dhash_distance(b) == 0
    rgb = np.repeat(img[..., None], 3, axis=2)
    assert image_fingerprint(rgb).dhash_distance(a) == 0


def test_brightness_and_contrast_keep_the_fingerprint_close() -> None:
    """An increasing intensity change is a re-windowed copy, not a new image."""
    yy, xx = np.mgrid[0:200, 0:160]
    img = (100 + 80 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.float64)
    brighter = 0.7 * img + 40
    other = (100 + 80 * np.sin(yy / 7.0) * np.cos(xx / 17.0)).astype(np.float64)
    fp, fb, fo = image_fingerprint(img), image_fingerprint(brighter), image_fingerprint(other)
    assert fp.dhash_distance(fb) == 0
    assert fp.correlation(fb) > 0.999
    assert fp.dhash_distance(fo) > 40
    assert duplicate_groups([fp, fb, fo]) == [0, 0, 1]


def test_exact_duplicates_always_grouped_even_at_zero_tolerance() -> None:
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (40, 40), dtype=np.uint8) for _ in range(3)]
    fps = [image_fingerprint(i) for i in (imgs[0], imgs[1], imgs[0], imgs[2])]
    pairs = find_duplicate_pairs(fps, max_distance=0, min_correlation=1.0)
    assert [(p.i, p.j, p.kind) for p in pairs] == [(0, 2, DuplicateKind.EXACT)]
    assert duplicate_groups(fps, max_distance=0, min_correlation=1.0) == [0, 1, 0, 2]


def test_arguments_are_checked() -> None:
    fp = image_fingerprint(np.eye(8))
    with pytest.raises(ValueError, match="max_distance"):
        find_duplicate_pairs([fp], max_distance=-1)
    with pytest.raises(ValueError, match="min_correlation"):
        find_duplicate_pairs([fp], min_correlation=1.5)
    with pytest.raises(ValueError, match="max_distance"):  # NaN would silently turn the dHash rule off
        find_duplicate_pairs([fp], max_distance=float("nan"))
    assert duplicate_groups([]) == []


def test_fill_mask_marks_only_uniform_grey_blocks() -> None:
    pixels = np.full((20, 20), 60, dtype=np.uint8)
    pixels[8:, 8:] = 128
    mask = truncation_fill_mask(pixels)
    assert mask[8:, 8:].all()
    assert not mask[:8].any() and not mask[:, :8].any()


@pytest.fixture()
def altered_copies(tmp_path: Path) -> dict[str, Path]:
    """Real radiographs plus copies re-encoded, resized, re-windowed and truncated."""
    src = _atlas("IMG0000019.jpg")  # large fractured leg radiograph
    other = _atlas("IMG0000025.jpg")
    out = {"original": tmp_path / "original.jpg", "other": tmp_path / "other.jpg"}
    shutil.copy(src, out["original"])
    shutil.copy(other, out["other"])
    img = _gray(src)
    w, h = img.size
    out["small_q60"] = tmp_path / "small_q60.jpg"
    out["small_q60"].write_bytes(
        _jpeg_bytes(img.resize((w * 2 // 5, h * 2 // 5), Image.Resampling.LANCZOS), 60)
    )
    out["gamma"] = tmp_path / "gamma.png"
    img.point(lambda v: int(255 * (v / 255) ** 0.8)).save(out["gamma"])
    data = _jpeg_bytes(img, 92)
    out["truncated"] = tmp_path / "truncated.jpg"
    out["truncated"].write_bytes(data[: int(len(data) * 0.96)])  # fracsight.io keeps >= 90% of the rows
    out["mostly_missing"] = tmp_path / "mostly_missing.jpg"
    out["mostly_missing"].write_bytes(data[: int(len(data) * 0.8)])
    return out


def test_truncated_copy_is_flagged_and_still_matches(altered_copies: dict[str, Path]) -> None:
    scan = scan_image(altered_copies["truncated"])
    assert scan.truncated and scan.error is None and scan.fingerprint is not None
    assert not scan.fingerprint.complete and scan.decoded_fraction is not None and scan.decoded_fraction < 1
    original = scan_image(altered_copies["original"]).fingerprint
    assert original is not None and not scan_image(altered_copies["original"]).truncated
    assert scan.fingerprint.dhash_distance(original) <= 2
    assert scan.fingerprint.correlation(original) > 0.99


def test_copy_that_io_refuses_is_flagged_not_fingerprinted(altered_copies: dict[str, Path]) -> None:
    """Under 90% of the rows: every command refuses it, so it is reported truncated and never grouped."""
    scan = scan_image(altered_copies["mostly_missing"])
    assert scan.truncated and scan.fingerprint is None and scan.decoded_fraction is None
    assert "rows were received" in (scan.error or "")
    names = ["original", "mostly_missing"]
    assert group_images([altered_copies[n] for n in names], workers=1) == [0, 1]


def test_group_images_joins_copies_and_separates_other_radiographs(altered_copies: dict[str, Path]) -> None:
    names = ["original", "other", "small_q60", "gamma", "truncated"]
    groups = group_images([altered_copies[n] for n in names], workers=1)
    by_name = dict(zip(names, groups, strict=True))
    assert by_name["original"] == by_name["small_q60"] == by_name["gamma"] == by_name["truncated"]
    assert by_name["other"] != by_name["original"]
    assert sorted(set(groups)) == [0, 1]


def test_unreadable_file_gets_its_own_group(altered_copies: dict[str, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    paths = [altered_copies["original"], junk, altered_copies["small_q60"]]
    scan = scan_image(junk)
    assert scan.fingerprint is None and "cannot decode" in (scan.error or "")
    assert group_images(paths, workers=1) == [0, 1, 0]


def test_parallel_scan_equals_sequential(tmp_path: Path) -> None:
    src = _atlas("IMG0000001.jpg")
    img = _gray(src)
    paths = []
    for k in range(16):
        p = tmp_path / f"c{k:02d}.jpg"
        p.write_bytes(_jpeg_bytes(img.rotate(k * 20, fillcolor=0), 85))
        paths.append(p)
    seq = scan_images(paths, workers=1)
    par = scan_images(paths, workers=2)
    assert [s.fingerprint for s in seq] == [s.fingerprint for s in par]


def test_known_fracatlas_pairs() -> None:
    """Checked by eye: 2617/4028 is one radiograph (4028 truncated, opposite label); 1148/2102 differ."""
    names = ["IMG0002617.jpg", "IMG0004028.jpg", "IMG0001148.jpg", "IMG0002102.jpg"]
    scans = [scan_image(_atlas(n)) for n in names]
    assert [s.truncated for s in scans] == [False, True, False, False]
    assert duplicate_groups([s.fingerprint for s in scans]) == [0, 0, 1, 2]  # type: ignore[misc]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_as_displayed_turns_like_exif_transpose(orientation: int) -> None:
    stored = np.arange(6 * 11, dtype=np.uint8).reshape(6, 11)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(buf)))
    np.testing.assert_array_equal(orient_as_displayed(stored, orientation), expected)


@pytest.mark.parametrize("orientation", [3, 6])
def test_truncation_mask_follows_the_stored_block_grid(tmp_path: Path, orientation: int) -> None:
    """Rotated files are truncated at the stored bottom: the mask must use the stored 8 x 8 grid.

    With a size that is not a multiple of 8, masking after the turn missed up to 7 grey rows.
    """
    rng = np.random.default_rng(0)
    pixels = (rng.random((101, 93)) * 60 + 20).astype(np.uint8)  # 101 x 93: blocks do not tile it
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif)
    turned = tmp_path / "turned.jpg"
    turned.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 94 // 100])
    scan = scan_image(turned)
    assert scan.truncated and scan.fingerprint is not None
    # Decoded pixels are 20..80: exactly the grey 128 ones were never decoded.
    grey = np.asarray(ImageOps.exif_transpose(_completed(turned))) == 128
    assert 0.01 < grey.mean() < 0.1
    assert scan.decoded_fraction == pytest.approx(1 - grey.mean(), abs=1e-9)
    assert np.frombuffer(scan.fingerprint.thumb_valid, np.uint8).sum() < 1024 * (1 - grey.mean())


def _completed(path: Path) -> Image.Image:
    """A truncated JPEG decoded as far as it goes: its bytes with the end-of-image marker appended."""
    img = Image.open(io.BytesIO(path.read_bytes() + b"\xff\xd9"))
    img.load()
    return img
