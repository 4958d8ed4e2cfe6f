"""The model card: the shipped card is complete, and an evaluation can be recorded into a card."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import fracsight
from fracsight.cli import main
from fracsight.training.card import record_evaluation

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
    # The model it replaced, on the same cases, sits beside it.
    previous = card["metrics"]["previous_model_evaluation"]
    assert (previous["n"], previous["n_fractured"]) == (462, 85) and previous["model_id"] != card["model_id"]


def test_shipped_card_gives_orientation_and_region_head_and_the_onnx_outputs_match_it() -> None:
    import onnxruntime as ort

    card = json.loads((MODELS / "default.card.json").read_text())
    rows = card["metrics"]["shipped_model_orientation"]["rows"]
    assert [r["degrees"] for r in rows] == [0, 90, 180, 270]
    assert all(0.5 < r["auc"]["value"] <= 1 for r in rows)
    head = card["metrics"]["region_head"]["by_region"]
    assert {"hand", "leg", "hip", "shoulder"} <= set(head)
    assert all(0 <= e["k"] <= e["n"] for e in head.values())
    assert card["region_labels"] == ["hand", "leg", "hip", "shoulder"]
    session = ort.InferenceSession(str(MODELS / "default.onnx"), providers=["CPUExecutionProvider"])
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert set(card["outputs"]) == set(outputs)
    assert outputs["region"][-1] == len(card["region_labels"])
    side = card["input_size"] // card["heatmap_stride"]
    size = card["input_size"]
    _, heatmap = session.run(["logit", "heatmap"], {"image": np.zeros((1, 1, size, size), np.float32)})
    assert heatmap.shape == (1, side, side)


def test_shipped_card_markdown_is_current_and_its_tables_unbroken() -> None:
    """The Markdown is what render_markdown makes of the JSON, and no note line splits a table."""
    from fracsight.training.card import render_markdown

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
    assert "outline" not in markdown  # no boxes, no localisation

    # With expert boxes, the outline figures travel to the card beside the pointing game.
    rate = {"value": 0.5, "lower": 0.3, "upper": 0.7, "k": 5, "n": 10, "method": "Wilson score interval"}
    metrics["localisation"] = {
        "computed": True,
        "data": "10 analysed cases",
        "pointing_game": {"strict": rate, "within_half_a_cell": rate, "tolerance_px": 12.0},
        "froc": {"normalised_area": {"value": 0.4, "lower": 0.2, "upper": 0.6}},
        "outline": {
            "level": 0.5,
            "touches_box": {**rate, "value": 0.9, "k": 9, "lower": 0.6, "upper": 0.98},
            "median_area_fraction": {"value": 0.081, "lower": 0.05, "upper": 0.12, "quartiles": [0.04, 0.2]},
        },
    }
    (report / "metrics.json").write_text(json.dumps(metrics))
    card = record_evaluation(tmp_path / "m.card.json", report / "metrics.json", "fracsight evaluate (test)")
    assert card["metrics"]["shipped_model_evaluation"]["localisation"]["outline"]["touches_box"]["k"] == 9
    markdown = (tmp_path / "m.card.md").read_text()
    assert "contains or touches an expert box 0.900 [0.600, 0.980] (9/10)" in markdown
    assert "median area as a share of the image 0.081 [0.050, 0.120], quartiles 0.040-0.200" in markdown


def test_region_accuracy_per_region_and_for_several_regions() -> None:
    from fracsight.training.card import region_accuracy

    def row(flags: str, *p: float) -> dict[str, str]:
        return {
            "region_flags": flags,
            **{f"p_{r}": str(v) for r, v in zip(("hand", "leg", "hip", "shoulder"), p, strict=True)},
        }

    result = region_accuracy(
        [
            row("hand", 0.9, 0.1, 0.0, 0.2),  # right
            row("hand", 0.2, 0.7, 0.0, 0.1),  # called leg: wrong
            row("leg", 0.1, 0.8, 0.3, 0.0),  # right
            row("hand;shoulder", 0.8, 0.1, 0.1, 0.6),  # exactly the two flagged: right
            row("hand;shoulder", 0.8, 0.1, 0.1, 0.4),  # shoulder missed: wrong
            row("", 0.5, 0.5, 0.5, 0.5),  # regions not known: not scored
        ]
    )["by_region"]
    assert {k: (v["k"], v["n"]) for k, v in result.items()} == {
        "hand": (1, 2),
        "leg": (1, 1),
        "hand+shoulder": (1, 2),
    }
    assert result["hand"]["lower"] < 0.5 < result["hand"]["upper"]


def test_orientation_known_issues_and_previous_model_are_rendered(tmp_path: Path) -> None:
    from fracsight.training.card import record_known_issues, record_orientation

    card_path = tmp_path / "m.card.json"
    shutil.copy(MODELS / "default.card.json", card_path)
    table = {
        "command": "python scripts/orientation_check.py DATA",
        "data": "a test",
        "model_id": "m",
        "rows": [
            {
                "degrees": 90 * k,
                "auc": {"value": 0.9 - 0.01 * k, "lower": 0.8, "upper": 0.95},
                "operating_points": {
                    "doubt": {"sensitivity": 0.9, "specificity": 0.7},
                    "fracture": {"sensitivity": 0.6, "specificity": 0.96},
                },
            }
            for k in range(4)
        ],
    }
    (tmp_path / "o.json").write_text(json.dumps(table))
    record_orientation(card_path, tmp_path / "o.json")
    record_known_issues(card_path, ["a measured shortcoming"])
    text = (tmp_path / "m.card.md").read_text()
    assert "| 270 degrees | 0.870 [0.800, 0.950] | 0.900 | 0.700 | 0.600 | 0.960 |" in text
    assert "- KNOWN ISSUE: a measured shortcoming" in text
    assert "previous model" in text
    with pytest.raises(ValueError, match="valid are"):
        record_evaluation(card_path, tmp_path / "o.json", "x", key="other")
