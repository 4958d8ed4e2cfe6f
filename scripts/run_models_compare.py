"""Compare the models of one `fracsight train` run on its held-out test split, from the
predictions the run wrote: each fold model, their average (the fold ensemble) and the
shipped (final) model.

Why: the run keeps its test-split probabilities for every model it trained
(`predictions_test.csv`) and its out-of-fold scores (`predictions_oof.csv`), so what the
ensemble would have given can be read without the weights. For each column: ROC AUC (DeLong
95% CI); the "doubt" point at a threshold chosen on the out-of-fold scores for a target
sensitivity (the way the shipped card chose it, so it says whether that choice transfers);
and the specificity at sensitivity >= 0.85 read off the column's own test ROC. The last is an
upper bound, not a result: its threshold is chosen on the very cases it is measured on.

    python scripts/run_models_compare.py training/default-run --sensitivity 0.88
    python scripts/run_models_compare.py training/v1-run
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from fracsight.evaluation.metrics import binary_rates, delong_ci
from fracsight.evaluation.operating_points import threshold_for_sensitivity

_NOT_SCORES = {"image_id", "path", "label", "region", "hardware", "group", "fold"}


def _columns(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = np.array([int(r["label"]) for r in rows])
    scores = {c: np.array([float(r[c]) for r in rows]) for c in rows[0] if c not in _NOT_SCORES}
    return labels, scores


def _rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> str:
    r = binary_rates(scores, labels, threshold)
    sens, spec = r.sensitivity, r.specificity
    return (
        f"{sens.value:.3f} [{sens.lower:.3f}, {sens.upper:.3f}] / "
        f"{spec.value:.3f} [{spec.lower:.3f}, {spec.upper:.3f}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="folder with predictions_oof.csv and predictions_test.csv")
    parser.add_argument("--sensitivity", type=float, default=0.88, help="out-of-fold target for 'doubt'")
    parser.add_argument("--oof-column", default="probability", help="out-of-fold scores to choose it on")
    args = parser.parse_args()

    oof_labels, oof = _columns(args.run / "predictions_oof.csv")
    threshold = threshold_for_sensitivity(oof[args.oof_column], oof_labels, args.sensitivity)
    labels, test = _columns(args.run / "predictions_test.csv")
    print(
        f"{args.run}: test split {len(labels)} images, {int(labels.sum())} fractured; 'doubt' threshold "
        f"{threshold:.4f} for out-of-fold sensitivity {args.sensitivity} on {args.oof_column!r} "
        f"({len(oof_labels)} development images)"
    )
    print(
        "| model | ROC AUC (95% CI) | at the out-of-fold 'doubt' threshold: sensitivity / specificity "
        "| specificity at sensitivity >= 0.85 on its own test ROC (upper bound) |"
    )
    print("|---|---|---|---|")
    for name, scores in test.items():
        auc = delong_ci(scores, labels)
        ci = f"[{auc.lower:.3f}, {auc.upper:.3f}]" if auc.lower is not None else "(no CI)"
        best = binary_rates(scores, labels, threshold_for_sensitivity(scores, labels, 0.85))
        print(
            f"| {name} | {auc.value:.3f} {ci} | {_rates(scores, labels, threshold)} "
            f"| {best.specificity.value:.3f} (sensitivity {best.sensitivity.value:.3f}) |"
        )


if __name__ == "__main__":
    main()
