"""``fracsight predict`` end to end: folders in, one CSV/JSON row per file out, heat-map PNGs."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from fracsight.cli import main
from fracsight.cli.predict import COLUMNS
from fracsight.decide import categorise
from fracsight.inference import DEFAULT_MODEL, Analyser
from fracsight.io import read_radiograph
from fracsight.model_card import ModelCard
from fracsight.preprocess import MIN_SIDE


def _predict(tmp_path: Path, *args: str, name: str = "out.csv") -> tuple[int, list[dict[str, str]]]:
    out = tmp_path / name
    code = main(["predict", *args, "--output", str(out), "--no-progress"])
    with open(out, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        return code, list(reader)


def test_samples_folder_to_csv(tmp_path: Path, samples_dir: Path, sample_images: list[Path]) -> None:
    code, rows = _predict(tmp_path, str(samples_dir))
    assert code == 0
    # One row per radiograph, in sorted order; README.md and __init__.py are skipped.
    assert [Path(r["path"]).name for r in rows] == [p.name for p in sample_images]
    thresholds = ModelCard.for_model(DEFAULT_MODEL).thresholds
    for r in rows:
        assert r["error"] == "" and r["heatmap"] == ""
        if r["category"] == "out_of_scope":  # not scored: no probability shown, a reason instead
            assert r["probability"] == "" and r["scope_reason"]
            continue
        p = float(r["probability"])
        assert 0.0 <= p <= 1.0
        assert r["category"] == categorise(p, thresholds).value
        assert float(r["ood_score"]) > 0 and r["region"] in ("hand", "leg", "hip", "shoulder")


def test_heatmap_pngs(tmp_path: Path, samples_dir: Path) -> None:
    heat_dir = tmp_path / "heat"
    code, rows = _predict(tmp_path, str(samples_dir), "--heatmaps", str(heat_dir))
    assert code == 0
    names = set()
    for r in rows:
        png = Path(r["heatmap"])
        assert png.parent == heat_dir and png.is_file(), r
        names.add(png.name)
        h, w = read_radiograph(r["path"]).shape
        with Image.open(png) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            pw, ph = image.size
        assert max(pw, ph) <= max(w, h) and max(pw, ph) <= 1024
        assert abs(pw - ph * w / h) <= 1.0, f"{png.name}: {pw}x{ph} for a {w}x{h} image"
    assert len(names) == len(rows)  # no overlay overwrote another


def test_heatmap_names_do_not_collide(tmp_path: Path, sample_images: list[Path]) -> None:
    """Two files with the same name in different folders get two overlays."""
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copyfile(sample_images[0], tmp_path / sub / "same.jpg")
    heat_dir = tmp_path / "heat"
    code, rows = _predict(tmp_path, str(tmp_path / "a"), str(tmp_path / "b"), "--heatmaps", str(heat_dir))
    assert code == 0
    assert len({r["heatmap"] for r in rows}) == 2
    assert all(Path(r["heatmap"]).is_file() for r in rows)


def test_json_lines(tmp_path: Path, samples_dir: Path, sample_images: list[Path]) -> None:
    """JSON lines are the Finding's own to_record() (the form the web API and the store use), with
    the heat map's file; a refusal gives its code and reason."""
    out = tmp_path / "out.jsonl"
    code = main(["predict", str(samples_dir), "--json", "--output", str(out), "--no-progress"])
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(sample_images)
    card = ModelCard.for_model()
    analyser = Analyser()
    for rec, path in zip(records, sorted(sample_images), strict=True):
        expected = analyser.outcome(path).to_record()
        assert rec == {**expected, "timings_ms": rec["timings_ms"], "heatmap": None}
        assert isinstance(rec["probability"], float) and 0.0 <= rec["probability"] <= 1.0
        assert rec["model"] == {
            "id": card.model_id,
            "version": card.version,
            "onnx_sha256": hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest(),
            "thresholds": card.thresholds,
        }
        if path.suffix.lower() != ".dcm":  # JPEG and PNG name no study
            assert rec["study_uid"] is None and rec["sop_uid"] is None
        else:
            assert rec["sop_uid"] == pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    missing = tmp_path / "gone.dcm"
    assert main(["predict", str(missing), "--json", "--output", str(out), "--no-progress"]) == 1
    refused = json.loads(out.read_text())
    assert (
        refused
        == {
            "path": str(missing),
            "error_code": "missing",
            "error": refused["error"],
            "heatmap": None,
        }
        and "no such file" in refused["error"]
    )


def test_dicom_rows_and_heat_maps_name_their_study_and_model(tmp_path: Path, dicom_dir: Path) -> None:
    """Once results.csv or a heat-map PNG leaves its folder, it still names the model that made it
    and, for DICOM, the study, series and image it belongs to."""
    source = dicom_dir / "hd_dx_image.dcm"  # a DX image the model analyses
    header = pydicom.dcmread(source, stop_before_pixels=True)
    out, heat = tmp_path / "out.csv", tmp_path / "heat"
    assert main(["predict", str(source), "--output", str(out), "--heatmaps", str(heat), "--no-progress"]) == 0
    (row,) = list(csv.DictReader(out.open()))
    assert list(row) == COLUMNS
    card = ModelCard.for_model()
    sha = hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()
    assert (row["model_id"], row["onnx_sha256"]) == (card.model_id, sha)
    assert row["model_version"] == (card.version or "")
    assert (row["study_uid"], row["series_uid"], row["sop_uid"]) == (
        header.StudyInstanceUID,
        header.SeriesInstanceUID,
        header.SOPInstanceUID,
    )
    text = Image.open(row["heatmap"]).text
    assert text["fracsight:sop_uid"] == header.SOPInstanceUID
    assert text["fracsight:study_uid"] == header.StudyInstanceUID
    assert text["fracsight:onnx_sha256"] == sha and text["fracsight:model_id"] == card.model_id
    assert text["fracsight:category"] == row["category"]
    if row["category"] == "out_of_scope":  # not scored: the picture says why, the CSV shows no probability
        assert text["fracsight:out_of_scope_reason"] and row["probability"] == ""
    else:
        assert float(text["fracsight:probability"]) == pytest.approx(float(row["probability"]), abs=5e-5)
    assert not any(source.stem in value for value in text.values())  # never the file's name


def _broken_folder(tmp_path: Path, sample_images: list[Path]) -> tuple[Path, Path]:
    """Two good samples; and the same two beside an empty DICOM, a truncated JPEG and a text file."""
    good, mixed = tmp_path / "good", tmp_path / "mixed"
    good.mkdir()
    mixed.mkdir()
    jpegs = [p for p in sample_images if p.suffix == ".jpg"]
    for src in jpegs[:2]:
        shutil.copyfile(src, good / src.name)
        shutil.copyfile(src, mixed / src.name)
    (mixed / "empty.dcm").write_bytes(b"")
    data = jpegs[2].read_bytes()
    (mixed / "cut.jpg").write_bytes(data[: int(len(data) * 0.3)])
    (mixed / "notes.jpg").write_text("Patient seen in clinic, no images attached.\n")
    return good, mixed


def test_broken_files_are_refused_with_reasons(tmp_path: Path, sample_images: list[Path]) -> None:
    good, mixed = _broken_folder(tmp_path, sample_images)
    good_code, good_rows = _predict(tmp_path, str(good), name="good.csv")
    code, rows = _predict(tmp_path, str(mixed), name="mixed.csv")
    assert good_code == 0
    assert code == 1
    by_name = {Path(r["path"]).name: r for r in rows}
    assert sorted(by_name) == sorted(
        [*(Path(r["path"]).name for r in good_rows), "cut.jpg", "empty.dcm", "notes.jpg"]
    )
    expected_reason = {"empty.dcm": "empty", "cut.jpg": "truncated", "notes.jpg": "text"}
    for name, word in expected_reason.items():
        row = by_name[name]
        assert row["probability"] == "" and row["category"] == ""
        assert word in row["error"].lower(), f"{name}: {row['error']!r}"
    # The good images score exactly as they do without the bad files in the same batches.
    for r in good_rows:
        twin = by_name[Path(r["path"]).name]
        assert twin["error"] == ""
        assert (twin["probability"], twin["category"]) == (r["probability"], r["category"])


def test_missing_path_is_a_row_not_a_crash(tmp_path: Path, sample_images: list[Path]) -> None:
    missing = tmp_path / "not-there.dcm"
    code, rows = _predict(tmp_path, str(missing), str(sample_images[0]))
    assert code == 1
    assert [r["path"] for r in rows] == [str(missing), str(sample_images[0])]
    assert "no such file" in rows[0]["error"] and rows[0]["probability"] == ""
    assert rows[1]["error"] == "" and rows[1]["probability"] != ""


def test_images_without_anything_to_analyse_are_refused(tmp_path: Path, sample_images: list[Path]) -> None:
    # Cut from a real radiograph: a blank export, a thumbnail and a thin strip. Each would
    # otherwise get a confident "no fracture".
    pixels = np.asarray(Image.open(sample_images[0]).convert("L"))
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(np.full_like(pixels, pixels[0, 0])).save(folder / "blank.png")
    Image.fromarray(pixels[:20, :20]).save(folder / "thumb.png")
    Image.fromarray(np.ascontiguousarray(pixels[200:240, :])).save(folder / "strip.png")
    Image.fromarray(pixels).save(folder / "whole.png")
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")  # a link whose file has gone
    code, rows = _predict(tmp_path, str(folder))
    assert code == 1
    errors = {Path(r["path"]).name: r["error"] for r in rows}
    assert errors["blank.png"].startswith("image is blank")
    assert "too small to analyse" in errors["thumb.png"]
    assert "not one radiograph view" in errors["strip.png"]
    assert "no such file" in errors["gone.png"]
    assert errors["whole.png"] == ""


def test_folder_without_images_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("nothing to see")
    assert main(["predict", str(tmp_path), "--no-progress"]) == 2
    assert "no input files" in capsys.readouterr().err


def test_subprocess_exit_code_and_summary(
    tmp_path: Path, samples_dir: Path, sample_images: list[Path]
) -> None:
    # The same code as the in-process tests, whether or not fracsight is installed.
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "fracsight", "predict", str(samples_dir), "--no-progress"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(done.stdout.splitlines()))
    assert len(rows) == len(sample_images)
    summary = re.search(r"fracsight predict: (\d+) analysed, (\d+) refused", done.stderr)
    assert summary, done.stderr
    assert (int(summary[1]), int(summary[2])) == (len(sample_images), 0)


def _dicom_facts(folder: Path) -> dict[str, tuple[str, bool]]:
    """file name -> (Modality, decodes with the default decoders) from the folder's SOURCES.txt."""
    facts: dict[str, tuple[str, bool]] = {}
    name = modality = None
    for line in (folder / "SOURCES.txt").read_text().splitlines():
        head = re.match(r"^(\S+)\s+\(\d+ bytes", line)
        if head:
            name, modality = head[1], None
            continue
        found = re.search(r"\bModality=(\S+)", line)
        if found and name:
            modality = found[1]
        if line.strip().startswith("decode") and name and modality:
            ok = ": OK" in line
            plugins = re.search(r"plugins that decode: ([\w,]+)", line)
            # Files only pylibjpeg can decode need an optional (GPL) decoder: either outcome is fine.
            needs_optional = bool(plugins) and not ({"gdcm", "pillow"} & set(plugins[1].split(",")))
            facts[name] = (modality, ok and not needs_optional)
            name = None
    return facts


@pytest.mark.slow
def _smaller_side(path: Path) -> int:
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return min(int(ds.Rows), int(ds.Columns))


def test_shared_dicom_folder(tmp_path: Path, shared_data: Path) -> None:
    folder = shared_data / "dicom"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    facts = _dicom_facts(folder)
    files = sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() not in (".md", ".txt")
    )
    assert set(facts) == set(files), "SOURCES.txt and the folder disagree"
    code, rows = _predict(tmp_path, str(folder))
    assert code == 1  # the folder holds CT, MR and broken files
    by_name = {Path(r["path"]).name: r for r in rows}
    assert sorted(by_name) == files
    for name, (modality, decodes) in facts.items():
        row = by_name[name]
        if modality in ("CT", "MR", "XA", "MG"):
            assert row["probability"] == "", f"{name} ({modality}) was analysed"
            assert modality in row["error"], f"{name}: {row['error']!r}"
        elif modality in ("CR", "DX") and decodes and _smaller_side(folder / name) < MIN_SIDE:
            # pydicom's 16 x 16 thumbnail of a real CR: read, but too small for a finding.
            assert row["probability"] == "" and "too small to analyse" in row["error"], name
        elif modality in ("CR", "DX") and decodes:
            assert row["error"] == "", f"{name} ({modality}): {row['error']!r}"
            if row["category"] == "out_of_scope":  # not scored (a chest, another site's images)
                assert row["probability"] == "" and row["scope_reason"], name
            else:
                assert 0.0 <= float(row["probability"]) <= 1.0
        elif modality in ("CR", "DX"):
            assert row["error"] or row["probability"], name
            if not decodes and row["error"]:
                assert "Pixel Data" in row["error"], f"{name}: {row['error']!r}"
