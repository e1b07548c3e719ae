#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the `device` tool): train x8, x4 and x16 at paper size
# with bf16, each inside a time budget, and bring back only the weights (model.safetensors,
# ~9 MiB each) and the training log (with the summary JSON at its end) through $OUT. Evaluation and export then run on the
# CPU here:  facesr-eval --model <folder with model.safetensors> ... ; facesr-export ...
#
# Before: make a pack small enough to carry (<= 60 MiB), e.g.
#   facesr-prepare ... --quality 90 --limit 3000 --out packs/faces_gpu.npz     (packs/ is ignored)
# Then, with the device tool:
#   run(command="bash scripts/gpu_train_all.sh", carry=["packs/faces_gpu.npz"], timeout_s=600)
# Tested on the CPU with: DEVICE=cpu PRESET=tiny BUDGET_S=10 OUT=/tmp/o scripts/gpu_train_all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT}
PACK=${PACK:-packs/faces_gpu.npz}
SCALES=${SCALES:-"8 4 16"}
BUDGET_S=${BUDGET_S:-150}          # per scale; 3 x 150 s leaves ~2 min of a 10 min call spare
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-paper}
BATCH=${BATCH:-64}
PHASE3=${PHASE3:-1}                # 1: phase 3 (ours: the decoder trained on the ICAP mean too)
PY=${PY:-python3}

$PY - <<'PY' || true
import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
                    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
for s in $SCALES; do
  run=/tmp/facesr_runs/x$s
  mkdir -p "$OUT/x$s"   # $OUT returns at most 8 files: two per scale (weights, log + summary)
  FACESR_NO_MALLOC_TUNING=1 $PY -m training.cli train --data "$PACK" --out "$run" --scale "$s" \
    --preset "$PRESET" --device "$DEVICE" --batch-size "$BATCH" --patch 64 \
    --patch-steps 100000 --patch-batch-size $((BATCH * 2)) --phase1-steps 1000000 \
    --phase2-steps 1000000 --phase3-steps $((PHASE3 * 1000000)) --time-budget-s "$BUDGET_S" --ckpt-every 1000000 \
    --sample-every 1000000 --no-progress --no-resume > "$OUT/x$s/train.log" 2>&1 \
    || { tail -20 "$OUT/x$s/train.log"; exit 1; }
  cp "$run/model.safetensors" "$OUT/x$s/"
  grep "budget" "$OUT/x$s/train.log" || true
done
ls -la "$OUT"/x*
