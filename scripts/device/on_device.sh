#!/usr/bin/env bash
# The device side of scripts/device/README.md: one step per device call.
#   train    start train_all.sh detached (it outlives the call), report its first steps
#   ort      stage the onnxruntime-gpu parts carried; once all are there, join (sha256),
#            unpack, install the service's wheels, check a CUDA session; report training
#   finish   wait for training, put weights + logs in $OUT, then time the service on CUDA
#   bench    [model] [service] [training]: benchmarks alone (model, service: after ort)
#   status   what training is doing
#   solo     the fallback: train in the foreground and collect, in one call (no benchmarks)
# Everything lives in WORK, outside the working tree, which each call copies anew.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/facesr_gpu}
CARRIED=${CARRIED:-.device}        # where the carried paths arrive (the tree's .device/)
PY=${PY:-python3}
TRAIN_S=${TRAIN_S:-400}
START_WAIT_S=${START_WAIT_S:-75}   # train: how long to watch for every scale's first steps
BENCH_S=${BENCH_S:-200}            # finish: a cap on each of the two benchmarks
FINISH_LIMIT_S=${FINISH_LIMIT_S:-570}  # finish: end by then (its timeout_s is 600)
BENCH=${BENCH:-1}                  # finish: 0 skips the benchmarks (the CPU dry run)
JUDGE=${JUDGE:-1}                  # finish: evaluate and fit the principal bases here (judge)
JUDGE_DEVICE=${JUDGE_DEVICE:-${DEVICE:-cuda}}
JUDGE_SOURCES=${JUDGE_SOURCES:-"celeba utkface"}   # the held-out sources in judge.npz
JUDGE_PRINCIPAL_ARGS=${JUDGE_PRINCIPAL_ARGS:-}   # more training.principal flags (the dry run's grid)
FINISH_SLACK_S=${FINISH_SLACK_S:-90}  # finish: wait this long past TRAIN_S, then stop training
SCALES=${SCALES:-"8 4 16"}
export SCALES TRAIN_S
SITE=$WORK/site

say() { echo "[$(date +%H:%M:%S)] $*"; }

status() {
  for s in $SCALES; do
    local log=$WORK/x$s/log.jsonl
    if [ -f "$WORK/x$s/exit_code" ]; then
      say "x$s: ended, exit $(cat "$WORK/x$s/exit_code"); $(tail -n 3 "$WORK/x$s/train.log" | tr '\n' ' ' | cut -c1-300)"
    elif [ -s "$log" ]; then
      say "x$s: $(tail -n 1 "$log")"
    else
      say "x$s: starting; $(tail -n 2 "$WORK/x$s/train.log" 2>/dev/null | tr '\n' ' ' | cut -c1-300)"
    fi
  done
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,utilization.gpu,memory.used,memory.total --format=csv,noheader || true
}

step_train() {
  nvidia-smi -L || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  [ -f "$CARRIED/pack.npz" ] || { echo "no $CARRIED/pack.npz: carry it (scripts/device/prepare.sh makes it)" >&2; exit 1; }
  if [ -f "$WORK/train_started" ] && [ ! -f "$WORK/done" ]; then
    echo "training already runs in $WORK (rm -rf $WORK to start over)" >&2; exit 1
  fi
  mkdir -p "$WORK"
  cp "$CARRIED/pack.npz" "$WORK/pack.npz"
  if [ -d "$CARRIED/wheels" ]; then rm -rf "$WORK/wheels"; cp -r "$CARRIED/wheels" "$WORK/wheels"; fi
  if [ -d "$CARRIED/init" ]; then rm -rf "$WORK/init"; cp -r "$CARRIED/init" "$WORK/init"; fi
  export INIT_DIR=$WORK/init
  # training imports pydantic (the manifest), which the machine's python lacks: the wheels now
  site_wheels "$WORK/train_site"   # its own: the ort step replaces SITE while training runs
  export PYTHONPATH=$WORK/train_site${PYTHONPATH:+:$PYTHONPATH}
  rm -f "$WORK"/x*/exit_code   # a failed start's, else the watch below reads them as this run's
  # setsid: its own session, so it outlives this call
  setsid nohup bash scripts/device/train_all.sh "$WORK" "$WORK/pack.npz" >"$WORK/train_all.log" 2>&1 </dev/null &
  say "training started (pid $!), watching its first steps for up to $START_WAIT_S s"
  local t=0
  while [ $t -lt "$START_WAIT_S" ]; do
    sleep 5; t=$((t + 5))
    local ready=1
    for s in $SCALES; do
      [ -s "$WORK/x$s/log.jsonl" ] || [ -f "$WORK/x$s/exit_code" ] || ready=0
    done
    [ $ready = 1 ] && break
  done
  status
  cat "$WORK/train_all.log"
}

# CUDA and cuDNN from the nvidia-* wheels of the machine's python (onnxruntime looks for them
# next to itself, and ours is not installed there).
nvidia_libs() {
  "$PY" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("nvidia")
roots = list(spec.submodule_search_locations) if spec else []
print(":".join(sorted({str(p.parent) for r in roots for p in pathlib.Path(r).rglob("lib*.so*")})))
PY
}

# The service's wheels (carried by the train call) into the folder $1.
site_wheels() {
  mkdir -p "$1"
  if [ -d "$WORK/wheels" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$1" "$WORK"/wheels/*.whl
  fi
}

ort_env() {
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  LD_LIBRARY_PATH=$(nvidia_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export LD_LIBRARY_PATH
}

step_ort() {
  mkdir -p "$WORK/stage"
  if [ -d "$CARRIED/ort" ]; then "$PY" scripts/device/parts.py stage "$CARRIED/ort" "$WORK/stage"; fi
  local rc=0
  "$PY" scripts/device/parts.py join "$WORK/stage" "$WORK/onnxruntime-gpu.tar.xz" || rc=$?
  if [ $rc = 3 ]; then status; return 0; fi   # more parts to come
  [ $rc = 0 ] || exit $rc                     # a damaged part: carry it again
  rm -rf "$SITE"; mkdir -p "$SITE"
  "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
    "$WORK/onnxruntime-gpu.tar.xz" "$SITE"
  site_wheels "$SITE"
  ort_env
  "$PY" scripts/device/cuda_check.py || { status; exit 1; }
  status
}

step_finish() {
  local out=${OUT:?the device tool sets OUT}
  local started deadline
  FINISH_END=$(($(date +%s) + FINISH_LIMIT_S))
  [ -f "$WORK/train_started" ] || { echo "no training on this machine ($WORK): it was replaced; README 'GPU' has the fallback" >&2; exit 1; }
  started=$(cat "$WORK/train_started")
  deadline=$((started + $(cat "$WORK/train_s") + FINISH_SLACK_S))   # its TRAIN_S, and slack
  # and early enough to collect within this call's timeout
  [ $deadline -le $((FINISH_END - 60)) ] || deadline=$((FINISH_END - 60))
  while [ ! -f "$WORK/done" ] && [ "$(date +%s)" -lt $deadline ]; do sleep 5; done
  [ -f "$WORK/done" ] || say "training not done by its deadline: collecting what there is"
  status
  bash scripts/device/collect.sh "$WORK" "$out"
  if judge; then bash scripts/device/collect.sh "$WORK" "$out"; fi   # and what judge wrote
  mkdir -p "$WORK/bench"
  tar -czf "$out/bench.tar.gz" -C "$WORK" bench
  if [ "$BENCH" = 1 ]; then bench "$CARRIED/models" "$out"; fi
  find "$out" -type f -exec ls -la {} +
}

# What scripts/device/after.sh would otherwise do for hours on a 2-core CPU, on the GPU in a
# minute or two: evaluate each scale with the shipped models' protocol (both test splits,
# best-of-10 on 100 faces each) and fit its principal basis, on the faces of judge.npz (val and
# test faces, and the basis's training sample: prepare.sh). The scales run at once; each gets
# what is left of this call. Returns 1 when there was nothing to judge.
judge() {
  local pack=$CARRIED/judge.npz limit s
  if [ "$JUDGE" != 1 ] || [ ! -f "$pack" ]; then say "not judging (JUDGE=$JUDGE; $pack)"; return 1; fi
  limit=$((FINISH_END - $(date +%s) - 45))
  if [ "$limit" -lt 30 ]; then say "no time left to judge"; return 1; fi
  say "judging on $JUDGE_DEVICE, at most $limit s"
  local n threads deadline=$(($(date +%s) + limit)) sources extra
  read -ra sources <<<"$JUDGE_SOURCES"
  read -ra extra <<<"$JUDGE_PRINCIPAL_ARGS"
  n=$(wc -w <<<"$SCALES")
  threads=$(( $(nproc) / n ))   # the scales run at once: no oversubscribed CPU threads
  for s in $SCALES; do
    [ -f "$WORK/x$s/model.safetensors" ] || continue
    (
      export PYTHONPATH=$WORK/train_site${PYTHONPATH:+:$PYTHONPATH}   # the train call's wheels
      export OMP_NUM_THREADS=$((threads > 0 ? threads : 1))
      timeout "$limit" "$PY" -m training.cli eval --model "$WORK/x$s" --pack "$pack" \
        --sources "${sources[@]}" --best-of 10 --best-of-limit 100 --device "$JUDGE_DEVICE" \
        --out "$WORK/x$s/eval" >"$WORK/x$s/judge.log" 2>&1 || say "x$s: evaluation failed"
      left=$((deadline - $(date +%s)))   # (timeout 0 would mean no limit at all)
      if [ "$left" -lt 10 ]; then say "x$s: no time left for the principal basis"; exit 0; fi
      timeout "$left" "$PY" -m training.principal --model "$WORK/x$s" \
        --pack "$pack" --sources "${sources[@]}" --device "$JUDGE_DEVICE" \
        --save-basis "$WORK/x$s/principal" --no-progress "${extra[@]}" \
        >>"$WORK/x$s/judge.log" 2>&1 || say "x$s: principal basis failed"
    ) &
  done
  wait
  say "judged: $(find "$WORK" -path '*/eval/metrics.json' -o -path '*/principal/principal.json' | sort | tr '\n' ' ')"
}

# Seconds a benchmark may take: BENCH_S, or less so that the call ends by FINISH_END.
bench_limit() {
  local left=$((FINISH_END - $(date +%s) - 10))
  echo $((left < BENCH_S ? left : BENCH_S))
}

bench() {
  local models=$1 out=$2 which=${3:-"model service"} limit
  ort_env
  limit=$(bench_limit)
  if [ "$limit" -gt 30 ] && [[ $which == *model* ]]; then
    timeout "$limit" "$PY" -m bench.model --model-dir "$models/x8" --provider cuda \
      --sections flops engines samples --json "$WORK/bench/model_cuda.json" || say "bench/model.py failed"
    tar -czf "$out/bench.tar.gz" -C "$WORK" bench   # what is done so far comes back anyway
  fi
  # the service as configured (cuDNN heuristics), then with ONNX Runtime's default (exhaustive)
  local search
  for search in heuristic exhaustive; do
    limit=$(bench_limit)
    if [ "$limit" -gt 30 ] && [[ $which == *service* ]]; then
      timeout "$limit" "$PY" -m bench.service load --model-dir "$models" --provider cuda \
        --cudnn-conv-algo-search $search --concurrency 1 16 64 16 --batching-off-concurrency 16 \
        --duration 6 --warm-s 2 --budget-s 3 --logs "$WORK/bench/logs_$search" \
        --json "$WORK/bench/service_cuda_$search.json" || say "bench/service.py ($search) failed"
      tar -czf "$out/bench.tar.gz" -C "$WORK" bench
    fi
  done
  # a phase-1 step as facesr-train runs it, and under torch.compile (only when asked: `bench training`)
  limit=$(bench_limit)
  if [ "$limit" -gt 30 ] && [[ $which == *training* ]]; then
    timeout "$limit" "$PY" -m bench.training --presets paper --batch 64 128 --steps 10 \
      --variants optimised compiled --device cuda --malloc default \
      --json "$WORK/bench/training_cuda.json" || say "bench/training.py failed"
  fi
  nvidia-smi >"$WORK/bench/nvidia-smi.txt" 2>&1 || true
  tar -czf "$out/bench.tar.gz" -C "$WORK" bench
}

# The benchmarks alone, on a machine where the ort step has run: `bench [model] [service]
# [training]` (training needs no ort step).
step_bench() {
  local out=${OUT:?the device tool sets OUT}
  FINISH_END=$(($(date +%s) + FINISH_LIMIT_S))
  mkdir -p "$WORK/bench"
  bench "$CARRIED/models" "$out" "${*:-model service}"
}

# The fallback when calls cannot follow each other within the warm window: train in the
# foreground (TRAIN_S smaller, to fit one call) and bring the weights back in the same call.
step_solo() {
  local out=${OUT:?the device tool sets OUT}
  [ -f "$CARRIED/pack.npz" ] || { echo "no $CARRIED/pack.npz: carry it" >&2; exit 1; }
  mkdir -p "$WORK"
  cp "$CARRIED/pack.npz" "$WORK/pack.npz"
  if [ -d "$CARRIED/init" ]; then rm -rf "$WORK/init"; cp -r "$CARRIED/init" "$WORK/init"; fi
  INIT_DIR=$WORK/init bash scripts/device/train_all.sh "$WORK" "$WORK/pack.npz"
  status
  bash scripts/device/collect.sh "$WORK" "$out"
  find "$out" -type f -exec ls -la {} +
}


case ${1:-} in
  train) step_train ;;
  ort) step_ort ;;
  finish) step_finish ;;
  bench) shift; step_bench "$@" ;;
  solo) step_solo ;;
  status) status ;;
  *) echo "usage: on_device.sh train|ort|finish|bench|solo|status" >&2; exit 2 ;;
esac
