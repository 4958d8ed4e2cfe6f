#!/usr/bin/env bash
# Ship a finished `fracsight train --name default` run as the default model: the model and card
# into the package, the run's split, predictions and summaries into training/default-run/, its
# log into training/default-train.log; then measure on this CPU, on the original files of the
# held-out split: the new ONNX model, the model it replaces (same cases) and the new model with
# every image turned, all recorded in the card; and fit the out-of-scope check on the new
# model's features (it reads them: a new model needs its own fit).
# Move the previous run aside first (git mv training/default-run training/vN-run, and its log).
# Usage: scripts/ship_run.sh RUN_DIR VERSION LOG
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: scripts/ship_run.sh RUN_DIR VERSION LOG" >&2; exit 2; }
run="$(cd "$1" && pwd)"
version="$2"
log="$(cd "$(dirname "$3")" && pwd)/$(basename "$3")"
cd "$(dirname "$0")/.."
for f in default.onnx default.card.json default.card.md split.csv predictions_oof.csv; do
  [ -s "$run/$f" ] || { echo "missing $run/$f: the run did not finish" >&2; exit 1; }
done
models=src/fracsight/models
work=$(mktemp -d)
mkdir "$work/previous"
cp "$models"/default.onnx "$models"/default.card.json "$work/previous/"
chmod u+w "$models"/default.* 2>/dev/null || true
cp "$run"/default.onnx "$run"/default.card.json "$run"/default.card.md "$models"/
python3 - "$models/default.card.json" "$version" <<'PY'
import json, sys
path, version = sys.argv[1], sys.argv[2]
card = json.load(open(path))
card = {"model_id": card.pop("model_id"), "version": version, **card}
open(path, "w").write(json.dumps(card, indent=2) + "\n")
PY
rm -rf training/default-run && mkdir -p training/default-run
for f in split.csv predictions_oof.csv predictions_test.csv regions_test.csv run.json; do
  [ -f "$run/$f" ] && cp "$run/$f" training/default-run/
done
for d in "$run"/*/; do  # fold0/summary.json -> fold0-summary.json
  [ -f "$d/summary.json" ] && cp "$d/summary.json" "training/default-run/$(basename "$d")-summary.json"
done
grep -v "epoch [0-9]*/\|^WARNING\|JPEG is truncated" "$log" > training/default-train.log || true

split=training/default-run/split.csv
.venv/bin/python scripts/fit_scope.py --write > "$work/scope.txt"
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
echo "shipped; reports and the out-of-scope table in $work. Now the card's known issues, README.md,"
echo "training/README.md and tests/test_model_card.py."
