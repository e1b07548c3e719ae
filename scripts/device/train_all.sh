#!/usr/bin/env bash
# Train x8, x4 and x16 at once on one GPU (three processes: while one waits on Python or a host
# sync, the others keep the GPU busy), each inside TRAIN_S seconds of wall time, start-up included.
# Detached by `on_device.sh train`; also runs on the CPU for the dry run:
#   DEVICE=cpu PRESET=tiny TRAIN_S=20 BATCH=4 bash scripts/device/train_all.sh WORK PACK
# Writes WORK/x<s>/ (the run folders, train.log, exit_code) and WORK/done when all three ended.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
WORK=${1:?usage: train_all.sh WORK PACK}
PACK=${2:?usage: train_all.sh WORK PACK}
SCALES=${SCALES:-"8 4 16"}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-paper}
BATCH=${BATCH:-64}           # per process; README "GPU" says how it was chosen
TRAIN_S=${TRAIN_S:-400}      # wall seconds per process, from its start to its weights
STARTUP_S=${STARTUP_S:-40}   # of those: torch import, pack decode, pair cache, writing at the end
CONCURRENT=${CONCURRENT:-1}  # 0: one scale after the other, each with TRAIN_S / (number of scales)
PHASE3=${PHASE3:-1}          # phase 3 (ours) after phases 1 and 2; 60/20/20 of the budget
HFLIP=${HFLIP:-1}            # flips: ~40 passes over ~7k faces, so augment
INIT_FROM=${INIT_FROM:-0}    # 1: start from INIT_DIR/x<s> (the shipped weights)
INIT_DIR=${INIT_DIR:-.device/init}
# the recipe (README "Training recipe"): cosine over each phase's time budget, EMA, no checkerboard,
# phase 2 fitted to the REN's mean code (README "Where we depart from the paper")
RECIPE=${RECIPE:-"--lr-schedule cosine --warmup-steps 100 --ema 0.999 --balanced-deconv
  --phase2-loss nll --icap-logvar-min -6"}
TRAIN_ARGS=${TRAIN_ARGS:-}   # more facesr-train flags
# --compile (torch.compile of phase 1's networks) for these scales; none by default: on an H100
# (2026-11-28) the compiled x8 ran at the eager scales' 218 images/s and lost 48 s compiling.
COMPILE_SCALES=${COMPILE_SCALES:-}
# phase-1 steps each process profiles after its first 5 (training/profiling.py: how busy the GPU
# is, its slowest kernels; profile.json comes back in run.tar.gz); 0: none
PROFILE_STEPS=${PROFILE_STEPS:-4}
PY=${PY:-python3}

n=$(wc -w <<<"$SCALES")
[ "$CONCURRENT" = 1 ] && wall=$TRAIN_S || wall=$((TRAIN_S / n))
budget=$((wall - STARTUP_S))
if [ "$budget" -le 0 ]; then
  echo "TRAIN_S=$TRAIN_S leaves no training time after STARTUP_S=$STARTUP_S" >&2
  exit 2
fi
mkdir -p "$WORK"
rm -f "$WORK/done"
date +%s >"$WORK/train_started"
echo "$TRAIN_S" >"$WORK/train_s"
awk '{print $5}' "/proc/$$/stat" >"$WORK/train_pgid"   # collect.sh stops the group if overdue

train_one() {
  local s=$1 run=$WORK/x$1
  local init=() keep=()
  if [ "$INIT_FROM" = 1 ]; then
    init=(--init-from "$INIT_DIR/x$s")
    # keep the started-from model's transposed convs: balancing them changes what it computes
    grep -qs '"balanced_deconv": true' "$INIT_DIR/x$s"/{config,manifest}.json \
      || keep=(--no-balanced-deconv)
  fi
  local flip=(--no-hflip)
  [ "$HFLIP" = 1 ] && flip=(--hflip)
  local compile=()
  [[ " $COMPILE_SCALES " == *" $s "* ]] && compile=(--compile)
  mkdir -p "$run"
  # shellcheck disable=SC2086  # RECIPE and TRAIN_ARGS are lists of flags
  FACESR_NO_MALLOC_TUNING=1 PYTHONUNBUFFERED=1 "$PY" -m training.cli train --data "$PACK" \
    --out "$run" --scale "$s" --preset "$PRESET" --device "$DEVICE" --pair-cache \
    --batch-size "$BATCH" --phase1-steps 100000000 --phase2-steps 100000000 \
    --phase3-steps $((PHASE3 * 100000000)) --time-budget-s "$budget" "${flip[@]}" \
    --log-every 10 --ckpt-every 100000000 --sample-every 500 --no-resume --no-progress \
    --profile-steps "$PROFILE_STEPS" \
    "${init[@]}" "${compile[@]}" $RECIPE "${keep[@]}" $TRAIN_ARGS >"$run/train.log" 2>&1
  echo $? >"$run/exit_code"
}

echo "scales $SCALES on $DEVICE, batch $BATCH, $budget s of training each, concurrent=$CONCURRENT, compiled: ${COMPILE_SCALES:-none}"
for s in $SCALES; do
  if [ "$CONCURRENT" = 1 ]; then train_one "$s" & else train_one "$s"; fi
done
wait
for s in $SCALES; do echo "x$s exit $(cat "$WORK/x$s/exit_code")"; done | tee "$WORK/done"
