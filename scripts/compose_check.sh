#!/usr/bin/env bash
# `docker compose up` of the CPU variant with host networking, checked end to end:
#   docker-compose.yml + docker-compose.cpu.yml + docker-compose.host.yml, services facesr-cpu
#   and prometheus; the service turns healthy, answers /superresolve on 127.0.0.1:8000, and
#   Prometheus (started by compose with deploy/prometheus.yml) reports the target up and counts
#   the requests. Grafana is not started: its image cannot be pulled here (its provisioning is
#   checked by scripts/lint_deploy.sh and its queries by scripts/prometheus_check.sh).
#
#   scripts/compose_check.sh
#
# Environment:
#   FACESR_IMAGE      image name; :cpu must exist (default facesr; scripts/container_check.sh
#                     builds facesr:cpu, and is run first when it is missing)
#   PROMETHEUS_IMAGE  default: prom/prometheus:v3.5.0 if present locally, else a stand-in,
#                     facesr-prometheus:local, made from BASE_IMAGE + Debian's prometheus binary
#   BASE_IMAGE        base of that stand-in (default facesr-base:bookworm)
#   READY_TIMEOUT_S   how long to wait for the service to turn healthy (default 600; a cold
#                     start loads and warms every model: measure yours, see the README)
#   DOCKER, COMPOSE   CLIs (default docker, and `docker compose` or else docker-compose)
#
# Before `up`, the merged config is checked: every service must use network_mode: host, so that
# compose creates no bridge network. The project is taken down (with its volumes) at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
export FACESR_IMAGE=${FACESR_IMAGE:-facesr}
BASE_IMAGE=${BASE_IMAGE:-facesr-base:bookworm}
PROJECT=facesr-check
READY_TIMEOUT_S=${READY_TIMEOUT_S:-600}
files=(-f docker-compose.yml -f docker-compose.cpu.yml -f docker-compose.host.yml)
if [[ -z "${COMPOSE:-}" ]]; then
    if $DOCKER compose version >/dev/null 2>&1; then COMPOSE="$DOCKER compose"
    else COMPOSE=docker-compose; fi
fi
compose() { $COMPOSE -p "$PROJECT" "${files[@]}" "$@"; }
render=""
say() { printf '\n== %s\n' "$*"; }
fail() { echo "compose_check: FAIL: $*" >&2; exit 1; }

$DOCKER info >/dev/null 2>&1 || fail "no docker engine answers; scripts/start_dockerd.sh starts one"
for port in 8000 9090; do
    [[ -z "$(ss -ltnH "sport = :$port" 2>/dev/null)" ]] || fail "port $port is taken"
done

say "images"
if ! $DOCKER image inspect "$FACESR_IMAGE:cpu" >/dev/null 2>&1; then
    IMAGE="$FACESR_IMAGE:cpu" scripts/container_check.sh
fi
if [[ -z "${PROMETHEUS_IMAGE:-}" ]]; then
    if $DOCKER image inspect prom/prometheus:v3.5.0 >/dev/null 2>&1; then
        PROMETHEUS_IMAGE=prom/prometheus:v3.5.0
    else
        PROMETHEUS_IMAGE=facesr-prometheus:local
        command -v prometheus >/dev/null || fail "apt-get install prometheus (for the stand-in image)"
        ctx=$(mktemp -d)
        cp "$(command -v prometheus)" "$ctx/prometheus"
        # Like prom/prometheus: the binary as entrypoint, flags as command, /prometheus for
        # the TSDB, user nobody.
        cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
COPY prometheus /bin/prometheus
RUN mkdir -p /prometheus /etc/prometheus && chown nobody:nogroup /prometheus
USER nobody
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
        DOCKER_BUILDKIT=0 $DOCKER build -q --network none -t "$PROMETHEUS_IMAGE" "$ctx"
        rm -rf "$ctx"
    fi
fi
export PROMETHEUS_IMAGE
$DOCKER image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^($FACESR_IMAGE:cpu|$PROMETHEUS_IMAGE) "

say "merged config: every service on the host network"
config=$(compose config)
if [[ "$($COMPOSE version --short 2>/dev/null || true)" == 1.* ]]; then
    # Compose v2 discards published ports under host networking (with a warning); compose 1.x
    # (docker-py) refuses them. For 1.x, run the merged config with the moot `ports` removed.
    echo "compose $($COMPOSE version --short): running the rendered config without ports"
    render=$(mktemp --suffix .yml)
    awk '/^    ports:/ { skip = 1; next }
         skip && (/^    - / || /^      /) { next }
         { skip = 0; print }' <<<"$config" >"$render"
    files=(-f "$render")
    config=$(<"$render")
fi
awk '
    /^services:/ { in_s = 1; next }
    in_s && /^[^ ]/ { in_s = 0 }
    in_s && /^  [A-Za-z0-9_.-]+:$/ { svc = $1; sub(":", "", svc); all[svc] = 1 }
    in_s && /^    network_mode: host$/ { host[svc] = 1 }
    END { for (s in all) { printf "%-12s %s\n", s, (s in host) ? "host" : "NOT host"; if (!(s in host)) bad = 1 }
          exit bad }' <<<"$config" || fail "a service is not on the host network"

networks_before=$($DOCKER network ls --format '{{.Name}}/{{.Driver}}' | sort)
cleanup() {
    local rc=$?
    set +e
    compose down -v --remove-orphans >/dev/null 2>&1 || true
    [[ -n "$render" ]] && rm -f "$render"
    exit "$rc"
}
trap cleanup EXIT

say "$COMPOSE up -d facesr-cpu prometheus"
compose up -d --no-build facesr-cpu prometheus
compose ps

say "facesr healthy"
status=""
for _ in $(seq "$READY_TIMEOUT_S"); do
    status=$($DOCKER inspect -f '{{.State.Health.Status}}' facesr 2>/dev/null || true)
    [[ $status == healthy ]] && break
    sleep 1
done
echo "docker health status of container facesr: $status"
[[ $status == healthy ]] || { compose logs --tail 30 facesr-cpu; fail "facesr not healthy"; }
curl -s http://127.0.0.1:8000/health/ready; echo

say "requests"
python3 - "${TMPDIR:-/tmp}/facesr-compose-lr16.png" <<'EOF'
import struct, sys, zlib
w = h = 16
raw = b"".join(b"\x00" + bytes(v for x in range(w) for v in (x * 15, y * 15, 128)) for y in range(h))
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                              + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
EOF
for _ in 1 2 3; do
    curl -s -o /dev/null -w '%{http_code} %{content_type} %{size_download} bytes\n' \
        -F "image=@${TMPDIR:-/tmp}/facesr-compose-lr16.png" http://127.0.0.1:8000/superresolve
done

say "Prometheus (compose service) API"
prom=http://127.0.0.1:9090
for _ in $(seq 60); do curl -sf "$prom/-/ready" >/dev/null 2>&1 && break; sleep 1; done
n=0
for _ in $(seq 30); do
    n=$(curl -sG "$prom/api/v1/query" \
        --data-urlencode 'query=sum(facesr_requests_total{endpoint="/superresolve",status="200"})' \
        | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)')
    (( n >= 3 )) && break
    sleep 2
done
curl -s "$prom/api/v1/targets" | python3 -c '
import json, sys
for t in json.load(sys.stdin)["data"]["activeTargets"]:
    job, url, health, err = t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"]
    print(f"target {job:<11} {url:<32} health={health} lastError={err!r}")'
curl -sG "$prom/api/v1/query" --data-urlencode 'query=facesr_requests_total{endpoint="/superresolve"}'
echo
(( n >= 3 )) || fail "Prometheus counted $n /superresolve requests, expected 3"

say "no network created"
networks_after=$($DOCKER network ls --format '{{.Name}}/{{.Driver}}' | sort)
echo "$networks_after" | tr '\n' ' '; echo
[[ "$networks_after" == "$networks_before" ]] || fail "compose created a network"
! grep -q '/bridge$' <<<"$networks_after" || fail "a bridge network exists"

say "compose_check: OK"
