#!/usr/bin/env bash
# Start a docker engine for the local checks, if none answers: no bridge network, no iptables,
# so containers can only use host networking (or none) and nothing leaves loopback unasked.
#
#   scripts/start_dockerd.sh          # start (no-op when `docker info` already works)
#   scripts/start_dockerd.sh stop     # stop the engine this script started
#
# Needs root and Debian's docker.io (`apt-get install docker.io docker-compose`). State lives
# under CACHE_DIR (default /work/build-cache), outside the repository.
set -euo pipefail

CACHE_DIR=${CACHE_DIR:-/work/build-cache}
PIDFILE="$CACHE_DIR/dockerd.pid"
LOG="$CACHE_DIR/dockerd.log"

if [[ "${1:-start}" == stop ]]; then
    if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        kill "$(cat "$PIDFILE")"
        echo "start_dockerd: stopped dockerd $(cat "$PIDFILE")"
    fi
    rm -f "$PIDFILE"
    exit 0
fi

if docker info >/dev/null 2>&1; then
    echo "start_dockerd: an engine already answers"
    exit 0
fi
command -v dockerd >/dev/null || { echo "start_dockerd: apt-get install docker.io" >&2; exit 1; }
mkdir -p "$CACHE_DIR"
nohup dockerd --bridge=none --iptables=false --ip-masq=false \
    --data-root "$CACHE_DIR/docker-root" --exec-root /run/facesr-docker \
    -H unix:///var/run/docker.sock >"$LOG" 2>&1 &
echo $! >"$PIDFILE"
for _ in $(seq 60); do
    if docker info >/dev/null 2>&1; then
        echo "start_dockerd: dockerd $(cat "$PIDFILE") up (bridge none, iptables off); log $LOG"
        exit 0
    fi
    sleep 1
done
echo "start_dockerd: dockerd did not come up; see $LOG" >&2
exit 1
