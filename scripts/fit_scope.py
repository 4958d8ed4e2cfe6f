"""Fit the out-of-scope check of a model on FracAtlas's development split and write it into the
model's card; measure it on the held-out split and on each out-of-distribution set, and print
the table the card and README quote.

    python scripts/fit_scope.py [--model M.onnx] [--data ../shared/data]
        [--split-file training/default-run/split.csv] [--k 32] [--quantile 0.975] [--write]

Without --write it only measures. The threshold is the quantile of out-of-fold scores on the
development split (each fold scored by a fit on the other four); no out-of-distribution image
takes part in the fit or the threshold.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fracsight.evaluation.scope import accuracy_when_set_aside, scope_inputs, scope_rates  # noqa: E402
from fracsight.inference import Analyser  # noqa: E402
from fracsight.model_card import DEFAULT_MODEL, card_path  # noqa: E402
from fracsight.safety import fit_scope  # noqa: E402

OUT_OF_SCOPE_SETS = {
    "adult chest radiographs": "out-of-scope/images/chest-adult",
    "paediatric chest radiographs": "out-of-scope/images/chest-paediatric",
    "chest radiograph figures": "out-of-scope/images/chest-adult-figures",
    "MR slices (DICOM)": "out-of-scope/images/mr-dicom",
    "photographs": "out-of-scope/images/photographs",
    "paediatric wrists (GRAZPEDWRI-DX sample)": "grazpedwri-sample/images",
}


def _split(data: Path, split_file: Path) -> dict[str, list[tuple[Path, int, int]]]:
    """split -> [(image path, fold, label)] from the run's split file."""
    images = {p.stem: p for p in (data / "fracatlas" / "images").rglob("*.jpg")}
    out: dict[str, list[tuple[Path, int, int]]] = {"dev": [], "test": []}
    with open(split_file, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] in out and row["image_id"] in images:
                out[row["split"]].append((images[row["image_id"]], int(row["fold"]), int(row["label"])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--split-file", type=Path, default=ROOT / "training" / "default-run" / "split.csv")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--quantile", type=float, default=0.975)
    parser.add_argument("--write", action="store_true", help="write the check into the model's card")
    args = parser.parse_args()

    analyser = Analyser(args.model, threads=1)
    split = _split(args.data, args.split_file)
    dev = scope_inputs(analyser, [p for p, _, _ in split["dev"]])
    folds = [f for p, f, _ in split["dev"] if str(p) in set(dev.paths)]
    data = f"FracAtlas development split of {args.split_file.relative_to(ROOT)}"
    fitted_on = f"{len(dev.paths)} images: {data}"
    check, oof = fit_scope(dev.features, folds, args.k, args.quantile, fitted_on=fitted_on)
    test = scope_inputs(analyser, [p for p, _, _ in split["test"]])
    labels = [label for p, _, label in split["test"] if str(p) in set(test.paths)]
    outside = {}
    for name, folder in OUT_OF_SCOPE_SETS.items():
        files = sorted(p for p in (args.data / folder).rglob("*") if p.is_file())
        outside[name] = scope_inputs(analyser, files)
    held_out = f"FracAtlas held-out split of {args.split_file.relative_to(ROOT)} ({len(test.paths)} images)"
    rates = scope_rates(check, test, outside, held_out)
    rates["accuracy_when_flagged_set_aside"] = accuracy_when_set_aside(check, test, labels)
    rates["out_of_fold_dev_flag_rate"] = float((oof > check.threshold).mean())
    check = type(check)(check.mean, check.components, check.variances, check.residual_scale, check.threshold,
                        check.fitted_on, rates)  # fmt: skip

    print(f"threshold {check.threshold:.3f} (quantile {args.quantile} of out-of-fold development scores)")
    flag = rates["in_scope"]["false_flag_rate"]
    print("| set | n | AUROC [95% CI] | flagged [95% CI] |\n|---|---|---|---|")
    print(f"| {held_out} (in scope) | {len(test.paths)} | | {_pct(flag)} |")
    for name, entry in rates["out_of_scope_sets"].items():
        if "auroc" in entry:
            a = entry["auroc"]
            auroc = f"{a['value']:.3f} {_interval(a['delong'])}"
            refused = entry["refused_before_the_check"]
            print(f"| {name} | {entry['n']} (+{refused} refused) | {auroc} | {_pct(entry['flagged'])} |")
        else:
            print(f"| {name} | 0 (+{entry['refused_before_the_check']} refused before the check) | | |")
    acc = rates["accuracy_when_flagged_set_aside"]
    scored = acc.get("scored", {}).get("value", float("nan"))
    print(f"fracture AUC on the held-out split: all {acc['all']['value']:.3f} (n={acc['n_all']}), "
          f"scored only {scored:.3f} (n={acc['n_scored']})")  # fmt: skip
    if args.write:
        target = card_path(args.model)
        card = json.loads(target.read_text())
        card["out_of_scope"] = check.to_card()
        target.write_text(json.dumps(card, indent=2) + "\n")
        print(f"wrote the check into {target}")


def _pct(estimate: dict) -> str:
    return f"{estimate['value']:.3f} {_interval(estimate)} ({estimate['k']}/{estimate['n']})"


def _interval(estimate: dict) -> str:
    """The CI, or why there is none (DeLong's variance is 0 where the two sets do not overlap)."""
    if estimate.get("lower") is None or estimate.get("upper") is None:
        return "(no CI: the sets do not overlap)"
    return f"[{estimate['lower']:.3f}, {estimate['upper']:.3f}]"


if __name__ == "__main__":
    main()
