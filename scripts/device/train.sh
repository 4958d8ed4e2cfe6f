#!/usr/bin/env bash
# Runs ON the lent GPU machine (see prepare.sh): trains the default model in one call and leaves
# in $OUT what ingest.sh needs: the ONNX model, its card, the log, meta.tgz (split, predictions,
# run.json, summaries) and checkpoints.tar.* (finished runs' weights, for --resume or later use).
# At most 8 files of 16 MiB, 64 MiB in all, come back from $OUT: the checkpoints are capped.
#
# The test split is the shipped model's (training/default-run/split.csv), so the old and the
# new model are compared on the same held-out cases, which neither has trained on.
#
# Environment: FRACSIGHT_TRAIN_SECONDS (default 540) bounds the training; FRACSIGHT_TRAIN_ARGS
# appends options (a CPU dry run: "--limit 60 --epochs 1 --final-epochs 1 --device cpu
# --size 128 --parallel 2"); FRACSIGHT_RESUME_FROM, a folder holding checkpoints.tar.* and
# meta.tgz brought back by an earlier call, continues that run on a fresh machine. On a machine
# still warm from a cut-off call, /tmp/run may still hold that run, optimiser states included:
# then it continues in place (not yet seen on the lent machine: check with `ls /tmp/run` first).
set -uo pipefail
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpu/site:$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
# The compact data may come as one stored zip (a file per image costs a disk block on the way).
if [ -f .gpu/data.zip ] && [ ! -d .gpu/data ]; then
  python3 -m zipfile -e .gpu/data.zip .gpu/ || exit 1
fi
run=/tmp/run
mkdir -p "$run"
resume=()
if [ -n "${FRACSIGHT_RESUME_FROM:-}" ]; then
  cat "$FRACSIGHT_RESUME_FROM"/checkpoints.tar.* | tar xf - -C "$run"
  tar xzf "$FRACSIGHT_RESUME_FROM"/meta.tgz -C "$run"  # run.json and the runs' summaries
fi
[ -f "$run/run.json" ] && resume=(--resume) && echo "continuing the run in $run"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# shellcheck disable=SC2086  # FRACSIGHT_TRAIN_ARGS is a list of options
timeout "${FRACSIGHT_TRAIN_SECONDS:-540}" python3 -m fracsight train .gpu/data/manifest.csv \
  --out "$run" --name default --workers 16 --parallel 6 --epochs 28 --patience 7 --final-epochs 14 \
  --test-split training/default-run/split.csv "${resume[@]}" ${FRACSIGHT_TRAIN_ARGS:-} 2>&1 \
  | tee "$OUT/train.log" | grep -v "epoch [0-9]*/"
status=${PIPESTATUS[0]}
echo "train exit status $status after $(($(date +%s) - start)) s"
cp "$run"/default.onnx "$run"/default.card.json "$run"/default.card.md "$OUT"/ 2>/dev/null
(cd "$run" && tar czf "$OUT"/meta.tgz run.json split.csv ./*/summary.json \
  $(ls predictions_oof.csv predictions_test.csv regions_test.csv 2>/dev/null))
# Finished runs' weights (float16, about 7.5 MB each): the folds first (the teachers), then the
# final model, then the students, while they fit beside the model in the 64 MiB that comes back.
# At most 45 MiB, so that they make at most 3 files of 15 MiB (8 files come back in all).
room=$((62 * 1048576 - $(du -cb "$OUT"/* | tail -1 | cut -f1)))
[ "$room" -lt $((45 * 1048576)) ] || room=$((45 * 1048576))
keep=()
for f in "$run"/fold*/best.pt "$run"/final/best.pt "$run"/student*/best.pt; do
  [ -f "$f" ] || continue
  f=${f#"$run"/}
  size=$(stat -c %s "$run/$f")
  [ "$size" -lt "$room" ] || break
  keep+=("$f")
  room=$((room - size - 4096))
done
if [ "${#keep[@]}" -gt 0 ]; then
  (cd "$run" && tar cf - "${keep[@]}") | split -b 15M - "$OUT"/checkpoints.tar.
fi
echo "kept ${#keep[@]} checkpoint(s): ${keep[*]}"
ls -la "$OUT"
exit "$status"
