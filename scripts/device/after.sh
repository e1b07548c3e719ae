#!/usr/bin/env bash
# On the CPU, after the finish call: evaluate and export every scale that came back, compare it
# with the shipped model on the test splits, and (SHIP=1) replace the ones it beats.
#   FILES=/path/the/tool/returned scripts/device/after.sh        # verdicts only
#   SHIP=1 FILES=... scripts/device/after.sh                      # and replace models/x<s>
#   FILES=runs/gpu scripts/device/after.sh       # after train_all.sh runs/gpu on your own GPU
# FILES holds x<s>/model.safetensors (and x<s>/run.tar.gz, bench.tar.gz from the device).
# Evaluates and exports in runs/gpu/x<s>, and fits each export's principal basis.
# Evaluation is the shipped models' protocol (scripts/train_defaults.sh): both test splits,
# best-of-10 on 100 faces each. Where the device judged a scale (its run.tar.gz holds
# eval/metrics.json and principal/), those are used as they are and only the export and the
# comparison run here: minutes instead of hours on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
FILES=${FILES:?set FILES to the folder the finish call brought back}
PACK=${PACK:-packs/faces_all.npz}
SCALES=${SCALES:-"8 4 16"}
SHIP=${SHIP:-0}
PRINCIPAL=${PRINCIPAL:-1}   # 0: ship without a principal basis (if not judged: 30-90 min of CPU a scale)
[ -f models/x8/manifest.json ] || { echo "models/ is out: scripts/device/models_out.sh back" >&2; exit 1; }
ship=()
[ "$SHIP" = 1 ] && ship=(--ship)
if [ -f "$FILES/bench.tar.gz" ] && tar -tzf "$FILES/bench.tar.gz" | grep -c '[^/]$' >/dev/null; then   # no files: BENCH=0
  mkdir -p runs/gpu && tar -xzf "$FILES/bench.tar.gz" -C runs/gpu
  echo "benchmarks: runs/gpu/bench/ (model_cuda.json, service_cuda_heuristic.json, service_cuda_exhaustive.json)"
fi
for s in $SCALES; do
  [ -f "$FILES/x$s/model.safetensors" ] || { echo "x$s: no weights came back"; continue; }
  run=runs/gpu/x$s
  mkdir -p "$run"
  if [ "$(realpath "$FILES/x$s")" != "$(realpath "$run")" ]; then   # else: trained here
    rm -rf "$run/eval" "$run/principal"   # an earlier run's, never to be taken for this one's
    cp "$FILES/x$s/model.safetensors" "$run/"
    if [ -f "$FILES/x$s/run.tar.gz" ]; then tar -xzf "$FILES/x$s/run.tar.gz" -C "$run"; fi
  fi
  if [ -f "$run/profile.json" ]; then   # where the device's time went (training/profiling.py)
    echo "x$s profile: $(python3 -m training.profiling "$run/profile.json")"
  fi
  if [ -f "$run/eval/metrics.json" ]; then
    echo "x$s: evaluated on the device ($run/eval/metrics.json)"
  else
    facesr-eval --model "$run" --pack "$PACK" --sources celeba utkface --best-of 10 \
      --best-of-limit 100 --out "$run/eval"
  fi
  # the shipped model's calibrated temperature of the ICAP's draws carries over
  facesr-export --model "$run" --out "$run/export" --metrics "$run/eval/metrics.json" \
    --pack "$PACK" --sample-temperature-from "models/x$s"
  if [ "$PRINCIPAL" = 1 ] && [ -f "$run/principal/principal_basis.npy" ]; then
    python3 -m training.principal --model "$run/export" --install-from "$run/principal"
  elif [ "$PRINCIPAL" = 1 ]; then   # the basis of the default draws (README "Principal draws")
    python3 -m training.principal --model "$run/export" --pack "$PACK" --install \
      --out "$run/principal.json" --no-progress
  fi
  python3 scripts/device/compare.py "$run/export" "models/x$s" --pack "$PACK" "${ship[@]}"
done
