"""scripts/false_positive_review.py on a hand-made run: which non-fractured development images it
lists at each threshold, that held-out test rows never enter, and the class counts of a review."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "false_positive_review.py"

# image_id, label, region, hardware, fold, probability (card: doubt 0.2, fracture 0.6)
ROWS = [
    ("A", 0, "hand", 0, 0, 0.95),  # >= fracture
    ("B", 0, "hand", 1, 1, 0.60),  # >= fracture, exactly at it; hardware
    ("C", 0, "leg", 0, 2, 0.30),  # >= doubt only
    ("D", 0, "leg", 0, 3, 0.20),  # >= doubt only, exactly at it
    ("E", 0, "leg", 1, 4, 0.05),  # below both; hardware
    ("F", 1, "hand", 0, 0, 0.99),  # fractured: never a false positive
    ("G", 0, "hand", 0, -1, 0.97),  # held out (fold -1)
    ("H", 0, "leg", 0, 2, 0.90),  # held out (split.csv says test)
]


def _run(tmp_path: Path, *extra: str) -> list[str]:
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    with open(run / "predictions_oof.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "path", "label", "region", "hardware", "group", "fold", "probability"])
        for i, (image_id, label, region, hardware, fold, p) in enumerate(ROWS):
            w.writerow([image_id, f"run/images/{image_id}.png", label, region, hardware, i, fold, p])
            pixels = np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (128, 1))
            Image.fromarray(pixels).save(run / "images" / f"{image_id}.png")
    (run / "split.csv").write_text("image_id,split\nH,test\nA,dev\n")
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"model_id": "tiny", "thresholds": {"doubt": 0.2, "fracture": 0.6}}))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(run), "--card", str(card), "--root", str(tmp_path), *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def _cells(lines: list[str], first: str) -> list[str]:
    row = next(line for line in lines if line.startswith(f"| {first} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def test_counts_by_threshold_region_and_hardware_without_test_rows(tmp_path: Path):
    lines = _run(tmp_path, "--top", "3", "--sheet", str(tmp_path / "sheet"), "--side", "64")
    assert "5 non-fractured development rows (2 test rows left out)" in lines[0]
    # region | non-fractured | >= fracture | share | >= doubt | share
    assert _cells(lines, "hand") == ["hand", "2", "2", "100.0%", "2", "100.0%"]
    assert _cells(lines, "leg") == ["leg", "3", "0", "0.0%", "2", "66.7%"]
    assert _cells(lines, "all") == ["all", "5", "2", "40.0%", "4", "80.0%"]
    assert _cells(lines, "hardware = 1") == ["hardware = 1", "2/5 (40.0%)", "1/2 (50.0%)", "1/4 (25.0%)"]

    with open(tmp_path / "run" / "false_positives.csv", newline="") as fh:
        listed = list(csv.DictReader(fh))
    assert [r["image_id"] for r in listed] == ["A", "B", "C"]  # highest first, top 3, no G/H/F
    assert listed[1]["hardware"] == "1" and float(listed[1]["probability"]) == 0.6

    thumbs = sorted(p.name for p in (tmp_path / "sheet").iterdir())
    assert thumbs == ["001_A.png", "002_B.png", "003_C.png"]
    with Image.open(tmp_path / "sheet" / "001_A.png") as im:
        assert max(im.size) == 64


def test_review_classes_are_counted_and_unreviewed_images_named(tmp_path: Path):
    review = tmp_path / "review.csv"
    review.write_text(
        "image_id,class,also,note\n"
        "A,open growth plates,cast or splint?,child\n"
        "B,open growth plates,text or film artefacts,\n"
        "E,cast or splint,,below both thresholds: not listed\n"
    )
    lines = _run(tmp_path, "--review", str(review))
    # class | main finding | also seen | possibly | examples
    assert _cells(lines, "open growth plates") == ["open growth plates", "2", "0", "0", "A, B"]
    assert _cells(lines, "cast or splint") == ["cast or splint", "0", "0", "1", ""]
    assert _cells(lines, "text or film artefacts") == ["text or film artefacts", "0", "1", "0", "B"]
    assert _cells(lines, "not reviewed") == ["not reviewed", "2", "", "", "C, D"]
