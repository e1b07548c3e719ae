#!/usr/bin/env bash
# On the CPU, before a GPU session: make everything the device calls carry, in .device/ (ignored
# by git, never committed), then check every limit (scripts/device/plan.py check).
#   scripts/device/prepare.sh                     # PACK=packs/faces_all.npz by default
#   INIT_FROM=0 scripts/device/prepare.sh         # train from scratch: no weights, a larger pack
#   SCALES="8 4 16" scripts/device/prepare.sh     # all three (default: plan.py's SCALES, x8 and x4)
#   BENCH=1 scripts/device/prepare.sh             # for plan.py calls --bench (onnxruntime-gpu)
# Then: scripts/device/models_out.sh out, the device calls (plan.py calls), models_out.sh back.
set -euo pipefail
cd "$(dirname "$0")/../.."
PACK=${PACK:-packs/faces_all.npz}
INIT_FROM=${INIT_FROM:-1}   # 1: the runs start from the shipped weights (README: why)
PY=${PY:-python3}
SCALES=${SCALES:-$("$PY" scripts/device/plan.py scales)}   # the scales the session trains
export SCALES   # plan.py's default from here on
BENCH=${BENCH:-0}   # 1: also the onnxruntime-gpu bundle that plan.py calls --bench carries
# The service's packages that the GPU machine's python lacks (KINDS.md lists what it has), at the
# versions of requirements/serve-gpu.txt.
SERVICE_WHEELS="fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv
  python-multipart uvicorn annotated-types typing-inspection typing-extensions opentelemetry-api
  fastapi-offline"
init=(--init-from)
[ "$INIT_FROM" = 1 ] || init=(--no-init-from)

[ -f "$PACK" ] || { echo "$PACK: no such pack (facesr-prepare makes it; set PACK=...)" >&2; exit 1; }
[ -f models/x8/manifest.json ] || { echo "models/ is out (scripts/device/models_out.sh back)" >&2; exit 1; }
mkdir -p .device

# onnxruntime-gpu for the --bench sequence only (~20 min of xz on 2 cores; kept between sessions)
if [ "$BENCH" = 1 ] && [ ! -f .device/ort/SHA256SUMS ]; then
  "$PY" scripts/device/ort_bundle.py --out .device/ort
fi

pins=()
for name in $SERVICE_WHEELS; do
  pin=$(grep -E "^$name==" requirements/serve-gpu.txt | head -n 1 | cut -d' ' -f1)
  [ -n "$pin" ] || { echo "$name: no pin in requirements/serve-gpu.txt" >&2; exit 1; }
  pins+=("$pin")
done
rm -rf .device/wheels
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .device/wheels "${pins[@]}"

rm -rf .device/models .device/init
mkdir -p .device/models
cp -r models/x8 .device/models/   # the benchmarks' model (speed does not depend on weights)
if [ "$INIT_FROM" = 1 ]; then   # bf16 copies: half the bytes, so more faces travel
  read -ra scales <<<"$SCALES"
  "$PY" scripts/device/init_weights.py --models models --out .device/init --scales "${scales[@]}"
fi

budget=$("$PY" scripts/device/plan.py pack-budget "${init[@]}")
"$PY" scripts/device/pack.py --pack "$PACK" --out .device/pack.npz --budget-mib "$budget"
"$PY" scripts/device/pack.py --judge --pack "$PACK" --out .device/judge.npz --budget-mib 20
bench=()
[ "$BENCH" = 1 ] && bench=(--bench)
"$PY" scripts/device/plan.py check "${init[@]}" "${bench[@]}"
echo "ready (scales $SCALES): now scripts/device/models_out.sh out, then the calls of: python3 scripts/device/plan.py calls --scales $SCALES ${bench[*]}"
