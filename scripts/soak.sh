#!/usr/bin/env bash
# Soak and overload: 64 concurrent clients for 60 s against `python -m service` on 127.0.0.1
# (paper-size model), then SIGTERM under load. Checks: only 200s or 503s with Retry-After, no
# request past its timeout, server RSS growth under 10%, in-flight requests completed on
# SIGTERM. Exit status 1 when a check fails. Results: bench/results/soak.json (BENCHMARKS.md).
#
#   scripts/soak.sh                      # MODEL_DIR defaults to a random-weight paper model
#   MODEL_DIR=models/x8 CONCURRENCY=64 DURATION=60 scripts/soak.sh
#   PAUSE_TRAINING=1 scripts/soak.sh     # SIGSTOP a background training job meanwhile
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
[ -f .venv/bin/activate ] && . .venv/bin/activate
MODEL_DIR=${MODEL_DIR:-/tmp/facesr-paper/x8}
CONCURRENCY=${CONCURRENCY:-64}
DURATION=${DURATION:-60}
args=(soak --model-dir "$MODEL_DIR" --concurrency "$CONCURRENCY" --duration "$DURATION" --sigterm
      --json "${JSON:-bench/results/soak.json}")
if [ -n "${PAUSE_TRAINING:-}" ]; then
  # bench/common.py resumes it itself; this trap covers a benchmark killed from outside.
  trap 'pkill -CONT -f "[t]raining\.cli|bin/[f]acesr-(train|eval|export|prepare)" || true' EXIT
  args+=(--pause-training)
fi
python -m bench.service "${args[@]}"
