#!/usr/bin/env bash
# The long schemathesis run (the short one is tests/test_schema.py, in CI): every operation of
# /openapi.json, MAX_EXAMPLES per operation (default 1000: several thousand cases), against
# `python -m service` on 127.0.0.1 with tiny random-weight models for x4, x8 and x16.
# Checks: no 5xx, and responses that conform to the schema (content type, headers, body).
#
#   scripts/schemathesis_long.sh                 # SEED=random; MAX_EXAMPLES=1000
#   MODEL_DIR=models MAX_EXAMPLES=300 SEED=7 scripts/schemathesis_long.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
[ -f .venv/bin/activate ] && . .venv/bin/activate
MAX_EXAMPLES=${MAX_EXAMPLES:-1000}
PORT=${PORT:-18411}
work=$(mktemp -d)
MODEL_DIR=${MODEL_DIR:-$work/models}
if [ ! -d "$MODEL_DIR" ]; then
  python - "$MODEL_DIR" <<'PY'
import shutil, sys
from pathlib import Path
import torch
from facesr_core.degradation import lr_size
from facesr_core.manifest import MANIFEST_NAME
from training.config import ModelConfig
from training.export import export_model
from training.models import StochasticSR
root = Path(sys.argv[1])
torch.manual_seed(0)
m = export_model(StochasticSR(ModelConfig.preset("tiny")), root / "x8", scale=8, preset="tiny",
                 version="random-weights")
for s in (4, 16):
    shutil.copytree(root / "x8", root / f"x{s}")
    c = m.model_copy(update={"name": f"x{s}", "scale": s, "lr_size": lr_size(s)})
    (root / f"x{s}" / MANIFEST_NAME).write_text(c.model_dump_json(indent=2))
PY
fi
FACESR_MODEL_DIR=$MODEL_DIR FACESR_HOST=127.0.0.1 FACESR_PORT=$PORT FACESR_MAX_SAMPLES=12 \
  FACESR_MAX_STEPS=8 FACESR_MAX_BATCH=4 FACESR_LOG_LEVEL=warning \
  python -m service > "$work/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 300); do
  curl -fs "http://127.0.0.1:$PORT/health/ready" > /dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.2
done
seed_args=()
[ -n "${SEED:-}" ] && seed_args=(--seed "$SEED")
SCHEMATHESIS_HOOKS=bench.schemathesis_hooks PYTHONPATH=. schemathesis run \
  "http://127.0.0.1:$PORT/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --max-examples "$MAX_EXAMPLES" --workers 1 --request-timeout 60 --no-color "${seed_args[@]}"
echo "server 5xx counted by the service itself:"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^facesr_requests_total\{.*status="5' \
  | grep -v 'health/ready' || echo "  none"
