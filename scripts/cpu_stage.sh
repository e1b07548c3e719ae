#!/usr/bin/env bash
# One more training stage of a shipped scale on a CPU, then the whole ship if it measures better
# (README "The stages on a CPU"): train from INIT for BUDGET seconds with the GPU stages' recipe;
# scripts/device/after.sh evaluates and exports it and compares it face by face with models/;
# on SHIP: fit the principal basis on the new weights, replace models/x$SCALE, measure the
# uncertainty maps and the identity ranking again (docs/uncertainty.json), the identity/flip
# figures (docs/identity/x$SCALE.json) and the whole-photo ones, rewrite the README's measured
# tables and redraw its figures.
# Let nothing else use the CPU meanwhile (README "Training").
#
#   SCALE=4 SEED=8 BUDGET=5400 scripts/cpu_stage.sh
#   SCALE=4 SEED=9 INIT=runs/x4_first scripts/cpu_stage.sh   # continue an unshipped run
#   SHIP=0 ...: stop after the verdict (models/ and the README untouched)
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:?set SCALE to 4, 8 or 16}
SEED=${SEED:-0}
BUDGET=${BUDGET:-5400}
INIT=${INIT:-models/x$SCALE}
PACK=${PACK:-packs/faces_all.npz}
SHIP=${SHIP:-1}
RUN=runs/gpu/x$SCALE
case $SCALE in   # each scale's principal fit, as shipped
  8) fit=(--fit gradient --ranks 8 --temperatures 0.35 0.5) ;;
  16) fit=(--fit code-error --ranks 4 8 --temperatures 0.7 1) ;;
  *) fit=(--fit code-error --ranks 8 --temperatures 0.35 0.5) ;;
esac
python3 -c "from facesr_core import identity; identity.available() or exit(identity.INSTALL_HINT)"
[ -d "$INIT" ] || { echo "no $INIT" >&2; exit 1; }
[ -f "$PACK" ] || { echo "no $PACK: facesr-prepare (scripts/train_defaults.sh, first step)" >&2; exit 1; }
[ "$(realpath "$INIT")" != "$(realpath -m "$RUN")" ] || { echo "INIT is $RUN, which --no-resume clears: move it first" >&2; exit 1; }
# keep INIT's transposed convs, as scripts/device/train_all.sh does: balancing them changes the model
deconv=--no-balanced-deconv
grep -qs '"balanced_deconv": true' "$INIT"/{config,manifest}.json && deconv=--balanced-deconv

facesr-train --data "$PACK" --out "$RUN" --scale "$SCALE" --preset paper --device cpu \
  --pair-cache --batch-size 64 --phase1-steps 100000000 --phase2-steps 100000000 \
  --phase3-steps 100000000 --time-budget-s "$BUDGET" --hflip --ckpt-every 50 --no-resume \
  --init-from "$INIT" --lr-schedule cosine --warmup-steps 100 --ema 0.999 "$deconv" \
  --phase2-loss nll --icap-logvar-min -6 --no-progress --seed "$SEED"
PRINCIPAL=0 SCALES=$SCALE FILES=runs/gpu PACK=$PACK scripts/device/after.sh | tee "$RUN/after.log"
grep -q "vs models/x$SCALE: SHIP" "$RUN/after.log" || { echo "x$SCALE: kept the shipped model"; exit 0; }
[ "$SHIP" = 1 ] || { echo "x$SCALE: would ship; SHIP=0, so models/ is unchanged"; exit 0; }

python3 -m training.principal --model "$RUN/export" --pack "$PACK" "${fit[@]}" \
  --save-basis "$RUN/principal" --no-progress
python3 -m training.principal --model "$RUN/export" --install-from "$RUN/principal"
python3 scripts/device/compare.py "$RUN/export" "models/x$SCALE" --pack "$PACK" --ship
python3 -m training.uncertainty --pack "$PACK" --models models --scales 4 8 16 --limit 50 \
  --identity --out runs/uncertainty
cp runs/uncertainty/uncertainty.json docs/uncertainty.json
facesr-eval --model "$RUN" --pack "$PACK" --sources celeba utkface --best-of 10 --limit 100 \
  --identity --flip-ensemble --out "$RUN/recheck"
mkdir -p docs/identity && cp "$RUN/recheck/metrics.json" "docs/identity/x$SCALE.json"
python3 -m bench.photo --pack "$PACK" --faces 120 --pause-training --out bench/results/photo.json
python3 -m training.report models --write README.md
python3 scripts/readme_figure.py
python3 scripts/uncertainty_figure.py --curves docs/uncertainty.json
echo "x$SCALE shipped. By hand: the CPU-stage row (models/x$SCALE/manifest.json training.steps),"
echo "the prose figures (docs/identity/x$SCALE.json: identity and flip), BENCHMARKS' int8 row, and"
echo "scripts/device/init_weights.py --models models --out .device/init --scales 8 4"
