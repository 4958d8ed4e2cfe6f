#!/usr/bin/env bash
# Ship what scripts/device/train.sh brought back: the model and card into the package, the log,
# split and predictions into training/default-run/, then measure on this CPU, on the original
# files of the held-out split: the new ONNX model, the model it replaces (same cases) and the new
# model with every image turned. All three are recorded in the card.
# Usage: scripts/device/ingest.sh FILES_AT VERSION   (the folder the device tool put $OUT's files
# in; the shipped model's version, e.g. 3.0, written into its card: every result names it)
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: scripts/device/ingest.sh FILES_AT VERSION" >&2; exit 2; }
from="$(cd "$1" && pwd)"
version="$2"
cd "$(dirname "$0")/../.."
for f in default.onnx default.card.json default.card.md meta.tgz train.log; do
  [ -s "$from/$f" ] || { echo "missing $from/$f: the run did not finish" >&2; exit 1; }
done
models=src/fracsight/models
work=$(mktemp -d)
mkdir "$work/previous"
cp "$models"/default.onnx "$models"/default.card.json "$work/previous/"
chmod u+w "$models"/default.* 2>/dev/null || true
cp "$from"/default.onnx "$from"/default.card.json "$from"/default.card.md "$models"/
python3 - "$models/default.card.json" "$version" <<'PY'
import json, sys
path, version = sys.argv[1], sys.argv[2]
card = json.load(open(path))
card = {"model_id": card.pop("model_id"), "version": version, **card}
open(path, "w").write(json.dumps(card, indent=2) + "\n")
PY
rm -rf training/default-run && mkdir -p training/default-run
tar xzf "$from"/meta.tgz -C training/default-run
for d in training/default-run/*/; do  # fold0/summary.json -> fold0-summary.json
  [ -f "$d/summary.json" ] && mv "$d/summary.json" "training/default-run/$(basename "$d")-summary.json"
  rmdir "$d" 2>/dev/null || true
done
grep -v "epoch [0-9]*/" "$from"/train.log > training/default-train.log

split=training/default-run/split.csv
shipped="fracsight evaluate ../shared/data/fracatlas --split-file $split --split test --report REPORT_DIR"
.venv/bin/fracsight evaluate ../shared/data/fracatlas --split-file "$split" --split test --report "$work/shipped"
.venv/bin/fracsight evaluate ../shared/data/fracatlas --model "$work/previous/default.onnx" \
  --split-file "$split" --split test --report "$work/previous-report"
.venv/bin/python scripts/orientation_check.py ../shared/data/fracatlas --split-file "$split" --split test \
  --json "$work/orientation.json"
.venv/bin/python - "$models/default.card.json" "$work" "$shipped" <<'PY'
import sys
from pathlib import Path

from fracsight.training.card import record_evaluation, record_orientation

card, work, command = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
record_evaluation(card, work / "shipped" / "metrics.json", command)
previous = command.replace("evaluate ", "evaluate --model PREVIOUS_MODEL.onnx ", 1)
record_evaluation(card, work / "previous-report" / "metrics.json", previous, key="previous_model_evaluation")
record_orientation(card, work / "orientation.json")
PY
echo "shipped; reports in $work. Now update README.md, training/README.md and tests/test_model_card.py."
