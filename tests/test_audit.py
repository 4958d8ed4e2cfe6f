"""Data audit: every kind of defect planted in a small dataset built from real FracAtlas radiographs."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from fracsight.cli import main
from fracsight.data.audit import (
    AuditInputError,
    DefectKind,
    audit,
    records_from_manifest,
    render_html,
    summary_text,
)
from fracsight.data.manifest import ManifestError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FRACATLAS = SHARED / "data" / "fracatlas"
HEADER = (
    "image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,frontal,lateral,oblique"
)


def _atlas(name: str) -> Path:
    if not FRACATLAS.is_dir():
        pytest.skip(f"shared data not found at {FRACATLAS}")
    return next((FRACATLAS / "images").glob(f"*/{name}"))


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "region", "boxes"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture()
def planted(tmp_path: Path) -> Path:
    """A manifest of real radiographs with one planted defect of each kind."""
    data = tmp_path / "data"
    data.mkdir()
    for name, src in {
        "pos.jpg": "IMG0000019.jpg",  # fractured leg
        "neg.jpg": "IMG0000001.jpg",
        "neg2.jpg": "IMG0000003.jpg",
        "neg3.jpg": "IMG0000006.jpg",
        "hand.jpg": "IMG0000025.jpg",
    }.items():
        shutil.copy(_atlas(src), data / name)
    pos = ImageOps.exif_transpose(Image.open(data / "pos.jpg")).convert("L")
    pos.resize((pos.width // 3, pos.height // 3), Image.Resampling.LANCZOS).save(
        data / "pos_small.jpg", quality=70
    )
    shutil.copy(data / "neg.jpg", data / "neg_flipped.jpg")  # same pixels, opposite label below
    buf = io.BytesIO()
    Image.open(_atlas("IMG0000007.jpg")).convert("L").save(buf, "JPEG", quality=90)
    (data / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 3 // 4])
    (data / "junk.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    box = "[[100, 120, 180, 200]]"
    rows = [
        {"path": "pos.jpg", "label": "1", "region": "leg", "boxes": box},
        {"path": "pos_small.jpg", "label": "1", "region": "leg", "boxes": "[[33, 40, 60, 66]]"},
        {"path": "neg.jpg", "label": "0", "region": "leg", "boxes": ""},
        {"path": "neg_flipped.jpg", "label": "1", "region": "leg", "boxes": ""},  # flipped, no box
        {"path": "neg2.jpg", "label": "0", "region": "leg", "boxes": box},  # negative with a box
        {
            "path": "hand.jpg",
            "label": "fractured",
            "region": "Hand",
            "boxes": "[[1200, 10, 1400, 90]]",
        },  # outside
        {"path": "neg3.jpg", "label": "", "region": "hand", "boxes": ""},  # unlabelled
        {"path": "cut.jpg", "label": "0", "region": "leg", "boxes": "[]"},
        {"path": "junk.jpg", "label": "0", "region": "", "boxes": ""},
    ]
    return _write_manifest(data / "manifest.csv", rows)


def _kinds_of(report, kind: DefectKind) -> list[tuple[str, ...]]:
    return [d.ids for d in report.defects if d.kind is kind]


def test_every_planted_defect_is_found(planted: Path, tmp_path: Path) -> None:
    splits = tmp_path / "splits.csv"
    splits.write_text(
        "id,split\npos.jpg,train\npos_small.jpg,test\nneg.jpg,train\nneg_flipped.jpg,train\n"
        "neg2.jpg,val\nhand.jpg,val\nneg3.jpg,test\ncut.jpg,test\nghost.jpg,test\n"
    )
    report = audit(planted, split_file=splits, workers=1)
    assert report.source == "manifest"
    assert _kinds_of(report, DefectKind.TRUNCATED) == [("cut.jpg",)]
    assert _kinds_of(report, DefectKind.UNREADABLE) == [("junk.jpg",)]
    groups = {frozenset(g.members): g for g in report.duplicate_groups}
    assert set(groups) == {frozenset({"pos.jpg", "pos_small.jpg"}), frozenset({"neg.jpg", "neg_flipped.jpg"})}
    resized = groups[frozenset({"pos.jpg", "pos_small.jpg"})]
    assert resized.kind.value == "near" and resized.cross_split and not resized.conflicting_labels
    flipped = groups[frozenset({"neg.jpg", "neg_flipped.jpg"})]
    assert flipped.kind.value == "exact" and flipped.conflicting_labels and not flipped.cross_split
    assert _kinds_of(report, DefectKind.CONFLICTING_LABELS) == [("neg.jpg", "neg_flipped.jpg")]
    assert _kinds_of(report, DefectKind.CROSS_SPLIT_DUPLICATES) == [("pos.jpg", "pos_small.jpg")]
    assert _kinds_of(report, DefectKind.FRACTURED_WITHOUT_BOXES) == [("neg_flipped.jpg",)]
    assert _kinds_of(report, DefectKind.NEGATIVE_WITH_BOXES) == [("neg2.jpg",)]
    bad = [d for d in report.defects if d.kind is DefectKind.BAD_BOX]
    assert [d.ids for d in bad] == [("hand.jpg",)] and "outside the 1280x1024 image" in bad[0].detail
    assert _kinds_of(report, DefectKind.MISSING_LABEL) == [("neg3.jpg",)]
    mismatch = [d for d in report.defects if d.kind is DefectKind.SPLIT_FILE_MISMATCH]
    assert [d.ids for d in mismatch] == [("junk.jpg",), ("ghost",)]  # split-file ids by the one id rule
    assert len(set(report.groups)) == 9 - 2  # two pairs collapse

    text = summary_text(report)
    assert "conflicting_labels" in text and "neg_flipped.jpg [fractured, train]" in text
    assert "cut.jpg: truncated;" in text
    balance = {(b.split, b.region): b for b in report.balance}
    assert balance[("train", "leg")].fractured == 2 and balance[("train", "leg")].not_fractured == 1
    assert balance[("test", "hand")].unlabelled == 1


def test_clean_dataset_has_no_defects(tmp_path: Path) -> None:
    for name, src in {"a.jpg": "IMG0000019.jpg", "b.jpg": "IMG0000001.jpg"}.items():
        shutil.copy(_atlas(src), tmp_path / name)
    manifest = _write_manifest(
        tmp_path / "m.csv",
        [
            {"path": "a.jpg", "label": "1", "region": "leg", "boxes": "[[10, 10, 50, 50]]"},
            {"path": "b.jpg", "label": "0", "region": "leg", "boxes": ""},
        ],
    )
    report = audit(manifest, workers=1)
    assert report.defects == [] and not report.found()
    assert main(["audit", str(manifest), "--fail-on", "any"]) == 0


def test_cli_exit_codes_and_outputs(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit.json"
    assert main(["audit", str(planted), "--json", str(out), "--workers", "1"]) == 0
    doc = json.loads(out.read_text())
    assert doc["counts"]["conflicting_labels"] == 1 and doc["counts"]["truncated"] == 1
    assert {img["id"] for img in doc["images"] if img["truncated"]} == {"cut.jpg"}
    assert "Defects found:" in capsys.readouterr().out
    assert main(["audit", str(planted), "--fail-on", "conflicting_labels,truncated"]) == 1
    assert main(["audit", str(planted), "--fail-on", "cross_split_duplicates"]) == 0  # no split file
    assert main(["audit", str(planted), "--fail-on", "leaks"]) == 2
    assert "unknown kind(s) ['leaks']" in capsys.readouterr().err
    report_dir = tmp_path / "rep"
    assert main(["audit", str(planted), "--report", str(report_dir)]) == 0
    page = (report_dir / "audit.html").read_text()
    assert "conflicting labels" in page and "data:image/png;base64," in page
    assert json.loads((report_dir / "audit.json").read_text())["n_images"] == 9


def test_manifest_errors_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "m.csv"
    bad.write_text("file,label\na.jpg,1\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['path'\]"):
        records_from_manifest(bad)
    bad.write_text("path,label\na.jpg,maybe\n")
    with pytest.raises(ManifestError, match="line 2: label 'maybe'"):
        records_from_manifest(bad)
    bad.write_text('path,label,boxes\na.jpg,1,"[[1, 2, 3]]"\n')
    with pytest.raises(ManifestError, match="line 2: column 'boxes': boxes must be"):
        records_from_manifest(bad)
    bad.write_text("path,label\na.jpg,1\na.jpg,0\n")
    with pytest.raises(ManifestError, match="listed twice"):
        records_from_manifest(bad)
    with pytest.raises(AuditInputError, match="not a FracAtlas folder"):
        audit(tmp_path)
    assert main(["audit", str(tmp_path / "nowhere.csv")]) == 2


def test_fracatlas_layout_label_and_box_conflicts(tmp_path: Path) -> None:
    """A FracAtlas folder whose csv contradicts its folders and whose YOLO boxes sit on a negative."""
    root = tmp_path / "atlas"
    for folder in ("Fractured", "Non_fractured"):
        (root / "images" / folder).mkdir(parents=True)
    (root / "annotations" / "yolo").mkdir(parents=True)
    shutil.copy(_atlas("IMG0000019.jpg"), root / "images/Fractured")
    shutil.copy(_atlas("IMG0000001.jpg"), root / "images/Non_fractured")
    (root / "dataset.csv").write_text(
        f"{HEADER}\nIMG0000019.jpg,0,1,0,0,0,0,0,0,0,1,0,0\nIMG0000001.jpg,0,1,0,0,0,0,0,0,0,1,0,0\n"
    )
    (root / "annotations/yolo/IMG0000001.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    report = audit(root, workers=1)
    assert report.source == "fracatlas"
    assert _kinds_of(report, DefectKind.LABEL_SOURCES_DISAGREE) == [("IMG0000019.jpg",)]
    assert _kinds_of(report, DefectKind.FRACTURED_WITHOUT_BOXES) == [("IMG0000019.jpg",)]
    assert _kinds_of(report, DefectKind.NEGATIVE_WITH_BOXES) == [("IMG0000001.jpg",)]


def test_html_escapes_ids(planted: Path) -> None:
    report = audit(planted, workers=1)
    page = render_html(report)
    assert "<script" not in page and "Content-Security-Policy" in page


@pytest.mark.slow
def test_real_fracatlas_audit() -> None:
    """Checked by eye (side-by-side PNGs): the IMG0004xxx copies are truncated re-saves of IMG0002xxx/3xxx."""
    if not FRACATLAS.is_dir():
        pytest.skip(f"shared data not found at {FRACATLAS}")
    report = audit(FRACATLAS)
    truncated = {d.ids[0] for d in report.defects if d.kind is DefectKind.TRUNCATED}
    assert len(truncated) == 50
    assert {"IMG0004028.jpg", "IMG0004100.jpg", "IMG0004347.jpg"} <= truncated
    assert all(
        t.startswith("IMG00040")
        or t.startswith("IMG00041")
        or t.startswith("IMG00042")
        or t.startswith("IMG00043")
        for t in truncated
    )
    conflicting = {frozenset(g.members) for g in report.duplicate_groups if g.conflicting_labels}
    assert frozenset({"IMG0002617.jpg", "IMG0004028.jpg"}) in conflicting
    assert frozenset({"IMG0002738.jpg", "IMG0004121.jpg"}) in conflicting
    # 11 of the truncated copies keep under 90% of their rows: fracsight.io refuses them, so they are
    # flagged but not compared (three more conflicting pairs and nine groups had one of them).
    refused = {d.ids[0] for d in report.defects if d.kind is DefectKind.TRUNCATED and "refused" in d.detail}
    assert len(refused) == 11 and "IMG0004100.jpg" in refused
    assert len(conflicting) == 5
    assert not report.found([DefectKind.UNREADABLE, DefectKind.BAD_BOX, DefectKind.FRACTURED_WITHOUT_BOXES])
    assert 70 <= len(report.duplicate_groups) <= 95
