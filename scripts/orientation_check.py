"""How much the model's answers depend on the image's orientation: AUC and the operating
points on one split, with every image as stored and turned by 90, 180 and 270 degrees.

Why: radiographs reach a reader in whatever orientation the device or PACS stored them
(a forearm or a femur is often landscape); the training data are mostly in one orientation
and the augmentation turns images by at most 10 degrees. The model card quotes this table.

    python scripts/orientation_check.py ../shared/data/fracatlas \
        --split-file training/default-run/split.csv --split test
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from fracsight.data.split_file import split_ids
from fracsight.evaluation.datasets import load_dataset
from fracsight.evaluation.inputs import restrict_labels
from fracsight.evaluation.metrics import binary_rates, delong_ci
from fracsight.inference import Analyser
from fracsight.io import RefusedInput
from fracsight.preprocess import prepare


def _images(analyser: Analyser, paths: list[str], labels: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Decoded pixels of every readable image (full resolution, as `fracsight evaluate` reads them)."""
    pixels, kept = [], []
    for path, label in zip(paths, labels, strict=True):
        try:
            pixels.append(analyser.read(path).pixels)
            kept.append(label)
        except RefusedInput:
            continue
    return pixels, np.asarray(kept)


def _probabilities(analyser: Analyser, pixels: list[np.ndarray], quarter_turns: int) -> np.ndarray:
    out = []
    for start in range(0, len(pixels), analyser.batch_size):
        batch = [
            prepare(np.ascontiguousarray(np.rot90(p, quarter_turns)), analyser.size)[0]
            for p in pixels[start : start + analyser.batch_size]
        ]
        out.append(analyser.run_model(np.stack(batch))[0])
    return np.concatenate(out)


def _command_without_json(argv: list[str]) -> str:
    """The command as a reader would rerun it to see the table: without where this copy was written."""
    words, skip = ["python", "scripts/orientation_check.py"], False
    for word in argv:
        if skip or word == "--json" or word.startswith("--json="):
            skip = word == "--json"
            continue
        words.append(word)
    return " ".join(shlex.quote(w) for w in words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="FracAtlas folder or manifest CSV")
    parser.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    parser.add_argument("--split-file", default=None)
    parser.add_argument("--split", default=None)
    parser.add_argument("--json", type=Path, help="also write the table here (the model card records it)")
    args = parser.parse_args()

    table = load_dataset(args.dataset).labels
    data = "all images"
    if args.split_file:
        table = restrict_labels(table, split_ids(args.split_file, args.split), f"split {args.split!r}")
        data = f"split {args.split!r} of {args.split_file}"
    analyser = Analyser(args.model, decode_side=None)
    pixels, labels = _images(analyser, [str(p) for p in table.images], table.fractured)
    n_fractured = int(labels.sum())
    print(f"{analyser.model_id} on {args.dataset}, {data}: {len(labels)} images, {n_fractured} fractured")
    points = sorted(analyser.thresholds.items(), key=lambda item: item[1])
    columns = [f"{name}: sensitivity / specificity" for name, _ in points]
    print("| turned | ROC AUC (95% CI) | " + " | ".join(columns) + " |")
    print("|---" * (2 + len(points)) + "|")
    rows = []
    for turns in range(4):
        scores = _probabilities(analyser, pixels, turns)
        auc = delong_ci(scores, labels)
        cells, rates_by_point = [], {}
        for name, threshold in points:
            rates = binary_rates(scores, labels, threshold)
            cells.append(f"{rates.sensitivity.value:.3f} / {rates.specificity.value:.3f}")
            rates_by_point[name] = {
                "sensitivity": rates.sensitivity.value,
                "specificity": rates.specificity.value,
            }
        ci = f"[{auc.lower:.3f}, {auc.upper:.3f}]" if auc.lower is not None else "(no CI)"
        print(f"| {90 * turns} degrees | {auc.value:.3f} {ci} | " + " | ".join(cells) + " |")
        rows.append(
            {
                "degrees": 90 * turns,
                "auc": {"value": auc.value, "lower": auc.lower, "upper": auc.upper},
                "operating_points": rates_by_point,
            }
        )
    if args.json:
        record = {
            "command": _command_without_json(sys.argv[1:]),
            "data": f"{data} of {args.dataset}: {len(labels)} images, {n_fractured} fractured; "
            "original files, CPU",
            "model_id": analyser.model_id,
            "rows": rows,
        }
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
