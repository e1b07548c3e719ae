#!/usr/bin/env bash
# Take models/ (52 MB of the 64 MiB a device run may carry) and the docs' figures (docs/*.png,
# ~0.7 MB; no device step reads them) out of the working tree, and put them back. A sparse
# checkout: they stay in git (index and HEAD) and only their files leave the disk, so nothing
# can be lost, and `git status` stays clean meanwhile.
#   scripts/device/models_out.sh out        before the first device call
#   scripts/device/models_out.sh back       after the last one (same as: git sparse-checkout disable)
#   scripts/device/models_out.sh run CMD..  CMD with models/ out, put back on any exit (trap)
set -euo pipefail
cd "$(dirname "$0")/../.."

out() {
  if [ "$(git config --get core.sparseCheckout || true)" = true ]; then
    echo "this checkout is already sparse: run '$0 back' first" >&2; exit 1
  fi
  if [ -n "$(git status --porcelain -- models docs)" ]; then
    echo "models/ or docs/ has uncommitted changes: commit or stash them first" >&2
    exit 1
  fi
  git sparse-checkout set --no-cone '/*' '!/models/' '!/docs/*.png'
  if [ -n "$(find models -type f 2>/dev/null | head -n 1)" ]; then
    echo "models/ still has files after the sparse checkout; putting it back" >&2; back; exit 1
  fi
  echo "models/ is out of the working tree (put it back: $0 back)"
}

back() {
  git sparse-checkout disable
  local first
  first=$(git ls-files models | head -n 1)
  if [ -n "$first" ] && [ ! -f "$first" ]; then
    echo "models/ did not come back: run 'git sparse-checkout disable' by hand" >&2; exit 1
  fi
  echo "models/ is back"
}

case ${1:-} in
  out) out ;;
  back) back ;;
  run) shift; out; trap back EXIT; "$@" ;;
  *) echo "usage: $0 out|back|run CMD..." >&2; exit 2 ;;
esac
