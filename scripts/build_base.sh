#!/usr/bin/env bash
# Build a local stand-in for `python:3.11-slim-bookworm` where registry images cannot be pulled:
# a Debian 12 (bookworm, Python 3.11) minbase made with debootstrap, imported as a docker image.
#
#   scripts/build_base.sh                    # -> image facesr-base:bookworm
#
# Environment:
#   BASE_TAG      image tag to create                    (default facesr-base:bookworm)
#   CACHE_DIR     where the rootfs and tarball are kept  (default /work/build-cache; outside git)
#   MIRROR        Debian mirror (default: the first deb.debian.org-style URI in apt's sources)
#   DOCKER        docker CLI to use (default: docker)    e.g. DOCKER=podman
#   REBUILD=1     debootstrap again even if the image exists
#
# Needs root, debootstrap and a running docker engine (or podman). Nothing here talks to a
# registry; the only network traffic is debootstrap fetching .debs from the Debian mirror.
set -euo pipefail

BASE_TAG=${BASE_TAG:-facesr-base:bookworm}
CACHE_DIR=${CACHE_DIR:-/work/build-cache}
DOCKER=${DOCKER:-docker}
ROOTFS="$CACHE_DIR/rootfs-bookworm"

if [[ "${REBUILD:-0}" != 1 ]] && $DOCKER image inspect "$BASE_TAG" >/dev/null 2>&1; then
    echo "build_base: $BASE_TAG exists (REBUILD=1 to make it again)"
    exit 0
fi

if [[ -z "${MIRROR:-}" ]]; then
    MIRROR=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
        /etc/apt/sources.list.d/ 2>/dev/null | grep -oE 'https?://[^ ]+' | head -1 || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi

command -v debootstrap >/dev/null || { echo "build_base: apt-get install debootstrap" >&2; exit 1; }
mkdir -p "$CACHE_DIR"
rm -rf "$ROOTFS"
echo "build_base: debootstrap bookworm from $MIRROR into $ROOTFS"
# python3-venv: the builder stage makes /opt/venv with it. ca-certificates: TLS for the service's
# clients. passwd (in minbase already): useradd for the non-root user.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR"

# Slim it the way the official slim images are: no apt lists or .deb cache, no docs or man pages.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/var/log/*.log "$ROOTFS"/var/cache/debconf/*-old
# Resolver/hosts come from the engine at run time.
: >"$ROOTFS/etc/resolv.conf"
echo facesr-base >"$ROOTFS/etc/hostname"

tar -C "$ROOTFS" --numeric-owner -c . | $DOCKER import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$BASE_TAG"
rm -rf "$ROOTFS"
$DOCKER run --rm --network none "$BASE_TAG" python3 -c 'import sys, venv, ensurepip; print("build_base:", sys.version.split()[0])'
$DOCKER image ls "$BASE_TAG"
