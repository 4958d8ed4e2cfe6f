"""End to end: ``fracsight readers`` writes readers.json and a self-contained report.html."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fracsight.cli import main
from fracsight.reader_study import RoeMetzConfig, simulate_roe_metz_with_ai
from fracsight.reader_study.simulate import write_reads_csv

READERS_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "readers"
REQUIRED = {
    "fom",
    "modality_a",
    "modality_b",
    "fom_a",
    "fom_b",
    "difference",
    "ci_low",
    "ci_high",
    "f",
    "df_num",
    "df_den",
    "p",
}


@pytest.fixture(scope="module")
def ai_study(tmp_path_factory):
    """A simulated aided/unaided study with regions, an AI predictions file and a model card."""
    folder = tmp_path_factory.mktemp("ai_study")
    config = RoeMetzConfig(n_readers=5, n_normal=60, n_diseased=48, delta=(0.0, 0.4))
    study, probability = simulate_roe_metz_with_ai(config, np.random.default_rng(9), ai_auc_shift=0.02)
    regions = tuple(("hand", "leg", "hip")[k % 3] for k in range(study.n_cases))
    study = replace(study, modalities=("unaided", "aided"), regions=regions)
    write_reads_csv(study, str(folder / "reads.csv"))
    with (folder / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "probability", "category", "heatmap", "error"])
        for case, p in zip(study.case_ids, probability, strict=True):
            writer.writerow([f"/radiographs/{case}.dcm", f"{p:.6f}", "", "", ""])
    (folder / "model.card.json").write_text(
        json.dumps(
            {"model_id": "sim-1", "thresholds": {"doubt": 0.35, "fracture": 0.6}, "threshold_source": "test"}
        )
    )
    return folder


def test_analysis_with_ai_writes_json_and_report(ai_study, capsys):
    out = ai_study / "report"
    code = main(
        [
            "readers",
            str(ai_study / "reads.csv"),
            "--ai",
            str(ai_study / "predictions.csv"),
            "--ai-card",
            str(ai_study / "model.card.json"),
            "--compare",
            "aided:unaided",
            "--non-inferiority",
            "specificity=0.03",
            "--report",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Obuchowski-Rockette" in printed and "readers.json" in printed

    document = json.loads((out / "readers.json").read_text())
    comparisons = document["comparisons"]
    assert all(REQUIRED <= set(c) for c in comparisons)
    kinds = {(c["fom"], c["modality_a"], c["modality_b"]) for c in comparisons}
    for fom in ("auc", "sensitivity", "specificity"):
        assert (fom, "aided", "unaided") in kinds
        assert (fom, "unaided", "AI alone") in kinds and (fom, "aided", "AI alone") in kinds
    for c in comparisons:
        assert c["difference"] == pytest.approx(c["fom_a"] - c["fom_b"])
        assert c["ci_low"] < c["difference"] < c["ci_high"] and 0 <= c["p"] <= 1 and c["df_num"] == 1
        assert c["fixed_readers"]["df_den"] is None and c["fixed_cases"]["df_den"] == 4
        assert c["superiority"]["bound"] == 0
        assert (c["non_inferiority"] is not None) == (c["fom"] == "specificity")
    assert {v["kind"] for v in document["variance_components"]} == {"modalities", "readers_vs_ai"}
    modality_components = [v for v in document["variance_components"] if v["kind"] == "modalities"]
    assert all(
        {"var_error", "cov1", "cov2", "cov3", "var_r", "var_tr"} <= set(v) for v in modality_components
    )
    ai = document["ai"]
    assert [p["name"] for p in ai["operating_points"]] == ["fracture", "doubt"]
    assert ai["model_id"] == "sim-1" and 0.5 < ai["auc"] <= 1
    assert [r["label"] for r in document["regions"]] == ["region hand", "region hip", "region leg"]
    assert sum(r["n_cases"] for r in document["regions"]) == document["data"]["n_cases"] == 108
    assert document["data"]["binary_calls"] == "column 'call'"
    assert any("Obuchowski-Rockette" in line for line in document["summary"])

    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 2 and 'id="bars"' in html and 'id="roc"' in html
    assert "AI alone" in html and "Summary" in html and "Hillis" in html
    assert "<script" not in html
    external = [u for u in re.findall(r"https?://[^\s\"'<>]+", html) if u != "http://www.w3.org/2000/svg"]
    assert external == []


def test_van_dyke_delong_through_the_command_line(tmp_path):
    reads = READERS_DATA / "vandyke.csv"
    if not reads.is_file():
        pytest.skip(f"{reads} not available (needs ../shared)")
    assert (
        main(["readers", str(reads), "--covariance", "delong", "--fom", "auc", "--report", str(tmp_path)])
        == 0
    )
    [c] = json.loads((tmp_path / "readers.json").read_text())["comparisons"]
    assert (c["modality_a"], c["modality_b"]) == ("1", "2")
    assert (round(c["f"], 6), round(c["df_den"], 5), round(c["p"], 8)) == (4.484854, 15.06611, 0.05123303)
    html = (tmp_path / "report.html").read_text()
    assert "delong" in html and 'id="roc"' in html


def test_plan_with_the_published_van_dyke_components(capsys, tmp_path):
    assert (
        main(["readers", "--plan", "--effect", "0.043800322", "--readers", "6-10", "--report", str(tmp_path)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "Van Dyke" in printed and "Hillis, Obuchowski & Berbaum" in printed
    plan = json.loads((tmp_path / "plan.json").read_text())
    rows = {row["readers"]: row for row in plan["plan"]}
    # RJafroc: 6 readers need 251 cases; 10 readers with 165 cases already have power 0.805.
    assert rows[6]["cases"] == 251 and rows[10]["cases"] <= 165
    cases = [rows[r]["cases"] for r in range(6, 11)]
    assert cases == sorted(cases, reverse=True) and all(row["power"] >= 0.8 for row in plan["plan"])


def test_plan_from_a_pilot_file(ai_study, capsys):
    code = main(
        [
            "readers",
            "--plan",
            str(ai_study / "reads.csv"),
            "--effect",
            "0.05",
            "--readers",
            "4-6",
            "--analysis",
            "frrc",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "reads.csv (auc, jackknife)" in printed and "fixed readers" in printed
    assert len(re.findall(r"^\s+[456]\s+\d+\s+0\.\d{3}$", printed, flags=re.M)) == 3


def test_report_shows_reading_times_and_clicks(ai_study, tmp_path):
    """With --clicks, report.html has, per arm, the median seconds per read with IQR and range and
    the clicks scored, and names the file they were measured on."""
    reads = list(csv.DictReader((ai_study / "reads.csv").open()))
    clicks = tmp_path / "study-clicks.csv"
    with clicks.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "truth", "reader", "modality", "call", "image", "x", "y", "hit", "time_ms"])
        for n, r in enumerate(reads):
            aided = r["modality"] == "aided"
            # aided reads 4.0, 5.0, ..., 13.0 s; unaided 20.0, 22.0, ..., 38.0 s (repeating)
            ms = (4000 + 1000 * (n % 10)) if aided else (20000 + 2000 * (n % 10))
            clicked = r["truth"] == "1" and r["call"] == "1"
            hit = "" if not clicked else ("1" if aided or n % 2 else "0")
            site = [0, 10, 20] if clicked else ["", "", ""]
            writer.writerow([r["case_id"], r["truth"], r["reader"], r["modality"], r["call"], *site, hit, ms])
    out = tmp_path / "report"
    assert main(["readers", str(ai_study / "reads.csv"), "--report", str(out), "--compare", "aided:unaided",
                 "--no-regions", "--clicks", str(clicks)]) == 0  # fmt: skip
    reading = json.loads((out / "readers.json").read_text())["reading"]
    html = (out / "report.html").read_text()
    section = html[html.index('id="reading"'):]
    section = section[: section.index("</section>")]
    assert "Reading time and clicks" in section and "study-clicks.csv: 1080 reads, 5 readers" in section
    assert "from the case&#x27;s images shown" in section or "from the case's images shown" in section
    times = section[section.index('id="reading-times"'):]
    for arm, median, iqr, span in (("aided", "8.5", "6.0 to 11.0", "4.0 to 13.0"),
                                   ("unaided", "29.0", "24.0 to 34.0", "20.0 to 38.0")):  # fmt: skip
        assert reading[arm]["median_seconds"] == float(median)
        counts = r"</th><td[^>]*>540</td><td[^>]*>5</td>"
        assert re.search(rf"{arm}{counts}<td>{median}</td><td>{iqr}</td><td>{span}</td>", times), arm
        scored = reading[arm]["localised"]["scored"]
        assert scored > 0 and reading[arm]["clicked"] == scored
        share = f"{100 * reading[arm]['localised']['rate']:.0f}%"
        cells = [reading[arm]["reads"], scored, scored, reading[arm]["localised"]["hits"]]
        row = rf"{arm}</th>" + "".join(rf"<td[^>]*>{c}</td>" for c in cells) + f"<td>{share}</td>"
        assert re.search(row, section), arm
    assert reading["aided"]["localised"]["rate"] == 1.0 and reading["unaided"]["localised"]["rate"] < 1.0
