#!/usr/bin/env bash
# Run a real Prometheus (Debian's `prometheus` package) with the repository's scrape config,
# deploy/prometheus.yml, unchanged, against a FaceSR service on this machine, and show through
# Prometheus's HTTP API that
#   - the `facesr` target is up,
#   - facesr_requests_total counts the requests sent,
#   - the alert rules (deploy/alerts.yml) loaded, and every query of the Grafana dashboard
#     (deploy/grafana/dashboards/facesr.json) evaluates without error.
#
#   scripts/prometheus_check.sh
#
# The config scrapes facesr:8000 (the compose service name). Here Prometheus runs in a private
# mount namespace whose /etc/hosts maps facesr to 127.0.0.1; the host's /etc/hosts is not touched.
#
# Environment:
#   SERVICE    local     (default) start `python -m service` from .venv on 127.0.0.1:8000
#              container run IMAGE (default facesr:cpu, from scripts/container_check.sh) with
#                        host networking on 127.0.0.1:8000
#              running   use whatever already answers on 127.0.0.1:8000 (e.g. KEEP=1 container_check)
#   MODEL_DIR  models for SERVICE=local (default ./models if present, else /work/build-cache/models)
#   PROM_PORT  Prometheus's port on 127.0.0.1 (default 9090)
#   REQUESTS   /superresolve requests to send (default 5)
# Needs root (unshare + bind mount), prometheus, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

SERVICE=${SERVICE:-local}
IMAGE=${IMAGE:-facesr:cpu}
DOCKER=${DOCKER:-docker}
PROM_PORT=${PROM_PORT:-9090}
REQUESTS=${REQUESTS:-5}
CACHE_DIR=${CACHE_DIR:-/work/build-cache}
if [[ -z "${MODEL_DIR:-}" ]]; then
    if compgen -G "models/x*/manifest.json" >/dev/null; then MODEL_DIR=$REPO/models
    else MODEL_DIR=$CACHE_DIR/models; fi
fi
# The port is the one deploy/prometheus.yml scrapes.
SVC_PORT=$(python3 -c 'import re,sys; print(re.search(r"facesr:(\d+)", open(sys.argv[1]).read()).group(1))' \
    deploy/prometheus.yml)
svc=http://127.0.0.1:$SVC_PORT
prom=http://127.0.0.1:$PROM_PORT

say() { printf '\n== %s\n' "$*"; }
fail() { echo "prometheus_check: FAIL: $*" >&2; exit 1; }
listening() { [[ -n "$(ss -ltnH "sport = :$1" 2>/dev/null)" ]]; }

command -v prometheus >/dev/null || fail "apt-get install prometheus (Debian's package)"
work=$(mktemp -d "${TMPDIR:-/tmp}/facesr-prom.XXXXXX")
svc_pid="" prom_pid="" container=""
cleanup() {
    local rc=$?
    set +e
    [[ -n "$prom_pid" ]] && kill "$prom_pid" 2>/dev/null && wait "$prom_pid" 2>/dev/null
    [[ -n "$svc_pid" ]] && kill "$svc_pid" 2>/dev/null && wait "$svc_pid" 2>/dev/null
    [[ -n "$container" ]] && $DOCKER rm -f "$container" >/dev/null 2>&1
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT

say "promtool check config deploy/prometheus.yml"
promtool check config deploy/prometheus.yml

say "service ($SERVICE) on $svc"
case "$SERVICE" in
    local)
        listening "$SVC_PORT" && fail "port $SVC_PORT is taken (SERVICE=running to use it)"
        [[ -x .venv/bin/python ]] || fail "no .venv (SERVICE=container or running instead)"
        ORT_DISABLE_TELEMETRY=1 FACESR_MODEL_DIR="$MODEL_DIR" FACESR_HOST=127.0.0.1 \
            FACESR_PORT="$SVC_PORT" FACESR_PROVIDERS=cpu .venv/bin/python -m service \
            >"$work/service.log" 2>&1 &
        svc_pid=$!
        echo "python -m service (pid $svc_pid), models $MODEL_DIR" ;;
    container)
        listening "$SVC_PORT" && fail "port $SVC_PORT is taken (SERVICE=running to use it)"
        container=facesr-promcheck
        $DOCKER rm -f "$container" >/dev/null 2>&1 || true
        $DOCKER run -d --name "$container" --network host -e FACESR_HOST=127.0.0.1 \
            -e FACESR_PORT="$SVC_PORT" "$IMAGE" >/dev/null
        echo "container $container from $IMAGE" ;;
    running) ;;
    *) fail "SERVICE must be local, container or running" ;;
esac
for _ in $(seq 120); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$svc/health/ready" || true)" == 200 ]] && break
    sleep 1
done
curl -sf "$svc/health/ready" || { tail -20 "$work/service.log" 2>/dev/null; fail "service not ready"; }
echo

say "Prometheus $(prometheus --version 2>&1 | head -1 | cut -d' ' -f3) on $prom, config deploy/prometheus.yml"
listening "$PROM_PORT" && fail "port $PROM_PORT is taken (set PROM_PORT)"
cp /etc/hosts "$work/hosts"
echo "127.0.0.1 facesr" >>"$work/hosts"
# shellcheck disable=SC2016  # $1 and $@ belong to the inner sh
unshare --mount --propagation private -- sh -c '
    mount --bind "$1" /etc/hosts && shift && exec "$@"' sh "$work/hosts" \
    prometheus --config.file="$REPO/deploy/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$work/prometheus.log" 2>&1 &
prom_pid=$!
for _ in $(seq 30); do curl -sf "$prom/-/ready" >/dev/null 2>&1 && break; sleep 1; done
curl -sf "$prom/-/ready" >/dev/null || { cat "$work/prometheus.log"; fail "Prometheus did not start"; }

say "traffic: $REQUESTS x POST /superresolve, 1 bad upload"
python3 - "$work/lr16.png" <<'EOF'
import struct, sys, zlib
w = h = 16  # a 16x16 RGB gradient: the x8 model's input size
raw = b"".join(b"\x00" + bytes(v for x in range(w) for v in (x * 15, y * 15, 128)) for y in range(h))
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                              + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
EOF
for _ in $(seq "$REQUESTS"); do
    curl -s -o /dev/null -w '%{http_code} ' -F "image=@$work/lr16.png" "$svc/superresolve"
done
echo "not an image" >"$work/bad.txt"
curl -s -o /dev/null -w '%{http_code}\n' -F "image=@$work/bad.txt" "$svc/superresolve"

query() { curl -sG "$prom/api/v1/query" --data-urlencode "query=$1"; }
say "waiting for a scrape that sees them"
want=$REQUESTS
[[ "$SERVICE" == running ]] && want=1
for _ in $(seq 40); do
    n=$(query 'sum(facesr_requests_total{job="facesr",endpoint="/superresolve",status="200"})' \
        | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)')
    (( n >= want )) && break
    sleep 2
done
sleep 12  # one more scrape, so that rate() over the dashboard's window has two points

say "GET /api/v1/targets"
curl -s "$prom/api/v1/targets" | tee "$work/targets.json" | python3 -c '
import json, sys
for t in json.load(sys.stdin)["data"]["activeTargets"]:
    job, url, health = t["labels"]["job"], t["scrapeUrl"], t["health"]
    last, err = t["lastScrape"], t["lastError"]
    print(f"{job:<11} {url:<32} health={health:<5} lastScrape={last} lastError={err!r}")'
say "GET /api/v1/query?query=up{job=\"facesr\"}"
query 'up{job="facesr"}' | tee "$work/up.json"; echo
say "GET /api/v1/query?query=facesr_requests_total{endpoint=\"/superresolve\"}"
query 'facesr_requests_total{endpoint="/superresolve"}' | tee "$work/requests.json"; echo
say "GET /api/v1/query?query=facesr_errors_total"
query 'facesr_errors_total' | tee "$work/errors.json"; echo

python3 - "$work" "$want" <<'EOF'
import json, sys
work, want = sys.argv[1], int(sys.argv[2])
targets = json.load(open(f"{work}/targets.json"))["data"]["activeTargets"]
fs = [t for t in targets if t["labels"]["job"] == "facesr"]
assert fs and all(t["health"] == "up" for t in fs), f"facesr target not up: {fs}"
up = json.load(open(f"{work}/up.json"))["data"]["result"]
assert up and up[0]["value"][1] == "1", f"up != 1: {up}"
req = json.load(open(f"{work}/requests.json"))["data"]["result"]
ok = sum(float(r["value"][1]) for r in req if r["metric"].get("status") == "200")
assert ok >= want, f"facesr_requests_total{{status=200}} = {ok}, expected >= {want}"
print(f"\nchecks: facesr target up, up=1, facesr_requests_total{{endpoint=/superresolve,status=200}} = {ok:g}")
EOF

say "alert rules (deploy/alerts.yml) as loaded"
curl -s "$prom/api/v1/rules" | python3 -c '
import json, sys
groups = json.load(sys.stdin)["data"]["groups"]
rules = [r for g in groups for r in g["rules"]]
for r in rules:
    name, health, state = r["name"], r["health"], r.get("state", "-")
    print(f"{name:<22} health={health:<3} state={state}")
assert rules and all(r["health"] == "ok" for r in rules), "a rule failed to evaluate"'

say "every query of the Grafana dashboard, evaluated by Prometheus"
python3 - "$prom" deploy/grafana/dashboards/facesr.json <<'EOF'
import json, sys, urllib.parse, urllib.request
prom, path = sys.argv[1], sys.argv[2]
dash = json.load(open(path))
bad = 0
for p in dash["panels"]:
    for t in p.get("targets", []):
        expr = t["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
        url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = json.load(urllib.request.urlopen(url, timeout=10))
            status, n = body["status"], len(body["data"]["result"])
        except Exception as exc:  # HTTP 400 on a bad query
            status, n = f"error {exc}", 0
            bad += 1
        print(f"{status:<7} {n:>2} series  {p['title'][:40]:<40} {t.get('legendFormat', '')}")
assert not bad, f"{bad} dashboard queries failed"
EOF

say "prometheus_check: OK"
