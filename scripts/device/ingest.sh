#!/usr/bin/env bash
# Ship what scripts/device/train.sh brought back: the model and card into the package, the log,
# split and predictions into training/, then measure the ONNX model on the original files of
# its held-out split on this CPU and record that in the card.
# Usage: scripts/device/ingest.sh FILES_AT   (the folder the device tool put $OUT's files in)
set -euo pipefail
from="$(cd "$1" && pwd)"
cd "$(dirname "$0")/../.."
for f in default.onnx default.card.json default.card.md meta.tgz train.log; do
  [ -s "$from/$f" ] || { echo "missing $from/$f: the run did not finish" >&2; exit 1; }
done
models=src/fracsight/models
chmod u+w "$models"/default.* 2>/dev/null || true
cp "$from"/default.onnx "$from"/default.card.json "$from"/default.card.md "$models"/
rm -rf training/default-run && mkdir -p training/default-run
tar xzf "$from"/meta.tgz -C training/default-run
for d in training/default-run/*/; do  # fold0/summary.json -> fold0-summary.json
  [ -f "$d/summary.json" ] && mv "$d/summary.json" "training/default-run/$(basename "$d")-summary.json"
  rmdir "$d" 2>/dev/null || true
done
grep -v "epoch [0-9]*/" "$from"/train.log > training/default-train.log
report=$(mktemp -d)
command="fracsight evaluate ../shared/data/fracatlas --split-file training/default-run/split.csv --split test --report REPORT_DIR"
.venv/bin/fracsight evaluate ../shared/data/fracatlas --split-file training/default-run/split.csv \
  --split test --report "$report"
.venv/bin/python -c "
import sys
from pathlib import Path
from fracsight.model.card import record_evaluation
record_evaluation(Path(sys.argv[1]), Path(sys.argv[2]) / 'metrics.json', sys.argv[3])
" "$models"/default.card.json "$report" "$command"
echo "shipped; report in $report. Now update README.md, training/README.md and tests/test_model_card.py."
