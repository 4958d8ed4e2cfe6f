"""The model card: the shipped card is complete, and an evaluation can be recorded into a card."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

import fracsight
from fracsight.cli import main
from fracsight.model.card import record_evaluation

MODELS = Path(fracsight.__file__).parent / "models"


def test_shipped_card_states_data_thresholds_metrics_and_intended_use() -> None:
    card = json.loads((MODELS / "default.card.json").read_text())
    assert 0 < card["thresholds"]["doubt"] <= card["thresholds"]["fracture"] < 1
    assert "not a diagnosis" in card["intended_use"]
    held = card["metrics"]["shipped_model_evaluation"]
    assert held["n"] == 462 and held["n_fractured"] == 85
    low, high = held["auc"]["delong"]["lower"], held["auc"]["delong"]["upper"]
    assert low < held["auc"]["value"] < high
    regions = {c["value"] for c in held["by_region"]["cells"]}
    assert {"hand", "leg", "hip", "shoulder"} <= regions
    text = (MODELS / "default.card.md").read_text()
    assert "held-out test split" in text and "KNOWN ISSUE" in text


def test_shipped_card_markdown_is_current_and_its_tables_unbroken() -> None:
    """The Markdown is what render_markdown makes of the JSON, and no note line splits a table."""
    from fracsight.model.card import render_markdown

    card = json.loads((MODELS / "default.card.json").read_text())
    text = (MODELS / "default.card.md").read_text()
    assert text == render_markdown(card)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            rows = lines[i + 1 :]
            table = rows[: next((j for j, r in enumerate(rows) if not r.strip()), len(rows))]
            assert table and all(r.startswith("| ") and r.endswith(" |") for r in table), table


def test_an_evaluation_is_recorded_into_a_card_copy(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    preds, labels = tmp_path / "p.csv", tmp_path / "l.csv"
    with preds.open("w", newline="") as p, labels.open("w", newline="") as lab:
        pw, lw = csv.writer(p), csv.writer(lab)
        pw.writerow(["id", "probability"])
        lw.writerow(["id", "fractured", "region"])
        for i in range(120):
            y = int(i % 3 == 0)
            prob = 1 / (1 + np.exp(-rng.normal(2.5 * y - 1.2, 1.0)))
            pw.writerow([f"c{i}", f"{prob:.5f}"])
            lw.writerow([f"c{i}", y, "hand" if i % 2 else "leg"])
    model = tmp_path / "m.onnx"
    shutil.copy(MODELS / "default.onnx", model)
    shutil.copy(MODELS / "default.card.json", tmp_path / "m.card.json")
    report = tmp_path / "report"
    args = ["evaluate", "--predictions", str(preds), "--labels", str(labels), "--model", str(model)]
    assert main([*args, "--report", str(report), "--no-progress"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    card = record_evaluation(tmp_path / "m.card.json", report / "metrics.json", "fracsight evaluate (test)")
    recorded = card["metrics"]["shipped_model_evaluation"]
    assert recorded["n"] == 120 and recorded["auc"]["value"] == metrics["overall"]["auc"]["value"]
    markdown = (tmp_path / "m.card.md").read_text()
    assert f"{metrics['overall']['auc']['value']:.3f}" in markdown
    assert "region = hand" in markdown and "fracsight evaluate (test)" in markdown
