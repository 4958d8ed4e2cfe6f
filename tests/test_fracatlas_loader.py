"""FracAtlas loader: labels, regions, boxes (COCO, YOLO fallback, EXIF orientation), on real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fracsight.data.boxes import read_yolo_boxes
from fracsight.data.fracatlas import (
    FracAtlasLayoutError,
    Region,
    View,
    load_fracatlas,
    region_from_flags,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FRACATLAS = SHARED / "data" / "fracatlas"
HEADER = (
    "image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,frontal,lateral,oblique"
)


def _need_data() -> None:
    if not FRACATLAS.is_dir():
        pytest.skip(f"shared data not found at {FRACATLAS}")


def test_region_mapping() -> None:
    assert region_from_flags({"hand": "1"}) is Region.HAND
    assert region_from_flags({"hip": "1", "leg": "0"}) is Region.HIP
    assert region_from_flags({"hand": "1", "shoulder": "1", "mixed": "0"}) is Region.MIXED
    assert region_from_flags({"leg": "1", "mixed": "1"}) is Region.MIXED
    assert region_from_flags({}) is Region.UNKNOWN
    with pytest.raises(FracAtlasLayoutError, match="'hand'.*'yes'"):
        region_from_flags({"image_id": "x.jpg", "hand": "yes"})


def test_yolo_boxes_to_pixels(tmp_path: Path) -> None:
    label = tmp_path / "a.txt"
    label.write_text("0 0.5 0.25 0.2 0.1\n\n")
    assert read_yolo_boxes(label, 200, 400) == [(80.0, 80.0, 120.0, 120.0)]
    label.write_text("0 0.5 0.25\n")
    with pytest.raises(ValueError, match="line 1 has 3 fields"):
        read_yolo_boxes(label, 10, 10)


@pytest.fixture()
def mini_atlas(tmp_path: Path) -> Path:
    """Three real images in the FracAtlas layout, with hand-written annotations."""
    _need_data()
    root = tmp_path / "atlas"
    for folder in ("Fractured", "Non_fractured"):
        (root / "images" / folder).mkdir(parents=True)
    (root / "annotations" / "yolo").mkdir(parents=True)
    shutil.copy(FRACATLAS / "images/Fractured/IMG0000019.jpg", root / "images/Fractured")  # 1024 x 1280
    shutil.copy(FRACATLAS / "images/Fractured/IMG0000025.jpg", root / "images/Fractured")  # 1280 x 1024
    shutil.copy(FRACATLAS / "images/Non_fractured/IMG0000001.jpg", root / "images/Non_fractured")
    (root / "dataset.csv").write_text(
        "\n".join(
            [
                HEADER,
                "IMG0000019.jpg,0,1,0,0,0,1,0,1,1,1,0,0",
                "IMG0000025.jpg,1,0,0,1,1,0,0,1,1,0,1,1",
                "IMG0000001.jpg,0,0,0,0,0,0,1,0,0,1,1,0",
            ]
        )
        + "\n"
    )
    coco = {
        # COCO says half the real size: the loader must rescale (and warn).
        "images": [{"id": 1, "width": 512, "height": 640, "file_name": "IMG0000019.jpg"}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 0, "bbox": [10, 20, 30, 40]}],
        "categories": [{"id": 0, "name": "fractured"}],
    }
    (root / "annotations" / "coco_fracture_masks.json").write_text(json.dumps(coco))
    (root / "annotations/yolo/IMG0000025.txt").write_text("0 0.5 0.5 0.1 0.2\n")
    (root / "annotations/yolo/IMG0000001.txt").write_text("")
    return root


def test_mini_atlas_fields(mini_atlas: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = {im.image_id: im for im in load_fracatlas(mini_atlas)}
    assert list(images) == ["IMG0000001.jpg", "IMG0000019.jpg", "IMG0000025.jpg"]
    leg = images["IMG0000019.jpg"]
    assert leg.fractured and leg.hardware and leg.region is Region.LEG and leg.views == {View.FRONTAL}
    assert (leg.width, leg.height) == (1024, 1280)
    assert leg.box_source == "coco"
    assert leg.boxes == ((20.0, 40.0, 80.0, 120.0),)  # rescaled x2 from the 512 x 640 COCO frame
    assert "COCO size 512x640" in caplog.text
    mixed = images["IMG0000025.jpg"]
    assert mixed.region is Region.MIXED and mixed.box_source == "yolo"
    assert len(mixed.boxes) == 1 and mixed.boxes[0] == pytest.approx((576.0, 409.6, 704.0, 614.4))
    negative = images["IMG0000001.jpg"]
    assert not negative.fractured and negative.boxes == () and negative.box_source == "none"
    assert negative.views == {View.FRONTAL, View.LATERAL} and negative.multiscan
    assert negative.csv_fractured is False and negative.fracture_count == 0


def test_layout_errors(mini_atlas: Path) -> None:
    (mini_atlas / "images/Non_fractured/IMG0000001.jpg").unlink()
    with pytest.raises(FracAtlasLayoutError, match="1 images not on disk.*IMG0000001"):
        load_fracatlas(mini_atlas)
    (mini_atlas / "dataset.csv").unlink()
    with pytest.raises(FracAtlasLayoutError, match="no dataset.csv"):
        load_fracatlas(mini_atlas)
    with pytest.raises(FracAtlasLayoutError, match="no JPEGs"):
        load_fracatlas(mini_atlas / "images")


def test_real_fracatlas() -> None:
    _need_data()
    images = load_fracatlas(FRACATLAS)
    assert len(images) == 3229
    assert sum(im.fractured for im in images) == 560
    assert all(im.csv_fractured == im.fractured for im in images)
    fractured = [im for im in images if im.fractured]
    assert all(len(im.boxes) == im.fracture_count for im in fractured)
    assert not any(im.boxes for im in images if not im.fractured)
    for im in fractured:
        for x0, y0, x1, y1 in im.boxes:
            assert 0 <= x0 < x1 <= im.width + 0.5 and 0 <= y0 < y1 <= im.height + 0.5, im.image_id
    # Stored 373 x 454 with EXIF orientation 8; annotated (and returned) in the displayed 454 x 373 frame.
    rotated = next(im for im in images if im.image_id == "IMG0002628.jpg")
    assert (rotated.width, rotated.height, rotated.exif_orientation) == (454, 373, 8)
    yolo = read_yolo_boxes(FRACATLAS / "annotations/yolo/IMG0002628.txt", 454, 373)
    assert len(rotated.boxes) == 1 and rotated.boxes[0] == pytest.approx(
        yolo[0], abs=0.5
    )  # COCO agrees, unscaled
    raw_frame = read_yolo_boxes(FRACATLAS / "annotations/yolo/IMG0002628.txt", 373, 454)
    assert rotated.boxes[0] != pytest.approx(raw_frame[0], abs=5)
    regions = {r: sum(im.region is r for im in images) for r in Region}
    assert regions[Region.MIXED] == 319 and regions[Region.UNKNOWN] == 0
