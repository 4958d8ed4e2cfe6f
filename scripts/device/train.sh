#!/usr/bin/env bash
# Runs ON the lent GPU machine (see prepare.sh): trains the default model with the shipped
# recipe in one call and leaves in $OUT the ONNX model, its card, the final checkpoint, the
# log and the run's split and predictions (at most 8 files come back). FRACSIGHT_TRAIN_ARGS
# appends options (a dry run on a CPU: "--limit 60 --epochs 1 --final-epochs 1 --device cpu").
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpu/site:$PWD/src PYTHONUNBUFFERED=1
run=/tmp/run
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# 540 s leaves time to copy the results back inside a 590 s call (the run needs about 450 s).
timeout "${FRACSIGHT_TRAIN_SECONDS:-540}" python3 -m fracsight train .gpu/data/manifest.csv \
  --out "$run" --name default --workers 16 --epochs 22 --patience 6 --final-epochs 12 \
  ${FRACSIGHT_TRAIN_ARGS:-} 2>&1 | tee "$OUT/train.log" | grep -v "epoch [0-9]*/"
status=${PIPESTATUS[0]}
echo "train exit status $status"
cp "$run"/default.onnx "$run"/default.card.json "$run"/default.card.md "$OUT"/ 2>/dev/null
cp "$run"/final/best.pt "$OUT"/final_best.pt 2>/dev/null
(cd "$run" && tar czf "$OUT"/meta.tgz split.csv predictions_oof.csv predictions_test.csv ./*/summary.json)
ls -la "$OUT"
exit "$status"
