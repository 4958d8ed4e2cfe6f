"""``fracsight evaluate --out-of-scope``: the safety net measured on real images, written into
metrics.json and report.html with the data each number was measured on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fracsight.cli import main
from fracsight.evaluation.metrics import proportion

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FRACATLAS = SHARED / "fracatlas"
OUT_OF_SCOPE = SHARED / "out-of-scope" / "images"
SPLIT = ROOT / "training" / "default-run" / "split.csv"
needs_data = pytest.mark.skipif(
    not (FRACATLAS.is_dir() and OUT_OF_SCOPE.is_dir() and SPLIT.is_file()),
    reason="shared FracAtlas and out-of-scope data not present",
)


def _held_out(n_each: int) -> list[tuple[Path, int]]:
    """The first ``n_each`` fractured and non-fractured images of the held-out (test) split."""
    chosen: dict[int, list[tuple[Path, int]]] = {0: [], 1: []}
    with SPLIT.open(newline="") as handle:
        for row in csv.DictReader(handle):
            label = int(row["label"])
            if row["split"] != "test" or len(chosen[label]) >= n_each:
                continue
            folder = "Fractured" if label else "Non_fractured"
            chosen[label].append((FRACATLAS / "images" / folder / f"{row['image_id']}.jpg", label))
    return chosen[0] + chosen[1]


def _linked(folder: Path, files: list[Path]) -> Path:
    folder.mkdir()
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


@needs_data
def test_evaluate_reports_the_out_of_scope_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = tmp_path / "manifest.csv"
    cases = _held_out(5)
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([str(p), label] for p, label in cases)
    chests = _linked(tmp_path / "chests", sorted((OUT_OF_SCOPE / "chest-adult").glob("*.png"))[:4])
    photos = _linked(
        tmp_path / "photos",
        [OUT_OF_SCOPE / "photographs" / name for name in ("camera.png", "text.png", "astronaut.png")],
    )
    report = tmp_path / "report"
    code = main(
        [
            "evaluate", str(manifest), "--report", str(report), "--bootstrap", "100", "--no-progress",
            "--out-of-scope", f"adult chests={chests}", "--out-of-scope", f"photographs={photos}",
        ]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((report / "metrics.json").read_text())
    safety = metrics["out_of_scope_check"]
    inside = safety["in_scope"]
    assert inside["n"] == len(cases) and str(manifest) in inside["data"]
    flag = inside["false_flag_rate"]
    assert flag["n"] == len(cases) and flag["method"] == "Wilson score interval"
    assert flag["lower"] == pytest.approx(proportion(flag["k"], flag["n"]).lower)

    chest = safety["out_of_scope_sets"]["adult chests"]
    assert chest["n"] == 4 and chest["refused_before_the_check"] == 0 and str(chests) in chest["data"]
    # The fit script measured all 139 adult chests flagged, AUROC 1.000: the same here, sets apart.
    assert chest["flagged"]["k"] == 4 and chest["auroc"]["value"] == pytest.approx(1.0)
    assert chest["auroc"]["delong"].get("lower") is None and "do not overlap" in chest["overlap"]
    photo = safety["out_of_scope_sets"]["photographs"]
    assert photo["n"] + photo["refused_before_the_check"] == 3
    assert photo["refused_before_the_check"] >= 1  # astronaut.png is a colour photograph

    acc = safety["accuracy_when_flagged_set_aside"]
    assert acc["n_all"] == len(cases) and acc["n_scored"] == len(cases) - flag["k"]
    assert acc["all"]["value"] == pytest.approx(metrics["overall"]["auc"]["value"])
    assert str(manifest) in acc["data"]

    html = (report / "report.html").read_text()
    assert 'id="out-of-scope-table"' in html
    assert "adult chests: 4 files under" in html and "do not overlap" in html
    err = capsys.readouterr().err
    assert "out-of-scope set 'adult chests': 4 analysed, 0 refused before the check" in err
    assert np.isfinite(acc["all"]["value"])


@needs_data
def test_out_of_scope_needs_a_model_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    predictions = tmp_path / "p.csv"
    predictions.write_text("path,probability\na.jpg,0.5\n")
    labels = tmp_path / "l.csv"
    labels.write_text("id,label\na,1\n")
    code = main(
        [
            "evaluate", "--predictions", str(predictions), "--labels", str(labels),
            "--report", str(tmp_path / "r"), "--out-of-scope", f"chests={OUT_OF_SCOPE}",
        ]
    )  # fmt: skip
    assert code != 0 and "give a DATASET" in capsys.readouterr().err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_out_of_scope_option_wants_name_and_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["evaluate", "--report", str(tmp_path / "r"), "--out-of-scope", str(tmp_path)])
    assert code != 0 and "is not NAME=DIR" in capsys.readouterr().err


def test_rates_from_features_and_from_the_checks_answers_agree() -> None:
    """scope_rates (the fit script's, from features) and scope_rates_of (evaluate's, from the check's
    answers) are one computation: the same numbers, counted by hand."""
    from fracsight.evaluation.scope import (
        ScopeInputs,
        accuracy_of,
        accuracy_when_set_aside,
        scope_rates,
        scope_rates_of,
    )
    from fracsight.safety import fit_scope

    rng = np.random.default_rng(3)
    dev = rng.gamma(2.0, 1.0, (200, 16))
    check, _ = fit_scope(dev, np.arange(200) % 5, k=4)

    def inputs(features: np.ndarray, parts: list[str | None]) -> ScopeInputs:
        n = len(features)
        return ScopeInputs([f"i{i}" for i in range(n)], features, [{"hand": 0.9, "leg": 0.1}] * n, parts,
                           rng.uniform(0, 1, n), {"bad.png": "unreadable"})  # fmt: skip

    inside = inputs(rng.gamma(2.0, 1.0, (40, 16)), [None] * 39 + ["CHEST"])
    far = inputs(rng.gamma(2.0, 1.0, (10, 16)) * 6, [None] * 10)
    data = "synthetic in-scope features"
    direct = scope_rates(check, inside, {"far": far}, data)
    assert direct == scope_rates_of(inside.outcomes(check), {"far": far.outcomes(check)}, data)
    flagged = (check.scores(inside.features) > check.threshold) | (np.arange(40) == 39)  # CHEST flags
    assert direct["in_scope"]["false_flag_rate"]["k"] == int(flagged.sum()) >= 1
    assert direct["out_of_scope_sets"]["far"]["refused_before_the_check"] == 1
    labels = (np.arange(40) % 3 == 0).astype(int)
    by_features = accuracy_when_set_aside(check, inside, labels)
    assert by_features == accuracy_of(inside.probabilities, labels, flagged)
    assert by_features["n_scored"] == 40 - int(flagged.sum())


def test_findings_without_a_fitted_check_cannot_be_measured(default_analyser, samples_dir: Path) -> None:
    from dataclasses import replace

    from fracsight.evaluation.scope import ScopeOutcomes

    finding = default_analyser.outcome(samples_dir / "IMG0000001.jpg")
    outcomes = ScopeOutcomes.of_findings({"a": finding})
    assert outcomes.scores[0] == pytest.approx(finding.scope.score) and not outcomes.flagged[0]
    with pytest.raises(ValueError, match="no fitted out-of-scope check"):
        ScopeOutcomes.of_findings({"a": replace(finding, scope=None)})
