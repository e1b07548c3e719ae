#!/usr/bin/env bash
# The recipe of the shipped default models: pack the faces, then for each scale train (phase 1 on
# 64 px patches, then full faces; phase 2; phase 3), evaluate on both held-out splits, and export
# to models/. The defaults are the x8 schedule (~1.6 h per scale on 2 CPU cores); the README's
# results section says what each shipped scale actually got.
# Resumable: rerun it and every finished step is skipped (checkpoints live in runs/).
#
#   DATA=../shared/data SCALES="8 4 16" scripts/train_defaults.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
SCALES=${SCALES:-"8 4 16"}
PACK=${PACK:-packs/faces_all.npz}
PATCH_STEPS=${PATCH_STEPS:-4300}
PHASE1_STEPS=${PHASE1_STEPS:-4600}
PHASE2_STEPS=${PHASE2_STEPS:-400}
PHASE3_STEPS=${PHASE3_STEPS:-200}
BEST_OF=${BEST_OF:-10}
BEST_OF_LIMIT=${BEST_OF_LIMIT:-100}  # best-of-n on this many faces per split (n passes each)
TIME_BUDGET_S=${TIME_BUDGET_S:-0}   # >0: cap each scale's training (60/20/20 over the phases)

if [ ! -f "$PACK" ]; then
  facesr-prepare --celeba "$DATA/celeba/img_align_celeba" \
    --identities "$DATA/celeba/identity_CelebA.txt" --utkface "$DATA/utkface/crop_part1" \
    --celeba-wild "$DATA/celeba/wild_crops_test_partition" --quality 95 --out "$PACK"
fi

for s in $SCALES; do
  facesr-train --data "$PACK" --out "runs/x$s" --scale "$s" --preset paper \
    --patch 64 --patch-steps "$PATCH_STEPS" --patch-batch-size 32 \
    --phase1-steps "$PHASE1_STEPS" --phase2-steps "$PHASE2_STEPS" --phase3-steps "$PHASE3_STEPS" \
    --batch-size 16 \
    --time-budget-s "$TIME_BUDGET_S" --ckpt-every 100 --no-progress
  facesr-eval --model "runs/x$s" --pack "$PACK" --sources celeba utkface \
    --best-of "$BEST_OF" --best-of-limit "$BEST_OF_LIMIT" --out "runs/x$s/eval"
  facesr-export --model "runs/x$s" --out "models/x$s" --metrics "runs/x$s/eval/metrics.json"
  python -m training.principal --model "models/x$s" --pack "$PACK" --install --no-progress \
    --out "runs/x$s/principal.json"
done
