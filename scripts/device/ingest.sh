#!/usr/bin/env bash
# Ship what scripts/device/train.sh brought back, through scripts/ship_run.sh (the same steps as
# a run trained here): its files are laid out as a run folder first.
# Usage: scripts/device/ingest.sh FILES_AT VERSION   (the folder the device tool put $OUT's files
# in; the shipped model's version, e.g. 4.0, written into its card: every result names it)
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: scripts/device/ingest.sh FILES_AT VERSION" >&2; exit 2; }
from="$(cd "$1" && pwd)"
for f in default.onnx default.card.json default.card.md meta.tgz train.log; do
  [ -s "$from/$f" ] || { echo "missing $from/$f: the run did not finish" >&2; exit 1; }
done
run=$(mktemp -d)
cp "$from"/default.onnx "$from"/default.card.json "$from"/default.card.md "$run"/
tar xzf "$from"/meta.tgz -C "$run"
exec "$(dirname "$0")/../ship_run.sh" "$run" "$2" "$from/train.log"
