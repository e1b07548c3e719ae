#!/usr/bin/env bash
# Build the CPU image offline on a local base, run it with host networking, and check it:
#   1. the image: size, non-root user, HEALTHCHECK, no torch, no pip;
#   2. the container: /health/ready turns 200 and Docker reports it healthy;
#   3. one POST /superresolve through the container's port: 200, a 128x128 PNG;
#   4. /metrics counts that request.
#
#   scripts/container_check.sh
#
# Environment (all optional):
#   MODEL_DIR   models to bake in: x4/ x8/ x16/ with manifest.json + ONNX + safetensors
#               (default: ./models if it holds manifests, else /work/build-cache/models)
#   BASE_IMAGE  base of the image (default facesr-base:bookworm, made by scripts/build_base.sh
#               when missing; python:3.11-slim-bookworm works where registries can be reached)
#   ORT_EXTRA   cpu (default) | gpu: which lock is installed. gpu on a CPU-only base checks that
#               the onnxruntime-gpu build installs and serves (on the CPU provider: no GPU here)
#   IMAGE       tag to build (default facesr:cpu, the tag docker-compose.cpu.yml runs;
#               facesr:gpu-local for ORT_EXTRA=gpu)
#   PORT        port the service listens on, on the host's loopback (default 8000)
#   TEST_IMAGE  an LR face to upload (default: a synthetic 16x16 PNG, i.e. the x8 model)
#   READY_TIMEOUT_S  how long to wait for /health/ready and a healthy container (default 600;
#               a cold start loads and warms every model: measure yours, see the README)
#   KEEP=1      leave the container running (name facesr-check) for scripts/prometheus_check.sh
#   DOCKER      docker CLI (default docker); with DOCKER=podman the build uses --isolation=chroot
#   CACHE_DIR   wheelhouse, base rootfs and build contexts (default /work/build-cache)
#
# Network: the build runs with --network none (every wheel comes from the host-side wheelhouse),
# the container with --network host; every request goes to 127.0.0.1. Nothing creates a bridge.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

CACHE_DIR=${CACHE_DIR:-/work/build-cache}
DOCKER=${DOCKER:-docker}
BASE_IMAGE=${BASE_IMAGE:-facesr-base:bookworm}
ORT_EXTRA=${ORT_EXTRA:-cpu}
[[ $ORT_EXTRA == cpu ]] && IMAGE=${IMAGE:-facesr:cpu} || IMAGE=${IMAGE:-facesr:gpu-local}
PORT=${PORT:-8000}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-600}
NAME=facesr-check
if [[ -z "${MODEL_DIR:-}" ]]; then
    if compgen -G "models/x*/manifest.json" >/dev/null; then MODEL_DIR=$REPO/models
    else MODEL_DIR=$CACHE_DIR/models; fi
fi

say() { printf '\n== %s\n' "$*"; }
fail() { echo "container_check: FAIL: $*" >&2; exit 1; }

compgen -G "$MODEL_DIR/x*/manifest.json" >/dev/null \
    || fail "no models in $MODEL_DIR (x4/ x8/ x16/ with manifest.json); see the README"
$DOCKER info >/dev/null 2>&1 || fail "no docker engine answers; scripts/start_dockerd.sh starts one"
if [[ -n "$(ss -ltnH "sport = :$PORT" 2>/dev/null)" ]]; then
    fail "port $PORT is taken; stop that or set PORT"
fi

say "base image $BASE_IMAGE"
if ! $DOCKER image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [[ "$BASE_IMAGE" == facesr-base:* ]]; then
        BASE_TAG=$BASE_IMAGE DOCKER=$DOCKER scripts/build_base.sh
    else
        fail "$BASE_IMAGE is not in the local image store (docker pull it, or unset BASE_IMAGE)"
    fi
fi
pyver=$($DOCKER run --rm --network none "$BASE_IMAGE" python3 -c \
    'import sys; print("%d.%d" % sys.version_info[:2])')
echo "Python $pyver in $BASE_IMAGE"

say "wheelhouse (host side, for Python $pyver)"
wheels="$CACHE_DIR/wheelhouse-$ORT_EXTRA-py${pyver/./}"
PYTHON_VERSION=$pyver scripts/build_wheelhouse.sh "$ORT_EXTRA" "$wheels"

say "build context"
ctx=$(mktemp -d "$CACHE_DIR/context.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
# The working tree's files as git sees them (untracked but not ignored included), no models/.
git ls-files -z --cached --others --exclude-standard -- Dockerfile .dockerignore requirements \
    facesr_core service | xargs -0 -I{} cp --parents {} "$ctx/"
cp -r "$MODEL_DIR" "$ctx/models"
cp -r "$wheels" "$ctx/wheelhouse"
echo "context $ctx: $(du -sh "$ctx" | cut -f1) (models $(du -sh "$ctx/models" | cut -f1) from $MODEL_DIR)"

say "docker build (offline: --network none)"
build_flags=(--network none --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "ORT_EXTRA=$ORT_EXTRA"
             --build-arg WHEELHOUSE=wheelhouse --build-arg MODELS=models -t "$IMAGE")
[[ "$(basename "$DOCKER")" == podman ]] && build_flags+=(--isolation=chroot --format docker)
start=$(date +%s)
DOCKER_BUILDKIT=0 $DOCKER build "${build_flags[@]}" "$ctx"
echo "built $IMAGE in $(( $(date +%s) - start )) s"

say "image"
$DOCKER image ls "$IMAGE"
$DOCKER history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-110 | head -20
user=$($DOCKER image inspect -f '{{.Config.User}}' "$IMAGE")
health=$($DOCKER image inspect -f '{{json .Config.Healthcheck.Test}}' "$IMAGE")
echo "user: $user"
echo "healthcheck: $health"
[[ -n "$user" && "$user" != root && "$user" != 0* ]] || fail "the image runs as root"
[[ "$health" == *health/ready* ]] || fail "no HEALTHCHECK on /health/ready"
# Before the container gets host networking: onnxruntime's telemetry uploader must be off.
[[ "$($DOCKER image inspect -f '{{json .Config.Env}}' "$IMAGE")" == *'"ORT_DISABLE_TELEMETRY=1"'* ]] \
    || fail "ORT_DISABLE_TELEMETRY=1 is not set in the image"
$DOCKER run --rm --network none "$IMAGE" python -c '
import importlib.util as u, onnxruntime as ort, os
assert u.find_spec("torch") is None, "torch is in the image"
assert u.find_spec("pip") is None, "pip is in the image"
print("no torch, no pip; onnxruntime", ort.__version__, ort.get_available_providers(),
      "uid", os.getuid())'

say "run $IMAGE (host network, 127.0.0.1:$PORT)"
$DOCKER rm -f "$NAME" >/dev/null 2>&1 || true
if [[ "${KEEP:-0}" != 1 ]]; then
    trap 'rm -rf "$ctx"; $DOCKER rm -f "$NAME" >/dev/null 2>&1 || true' EXIT
fi
$DOCKER run -d --name "$NAME" --network host \
    -e FACESR_HOST=127.0.0.1 -e FACESR_PORT="$PORT" -e FACESR_PROVIDERS=cpu \
    --health-interval 2s --health-start-period "${READY_TIMEOUT_S}s" "$IMAGE" >/dev/null
base=http://127.0.0.1:$PORT
code=000
for i in $(seq "$READY_TIMEOUT_S"); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$base/health/ready" || true)
    [[ $code == 200 ]] && break
    if [[ "$($DOCKER inspect -f '{{.State.Running}}' "$NAME")" != true ]]; then
        $DOCKER logs "$NAME" 2>&1 | tail -30; fail "the container exited"
    fi
    sleep 1
done
[[ $code == 200 ]] || { $DOCKER logs "$NAME" 2>&1 | tail -30; fail "/health/ready: $code"; }
echo "GET /health/ready -> $code after ${i} s: $(curl -s "$base/health/ready")"
for _ in $(seq 30); do
    status=$($DOCKER inspect -f '{{.State.Health.Status}}' "$NAME")
    [[ $status == healthy ]] && break
    sleep 1
done
echo "docker health status: $status"
$DOCKER inspect -f '{{range .State.Health.Log}}{{.ExitCode}} {{.Start}}{{"\n"}}{{end}}' "$NAME" | tail -2
[[ $status == healthy ]] || fail "docker never reported the container healthy"
echo "processes: $($DOCKER top "$NAME" -o user,pid,args | tail -n +2 | cut -c1-100)"

say "POST /superresolve"
img=${TEST_IMAGE:-}
if [[ -z "$img" ]]; then
    img="$ctx/lr16.png"
    $DOCKER run --rm --network none "$IMAGE" python -c '
import sys, numpy as np; from PIL import Image
y, x = np.mgrid[0:16, 0:16]
rgb = np.stack([x * 15, y * 15, 255 - (x + y) * 7], -1).astype(np.uint8)
Image.fromarray(rgb).save(sys.stdout.buffer, "PNG")' >"$img"
fi
out="$ctx/sr.png"
hdrs=$(curl -s -D - -o "$out" -w '%{http_code}' -F "image=@$img" "$base/superresolve")
code=${hdrs##*$'\n'}
echo "$hdrs" | grep -iE '^(HTTP|content-type|x-facesr|server-timing)' | tr -d '\r'
[[ $code == 200 ]] || { cat "$out"; echo; fail "/superresolve: $code"; }
size=$(python3 -c '
import struct, sys
d = open(sys.argv[1], "rb").read(24)
assert d[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
print("%dx%d" % struct.unpack(">II", d[16:24]))' "$out")
echo "response: PNG $size, $(stat -c %s "$out") bytes"
[[ $size == 128x128 ]] || fail "expected a 128x128 PNG"

say "/metrics"
metrics=$(curl -s "$base/metrics")
grep -E '^facesr_(requests_total\{endpoint="/superresolve"|ready|model_info)' <<<"$metrics"
grep -q '^facesr_requests_total{endpoint="/superresolve",status="200"} 1' <<<"$metrics" \
    || fail "the request is not counted in /metrics"

say "container_check: OK ($IMAGE, $($DOCKER image inspect -f '{{.Size}}' "$IMAGE" \
    | awk '{printf "%.0f MB", $1/1e6}'))"
[[ "${KEEP:-0}" == 1 ]] && echo "container $NAME left running on 127.0.0.1:$PORT ($DOCKER rm -f $NAME)"
exit 0
