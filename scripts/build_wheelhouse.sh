#!/usr/bin/env bash
# Download the serving image's wheels on the host, for an offline and reproducible `docker build`
# (pip inside a build cannot always reach PyPI: proxies, TLS interception, air gaps).
#
#   scripts/build_wheelhouse.sh [cpu|gpu] [OUT_DIR]
#
#   cpu (default): for the CPU image on python:3.11-slim-bookworm (or the debootstrap base)
#   gpu:           for the GPU image on nvidia/cuda:*-ubuntu24.04 (Python 3.12)
#
# Environment: PYTHON_VERSION (default 3.11 for cpu, 3.12 for gpu), ARCH (default x86_64),
# PIP (default: python3 -m pip). OUT_DIR defaults to /work/build-cache/wheelhouse-<extra>-py<ver>,
# outside the repository: wheelhouses are never committed.
#
# Then build with the wheelhouse inside the build context, e.g.
#   cp -r OUT_DIR ./wheelhouse && docker build --build-arg WHEELHOUSE=wheelhouse ...
# (scripts/container_check.sh does this in a temporary context.)
set -euo pipefail
cd "$(dirname "$0")/.."

extra=${1:-cpu}
case "$extra" in
    cpu) PYTHON_VERSION=${PYTHON_VERSION:-3.11} ;;
    gpu) PYTHON_VERSION=${PYTHON_VERSION:-3.12} ;;
    *) echo "usage: $0 [cpu|gpu] [OUT_DIR]" >&2; exit 2 ;;
esac
ARCH=${ARCH:-x86_64}
out=${2:-/work/build-cache/wheelhouse-$extra-py${PYTHON_VERSION/./}}
PIP=${PIP:-python3 -m pip}

mkdir -p "$out"
# The lock is complete (--no-deps) and hash-pinned (--require-hashes): pip fetches exactly the
# locked files, for the image's interpreter and platform rather than the host's.
platforms=()
for tag in manylinux_2_36 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
           manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 \
           manylinux_2_5 manylinux1; do
    platforms+=(--platform "${tag}_$ARCH")
done
# pip evaluates environment markers for the interpreter it runs on, not for --python-version:
# resolve the lock's markers (e.g. numpy's python_full_version split) for the target first.
req=$(mktemp)
trap 'rm -f "$req"' EXIT
python3 - "requirements/serve-$extra.txt" "$PYTHON_VERSION" "$ARCH" >"$req" <<'EOF'
import re, sys
try:
    from packaging.markers import Marker
except ImportError:
    from pip._vendor.packaging.markers import Marker
path, version, arch = sys.argv[1:]
env = {"python_version": version, "python_full_version": version + ".0",
       "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
       "platform_machine": arch}
logical = re.sub(r"\\\n\s*", " ", open(path).read()).splitlines()
for line in logical:
    if not line.strip() or line.lstrip().startswith("#"):
        continue
    spec, _, rest = line.partition(" --hash")
    name, _, marker = spec.partition(";")
    if marker.strip() and not Marker(marker.strip()).evaluate(env):
        continue
    print(name.strip() + (" --hash" + rest if rest else ""))
EOF
$PIP download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: --implementation cp --python-version "$PYTHON_VERSION" \
    "${platforms[@]}" --dest "$out" -r "$req"

echo "build_wheelhouse: $(find "$out" -maxdepth 1 -name '*.whl' | wc -l) wheels, $(du -sh "$out" | cut -f1), in $out"
