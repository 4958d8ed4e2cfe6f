"""scripts/run_models_compare.py reads a training run's recorded predictions (the committed
default run) and compares its models on the test split."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "training" / "default-run"


def _compare(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_models_compare.py"), str(RUN), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def test_one_row_per_model_and_the_ensemble_is_the_fold_mean():
    with open(RUN / "predictions_test.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    folds = np.array([[float(r[f"fold{k}"]) for k in range(5)] for r in rows])
    ensemble = np.array([float(r["ensemble"]) for r in rows])
    assert np.abs(folds.mean(axis=1) - ensemble).max() < 1e-5  # the column the README quotes

    lines = _compare()
    assert "test split 462 images, 85 fractured" in lines[0]
    models = [line.split("|")[1].strip() for line in lines[3:]]
    assert models[:7] == ["fold0", "fold1", "fold2", "fold3", "fold4", "final", "ensemble"]
    # Runs since v2 also score the shipped model with every test image turned.
    assert models[7:] == ["final_turned90", "final_turned180", "final_turned270"]


def test_a_higher_sensitivity_target_gives_a_lower_threshold():
    def threshold(target: str) -> float:
        return float(_compare("--sensitivity", target)[0].split("threshold ")[1].split()[0])

    assert threshold("0.95") < threshold("0.85")
