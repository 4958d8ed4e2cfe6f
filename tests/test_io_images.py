"""Reading PNG, JPEG and TIFF: real radiographs from shared/data, and planted bad inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_refused
from PIL import Image, ImageFile

from fracsight.io import (
    MIN_DECODED_FRACTION,
    NotARadiograph,
    TruncatedImage,
    UnreadableImage,
    is_truncated,
    read_radiograph,
)

# GRAZPEDWRI-DX sample (Nagy et al., Sci Data 2022, CC BY 4.0): 16-bit gray PNGs, (rows, columns).
GRAZ_SHAPES = {
    "0001_1297860395_01_WRI-L1_M014.png": (727, 494),
    "0004_0542630449_01_WRI-L1_M003.png": (808, 573),
    "0020_0163123912_01_WRI-L1_M015.png": (1180, 1136),
}
# FracAtlas (Abedeen et al., Sci Data 2023, CC BY 4.0): JPEGs truncated at the source, with the share
# of rows that arrived (measured once by decoding with an end marker appended and finding the gray tail).
FRACATLAS_TRUNCATED = {
    "IMG0004036.jpg": 1.0,  # only the end-of-image marker is missing
    "IMG0004028.jpg": 0.95,
    "IMG0004084.jpg": 0.88,
    "IMG0004228.jpg": 0.67,
}
FRACATLAS_GRAY_L = "Fractured/IMG0000019.jpg"  # stored as 8-bit gray (mode L)
FRACATLAS_GRAY_RGB = "Fractured/IMG0000284.jpg"  # gray stored as RGB with equal channels


def find_fracatlas(fracatlas_dir: Path, name: str) -> Path:
    matches = sorted(fracatlas_dir.rglob(Path(name).name))
    assert matches, f"{name} not found under {fracatlas_dir}"
    return matches[0]


# --- real 16-bit PNGs ---------------------------------------------------------------------------


def test_graz_table_covers_every_sample(graz_dir: Path) -> None:
    assert {p.name for p in graz_dir.iterdir()} == set(GRAZ_SHAPES)


@pytest.mark.parametrize("name", sorted(GRAZ_SHAPES))
def test_16_bit_pngs_read_by_the_type_maximum(graz_dir: Path, name: str) -> None:
    path = graz_dir / name
    radiograph = read_radiograph(path)
    assert radiograph.format == "png" and radiograph.shape == GRAZ_SHAPES[name]
    assert radiograph.pixels.dtype == np.float32
    with Image.open(path) as image:
        stored = np.asarray(image)
    assert stored.dtype == np.uint16
    np.testing.assert_allclose(radiograph.pixels, stored / 65535.0, atol=1e-6)
    meta = radiograph.metadata
    assert meta["bits_stored"] == 16 and meta["mode"] == "I;16" and meta["intensity_mapping"] == "type-max"
    assert meta["truncated"] is False and meta["inverted"] is False


def test_12_bit_data_in_a_16_bit_png_is_not_stretched(graz_dir: Path, tmp_path: Path) -> None:
    with Image.open(graz_dir / sorted(GRAZ_SHAPES)[0]) as image:
        twelve_bit = (np.asarray(image) >> 4).astype(np.uint16)
    path = tmp_path / "twelve_bit.png"
    Image.fromarray(twelve_bit).save(path)
    pixels = read_radiograph(path).pixels
    assert float(pixels.max()) == pytest.approx(4095 / 65535, abs=1e-6)


def test_16_bit_and_big_endian_tiff_equal_the_png(graz_dir: Path, tmp_path: Path) -> None:
    png = graz_dir / sorted(GRAZ_SHAPES)[1]
    expected = read_radiograph(png).pixels
    with Image.open(png) as image:
        stored = np.asarray(image)
    little = tmp_path / "wrist16.tif"
    Image.fromarray(stored).save(little)
    big = tmp_path / "wrist16be.tif"
    Image.fromarray(stored.astype(">u2")).save(big)
    for path in (little, big):
        radiograph = read_radiograph(path)
        assert radiograph.format == "tiff" and radiograph.metadata["bits_stored"] == 16
        np.testing.assert_array_equal(radiograph.pixels, expected)


def test_float32_tiff_kept_in_unit_range_or_mapped_from_min_max(graz_dir: Path, tmp_path: Path) -> None:
    with Image.open(graz_dir / sorted(GRAZ_SHAPES)[2]) as image:
        stored = np.asarray(image).astype(np.float32)
    unit = tmp_path / "unit.tif"
    Image.fromarray(stored / 65535.0).save(unit)
    radiograph = read_radiograph(unit)
    assert radiograph.metadata["intensity_mapping"] == "as-is"
    np.testing.assert_allclose(radiograph.pixels, stored / 65535.0, atol=1e-7)
    scaled = tmp_path / "attenuation.tif"
    Image.fromarray(stored * 0.05 + 100.0).save(scaled)
    mapped = read_radiograph(scaled)
    assert mapped.metadata["intensity_mapping"] == "min-max"
    assert float(mapped.pixels.min()) == 0.0 and float(mapped.pixels.max()) == pytest.approx(1.0)
    broken = stored / 65535.0
    broken[10, 10] = np.nan
    nan_path = tmp_path / "nan.tif"
    Image.fromarray(broken).save(nan_path)
    assert_refused(nan_path, UnreadableImage, "1 float pixels are NaN or infinite")


def test_32_bit_integer_tiff_beyond_16_bits_is_refused(tmp_path: Path) -> None:
    values = (np.arange(64 * 64, dtype=np.int32).reshape(64, 64)) * 100
    path = tmp_path / "int32.tif"
    Image.fromarray(values).save(path)
    assert_refused(path, UnreadableImage, "outside the 16-bit range")


def test_truncated_png_is_refused(graz_dir: Path, tmp_path: Path) -> None:
    data = (graz_dir / sorted(GRAZ_SHAPES)[0]).read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    assert_refused(path, TruncatedImage, "PNG file is truncated")
    assert is_truncated(path) is True


# --- real JPEGs ---------------------------------------------------------------------------------


def test_gray_jpeg_reads_by_255(fracatlas_dir: Path) -> None:
    path = fracatlas_dir / FRACATLAS_GRAY_L
    radiograph = read_radiograph(path)
    with Image.open(path) as image:
        assert image.mode == "L"
        stored = np.asarray(image)
    np.testing.assert_allclose(radiograph.pixels, stored / 255.0, atol=1e-6)
    assert radiograph.format == "jpeg" and radiograph.metadata["bits_stored"] == 8
    assert is_truncated(path) is False


def test_real_gray_as_rgb_jpeg_is_accepted(fracatlas_dir: Path) -> None:
    path = fracatlas_dir / FRACATLAS_GRAY_RGB
    radiograph = read_radiograph(path)
    with Image.open(path) as image:
        assert image.mode == "RGB"
        red = np.asarray(image)[..., 0]
    assert radiograph.metadata["channels_merged"] is True and radiograph.shape == red.shape
    np.testing.assert_allclose(radiograph.pixels, red / 255.0, atol=1e-6)


def test_gray_jpeg_with_a_faint_tint_is_accepted(fracatlas_dir: Path, tmp_path: Path) -> None:
    # A digitised film with a slight blue cast: channels differ by a few levels everywhere.
    with Image.open(fracatlas_dir / FRACATLAS_GRAY_L) as image:
        gray = np.asarray(image).astype(np.int16)
    tinted = np.stack([gray, gray, np.clip(gray + 6, 0, 255)], axis=2).astype(np.uint8)
    path = tmp_path / "tinted.jpg"
    Image.fromarray(tinted).save(path, quality=90)
    with Image.open(path) as saved:
        rgb = np.asarray(saved).astype(int)
    assert (rgb.max(axis=2) - rgb.min(axis=2)).mean() > 2, "the tint must survive JPEG"
    radiograph = read_radiograph(path)
    assert radiograph.metadata["channels_merged"] is True
    assert np.abs(radiograph.pixels - gray / 255.0).mean() < 0.02


@pytest.mark.parametrize("name", sorted(FRACATLAS_TRUNCATED))
def test_truncated_fracatlas_jpegs(fracatlas_dir: Path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    path = find_fracatlas(fracatlas_dir, name)
    fraction = FRACATLAS_TRUNCATED[name]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with caplog.at_level(logging.WARNING):
        if fraction < MIN_DECODED_FRACTION:
            assert_refused(path, TruncatedImage, "of its rows were received")
        else:
            radiograph = read_radiograph(path)
            assert radiograph.metadata["truncated"] is True
            assert radiograph.metadata["decoded_fraction"] == pytest.approx(fraction, abs=0.01)
            assert name in caplog.text and "truncated" in caplog.text
            decoded_rows = int(round(fraction * radiograph.shape[0]))
            assert float(radiograph.pixels[:decoded_rows].std()) > 0.05  # real anatomy above the cut
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False, "the global Pillow switch must stay untouched"
    assert is_truncated(path) is True


def test_planted_truncated_jpeg(fracatlas_dir: Path, tmp_path: Path) -> None:
    data = (fracatlas_dir / FRACATLAS_GRAY_L).read_bytes()
    half = tmp_path / "half.jpg"
    half.write_bytes(data[: len(data) // 2])
    assert_refused(half, TruncatedImage, "JPEG is truncated")
    no_end_marker = tmp_path / "no_eoi.jpg"
    no_end_marker.write_bytes(data[:-2])
    radiograph = read_radiograph(no_end_marker)
    assert radiograph.metadata["truncated"] is True and radiograph.metadata["decoded_fraction"] == 1.0
    np.testing.assert_array_equal(radiograph.pixels, read_radiograph(fracatlas_dir / FRACATLAS_GRAY_L).pixels)
    header_only = tmp_path / "header_only.jpg"
    header_only.write_bytes(data[:200])
    with pytest.raises(UnreadableImage) as caught:
        read_radiograph(header_only)
    assert "header_only.jpg" in str(caught.value)


def test_format_is_detected_by_content_not_extension(fracatlas_dir: Path, tmp_path: Path) -> None:
    misnamed = tmp_path / "really_a_jpeg.png"
    misnamed.write_bytes((fracatlas_dir / FRACATLAS_GRAY_L).read_bytes())
    assert read_radiograph(misnamed).format == "jpeg"


def test_8_bit_tiff_equals_the_jpeg_it_came_from(fracatlas_dir: Path, tmp_path: Path) -> None:
    source = fracatlas_dir / FRACATLAS_GRAY_L
    path = tmp_path / "gray8.tif"
    with Image.open(source) as image:
        image.save(path)
    radiograph = read_radiograph(path)
    assert radiograph.format == "tiff" and radiograph.metadata["bits_stored"] == 8
    np.testing.assert_array_equal(radiograph.pixels, read_radiograph(source).pixels)


def test_palette_and_gray_alpha_pngs_are_read_as_gray(fracatlas_dir: Path, tmp_path: Path) -> None:
    with Image.open(fracatlas_dir / FRACATLAS_GRAY_L) as image:
        gray = image.copy()
    expected = np.asarray(gray) / 255.0
    palette = tmp_path / "palette.png"
    gray.convert("P").save(palette)
    gray_alpha = tmp_path / "gray_alpha.png"
    gray.convert("LA").save(gray_alpha)
    for path in (palette, gray_alpha):
        np.testing.assert_allclose(read_radiograph(path).pixels, expected, atol=1e-6)


# --- planted bad inputs (no shared data needed) ----------------------------------------------------


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        read_radiograph(tmp_path / "nowhere.png")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert_refused(folder, UnreadableImage, "is a directory")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.touch()
    assert_refused(path, UnreadableImage, "the file is empty (0 bytes)")


def test_random_bytes_text_and_gif(tmp_path: Path) -> None:
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(np.random.default_rng(7).integers(128, 256, 4096, dtype=np.uint8).tobytes())
    assert_refused(noise, UnreadableImage, "not a PNG, JPEG, TIFF or DICOM file (first bytes:")
    notes = tmp_path / "notes.png"
    notes.write_text("patient list, not an image\n")
    assert_refused(notes, UnreadableImage, "a text file")
    gif = tmp_path / "animation.gif"
    Image.new("L", (8, 8)).save(gif)
    assert_refused(gif, UnreadableImage, "a GIF image")


def test_broken_png_header(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert_refused(path, UnreadableImage, "PNG")


def colourful_photo(height: int = 240, width: int = 320) -> np.ndarray:
    """A synthetic colour photograph: hue varies across, brightness down."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    hue = x / width * 2 * np.pi
    light = 0.3 + 0.7 * y / height
    channels = [(np.sin(hue + shift) * 0.5 + 0.5) * light for shift in (0.0, 2.1, 4.2)]
    return (np.stack(channels, axis=2) * 255).astype(np.uint8)


@pytest.mark.parametrize("suffix", ["jpg", "png", "tif"])
def test_colour_photo_is_not_a_radiograph(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"holiday.{suffix}"
    Image.fromarray(colourful_photo()).save(path)
    assert_refused(path, NotARadiograph, "colour image (channels differ): not a radiograph")


def test_small_coloured_marker_on_gray_is_accepted(tmp_path: Path) -> None:
    gray = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    rgb = np.stack([gray] * 3, axis=2)
    rgb[5:15, 5:20] = (255, 0, 0)  # a red side marker: 150 of 76,800 pixels
    path = tmp_path / "marker.png"
    Image.fromarray(rgb).save(path)
    radiograph = read_radiograph(path)
    assert radiograph.metadata["channels_merged"] is True
    np.testing.assert_allclose(radiograph.pixels[100], gray[100] / 255.0, atol=1e-6)


def test_decompression_bomb_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # 400 megapixels in about 50 KB
    assert path.stat().st_size < 200_000

    def must_not_decode(self: object) -> None:
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_decode)
    assert_refused(
        path, UnreadableImage, "20000 x 20000 = 400,000,000 pixels exceeds the limit of 100,000,000"
    )


def test_pixel_limit_can_be_raised_and_lowered(tmp_path: Path) -> None:
    path = tmp_path / "gradient.png"
    Image.fromarray(np.tile(np.arange(200, dtype=np.uint8), (100, 1))).save(path)
    assert_refused(path, UnreadableImage, "exceeds the limit of 10,000", max_pixels=10_000)
    assert read_radiograph(path, max_pixels=20_000).shape == (100, 200)


def test_zero_height_tiff_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "zero.tif"
    Image.new("L", (10, 1)).save(path)
    data = bytearray(path.read_bytes())
    # Patch ImageLength (tag 257) to 0 in the first IFD.
    offset = int.from_bytes(data[4:8], "little")
    count = int.from_bytes(data[offset : offset + 2], "little")
    for i in range(count):
        entry = offset + 2 + 12 * i
        if int.from_bytes(data[entry : entry + 2], "little") == 257:
            data[entry + 8 : entry + 12] = (0).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(UnreadableImage) as caught:
        read_radiograph(path)
    assert "zero.tif" in str(caught.value)


def test_tiff_whose_next_directory_is_garbage_is_refused(graz_dir: Path, tmp_path: Path) -> None:
    # Found by fuzzing: a damaged "next IFD" offset makes Pillow fail while counting pages.
    path = tmp_path / "next_ifd.tif"
    source = next(p for p in sorted(graz_dir.iterdir()) if p.suffix == ".png")
    Image.open(source).save(path)
    data = bytearray(path.read_bytes())
    offset = int.from_bytes(data[4:8], "little")
    count = int.from_bytes(data[offset : offset + 2], "little")
    next_ifd = offset + 2 + 12 * count
    data[next_ifd : next_ifd + 4] = (len(data) // 2 & ~1).to_bytes(4, "little")  # into the pixels
    path.write_bytes(bytes(data))
    assert_refused(path, UnreadableImage, "not a valid TIFF file")


def test_one_bit_and_multi_page_images_are_not_radiographs(tmp_path: Path) -> None:
    bilevel = tmp_path / "bilevel.png"
    Image.new("1", (64, 64)).save(bilevel)
    assert_refused(bilevel, NotARadiograph, "1-bit black-and-white image")
    pages = tmp_path / "pages.tif"
    first, second = Image.new("L", (32, 32), 10), Image.new("L", (32, 32), 200)
    first.save(pages, save_all=True, append_images=[second])
    assert_refused(pages, NotARadiograph, "holds 2 images")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_a_viewer(tmp_path: Path, orientation: int) -> None:
    """Experts annotate the displayed image; the reader must give the same pixels Pillow displays."""
    from PIL import ImageOps

    stored = np.zeros((50, 80), np.uint8)
    stored[10:20, 30:45] = 255
    stored[40:45, 5:10] = 128
    path = tmp_path / f"o{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, quality=100, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)), dtype=np.float32) / 255.0
    got = read_radiograph(path)
    assert got.pixels.shape == expected.shape
    assert np.abs(got.pixels - expected).max() < 1e-6
    assert got.metadata["exif_orientation"] == orientation
