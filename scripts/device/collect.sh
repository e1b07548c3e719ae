#!/usr/bin/env bash
# Training runs in WORK/x<s> -> OUT/x<s>/model.safetensors and OUT/x<s>/run.tar.gz (train.log
# with the summary at its end, log.jsonl, summary.json, config.json, loss_curve.png, the profile
# of a few phase-1 steps and the last sample grids). Two files per scale: with bench.tar.gz, 7 of
# the 8 files a device run returns.
# A run stopped before its end has no model.safetensors: its weights come from checkpoint.pt
# (written at the end of every phase). A training still running is stopped first.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:?usage: collect.sh WORK OUT}
OUT=${2:?usage: collect.sh WORK OUT}
SCALES=${SCALES:-"8 4 16"}
PY=${PY:-python3}
GRIDS=${GRIDS:-6}   # sample grids kept per scale (the last ones)

if [ -f "$WORK/train_pgid" ] && [ ! -f "$WORK/done" ]; then
  group=$(cat "$WORK/train_pgid")
  if [ "$group" != "$(awk '{print $5}' /proc/$$/stat)" ]; then   # never our own group
    kill -- "-$group" 2>/dev/null && echo "stopped training (process group $group)" && sleep 3 || true
  fi
fi
for s in $SCALES; do
  run=$WORK/x$s
  [ -d "$run" ] || { echo "x$s: no run folder"; continue; }
  if [ ! -f "$run/model.safetensors" ] && [ -f "$run/checkpoint.pt" ]; then
    "$PY" - "$run" <<'PY'
import sys
from pathlib import Path
from training.weights import MODEL_WEIGHTS, load_model, save_model_weights
run = Path(sys.argv[1])
model, scale = load_model(run)
save_model_weights(model, run / MODEL_WEIGHTS, scale)
print(f"{run}: weights taken from checkpoint.pt")
PY
  fi
  mkdir -p "$OUT/x$s"
  [ -f "$run/model.safetensors" ] && cp "$run/model.safetensors" "$OUT/x$s/"
  files=()
  for f in train.log log.jsonl summary.json config.json loss_curve.png exit_code judge.log \
      eval/metrics.json eval/metrics.md principal/principal.json principal/principal_basis.npy \
      profile.json profile.txt; do
    [ -f "$run/$f" ] && files+=("$f")
  done
  if [ -d "$run/samples" ]; then
    while IFS= read -r f; do files+=("samples/$f"); done < <(find "$run/samples" -maxdepth 1 -type f -printf "%f\n" | sort | tail -n "$GRIDS")
  fi
  tar -czf "$OUT/x$s/run.tar.gz" -C "$run" "${files[@]}"
done
