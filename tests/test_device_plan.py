"""The GPU sequence (scripts/device/) dry-run on the CPU: every limit of the device tool is
checked before a GPU is ever asked for. Synthetic faces only; about half a minute."""

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from training.data import FacePack
from training.weights import load_model

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "scripts" / "device"
sys.path.insert(0, str(DEVICE))
import pack as device_pack  # noqa: E402
import parts  # noqa: E402
import plan  # noqa: E402

from training import principal  # noqa: E402

MIB = 2**20
NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def run(*cmd: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    full = {**os.environ, "PY": sys.executable, **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=full, capture_output=True, text=True, timeout=1600)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("bench", [False, True])
@pytest.mark.parametrize("init_from", [True, False])
def test_every_call_fits_the_tool_and_the_time_plan_fits_15_minutes(init_from, bench):
    """Tree without models/ plus each call's carried paths (their caps: CI has no .device/)
    within 64 MiB; files back within 8 x 16 MiB; the time plan, start included, with margin."""
    failures = plan.check(init_from, real=False, bench=bench)
    assert failures == []
    assert plan.tree_bytes() < 2.0 * MIB  # what leaves ~60 MiB for the pack or an ORT part
    seq = plan.calls(init_from, bench=bench, real=False)
    rows = plan.time_plan(seq, plan.tree_bytes(), {
        c: plan.carried_bytes(c, real=False, init_from=init_from)[0]
        for call in seq for c in call.carry})
    assert rows[0]["end_s"] == plan.START_S >= 60
    assert max(r["end_s"] for r in rows) + plan.MARGIN_S <= 15 * 60
    for name in ("on_device.sh", "train_all.sh"):  # the scripts' default is the --bench plan's
        assert f"TRAIN_S=${{TRAIN_S:-{plan.TRAIN_S}}}" in (DEVICE / name).read_text()


def test_a_training_only_session_gives_training_every_second_the_plan_leaves():
    """Without --bench: train and finish only (no ort calls, no benchmarks), and the train
    call passes a TRAIN_S that is longer than the --bench plan's yet still fits: 10 s more
    would break the margin or the finish call's timeout."""
    seq = plan.calls(real=False)
    assert [c.name for c in seq] == ["train", "finish"]
    train_s = seq[0].train_s
    assert train_s > plan.TRAIN_S
    assert seq[0].command.startswith(f"SCALES='8 4' INIT_FROM=1 TRAIN_S={train_s} ")
    assert seq[1].command.startswith("SCALES='8 4' BENCH=0 ") and seq[1].carry == [plan.JUDGE]
    with_bench = plan.calls(real=False, bench=True)
    assert with_bench[0].train_s == plan.TRAIN_S and "TRAIN_S=" not in with_bench[0].command
    assert any(c.name.startswith("ort") for c in with_bench)

    def fits(seconds: int) -> bool:
        seq[0].train_s = seconds
        rows = plan.time_plan(seq, plan.tree_bytes(), {
            c: plan.carried_bytes(c, real=False)[0] for call in seq for c in call.carry})
        finish = next(r for r in rows if r["step"] == "finish")
        return (max(r["end_s"] for r in rows) + plan.MARGIN_S <= plan.DEVICE_BUDGET_S
                and finish["command_s"] <= finish["timeout_s"] - 30)

    assert fits(train_s) and not fits(train_s + 10)


def test_the_session_trains_the_scales_short_of_their_targets_and_packs_more_faces():
    """By default x8 and x4 only (x16 met its targets): both calls name them, two scales'
    files come back, and the weights left out go to the pack; --scales/SCALES trains all
    three within the same limits."""
    two = plan.calls(real=False)
    assert all(c.command.startswith("SCALES='8 4' ") for c in two)
    assert sorted(two[-1].back) == ["bench.tar.gz", "x4/model.safetensors", "x4/run.tar.gz",
                                    "x8/model.safetensors", "x8/run.tar.gz"]
    three = plan.calls(real=False, scales=(8, 4, 16))
    assert all(c.command.startswith("SCALES='8 4 16' ") for c in three) and len(three[-1].back) == 7
    assert plan.check(real=False, scales=(8, 4, 16)) == []
    pack_cap = lambda scales: plan.carried_bytes(plan.PACK, real=False, scales=scales)[0]  # noqa: E731
    init_cap = lambda scales: plan.carried_bytes(plan.INIT, real=False, scales=scales)[0]  # noqa: E731
    assert pack_cap((8, 4)) - pack_cap((8, 4, 16)) == pytest.approx(init_cap((16,)), abs=1)
    assert pack_cap((8, 4)) + init_cap((8, 4)) == pytest.approx(
        pack_cap((8, 4, 16)) + init_cap((8, 4, 16)), abs=2)
    printed = run(sys.executable, str(DEVICE / "plan.py"), "scales", env={"SCALES": "16 4"})
    assert printed.stdout.split() == ["16", "4"]
    assert run(sys.executable, str(DEVICE / "plan.py"), "scales",
               env={"SCALES": ""}).stdout.split() == ["8", "4"]


def test_paper_size_weights_fit_one_returned_file():
    from training.config import ModelConfig
    from training.models import StochasticSR

    params = sum(p.numel() for p in StochasticSR(ModelConfig.preset("paper")).parameters())
    assert params * 4 <= plan.WEIGHTS_MIB * MIB <= 16 * MIB


def test_parts_split_stage_and_join_to_the_same_sha256(tmp_path):
    """As on the device: each part arrives in its own run, is staged, then all are joined."""
    whole = tmp_path / "bundle.tar.xz"
    whole.write_bytes(np.random.default_rng(0).bytes(300_000))
    made = parts.split(whole, tmp_path / "made", 120_000)
    assert [p.stat().st_size for p in made] == [120_000, 120_000, 60_000]
    stage = tmp_path / "stage"
    for k, part in enumerate(made):  # one carried part per call; SHA256SUMS with the last
        arrived = tmp_path / f"call{k}"
        arrived.mkdir()
        shutil.copy(part, arrived)
        if k == len(made) - 1:
            shutil.copy(tmp_path / "made" / parts.SUMS, arrived)
        out = run(sys.executable, str(DEVICE / "parts.py"), "stage", str(arrived), str(stage))
        assert out.returncode == 0 and part.name in out.stdout
    joined = tmp_path / "joined"
    out = run(sys.executable, str(DEVICE / "parts.py"), "join", str(stage), str(joined))
    assert out.returncode == 0, out.stderr
    assert sha256(joined) == sha256(whole)

    damaged = stage / made[1].name
    damaged.write_bytes(b"x" + damaged.read_bytes()[1:])
    with pytest.raises(SystemExit, match="damaged parts.*part02"):
        parts.join(stage, tmp_path / "again")
    join = (sys.executable, str(DEVICE / "parts.py"), "join", str(stage), str(tmp_path / "again"))
    assert run(*join).returncode == 1  # damaged: on_device.sh stops
    damaged.unlink()
    with pytest.raises(parts.PartsMissing, match="parts missing.*part02"):
        parts.join(stage, tmp_path / "again")
    assert run(*join).returncode == parts.WAITING  # missing: on_device.sh waits for it


def test_models_out_runs_a_command_and_always_puts_models_back(tmp_path):
    repo = tmp_path / "repo"
    (repo / "models" / "x8").mkdir(parents=True)
    (repo / "scripts" / "device").mkdir(parents=True)
    shutil.copy(DEVICE / "models_out.sh", repo / "scripts" / "device")
    (repo / "models" / "x8" / "w.bin").write_bytes(b"weights")
    (repo / "README.md").write_text("r")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "i"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True)
    script = str(repo / "scripts" / "device" / "models_out.sh")
    failed = run(script, "run", "sh", "-c", "test ! -e models/x8/w.bin && test -e README.md "
                 "&& exit 3", cwd=repo)
    assert failed.returncode == 3, failed.stderr  # models/ was out while the command ran
    assert (repo / "models" / "x8" / "w.bin").read_bytes() == b"weights"  # and came back
    assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                          text=True).stdout == ""
    (repo / "models" / "x8" / "w.bin").write_bytes(b"changed")
    refused = run(script, "out", cwd=repo)
    assert refused.returncode == 1 and "uncommitted" in refused.stderr
    assert (repo / "models" / "x8" / "w.bin").read_bytes() == b"changed"


@pytest.fixture(scope="module")
def carried(pack, tmp_path_factory) -> Path:
    """A .device/ as prepare.sh makes it, from the training tests' synthetic faces: the pack cut
    to half its size."""
    root = tmp_path_factory.mktemp("device")
    budget = pack.stat().st_size / 2 / MIB
    summary = device_pack.write(pack, root / ".device" / "pack.npz", budget_mib=budget, val=2)
    counts = summary["by_split"]  # '<source>/<split>', as facesr-prepare writes it
    assert sum(n for k, n in counts.items() if k.endswith("/val")) == 2
    assert 0 < sum(n for k, n in counts.items() if k.endswith("/train")) < 16
    assert counts == FacePack.split_counts(root / ".device" / "pack.npz")
    assert (root / ".device" / "pack.npz").stat().st_size <= budget * MIB  # cut to the budget
    judging = device_pack.write(pack, root / ".device" / "judge.npz", budget_mib=20, judge=True)
    assert judging["by_split"] == FacePack.split_counts(pack)  # all of 24 faces: 16 train (< 1200)
    return root / ".device"


@pytest.fixture
def work(tmp_path):
    """WORK for on_device.sh; a detached training still running at the end is stopped."""
    yield tmp_path / "work"
    pgid = tmp_path / "work" / "train_pgid"
    if pgid.exists() and not (tmp_path / "work" / "done").exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pgid.read_text()), signal.SIGTERM)


@pytest.mark.timeout(1800)  # ~30 s on an idle CI runner; a shared machine may pause it
def test_dry_run_trains_detached_then_finish_returns_files_within_limits(carried, work, tmp_path):
    """on_device.sh train (detached), status, finish (wait, collect, judge) with --device cpu."""
    env = {"CARRIED": str(carried), "WORK": str(work), "OUT": str(tmp_path / "out"),
           "DEVICE": "cpu", "PRESET": "tiny", "BATCH": "4", "TRAIN_S": "16", "STARTUP_S": "6",
           "START_WAIT_S": "60", "BENCH": "0", "FINISH_SLACK_S": "1500",
           "JUDGE_SOURCES": "utkface",  # the synthetic faces' only source
           "JUDGE_PRINCIPAL_ARGS": "--ranks 1 2 --temperatures 0.5 --train-faces 12"}
    started = run("bash", str(DEVICE / "on_device.sh"), "train", env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "training started" in started.stdout
    finished = run("bash", str(DEVICE / "on_device.sh"), "finish", env=env)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert (tmp_path / "work" / "done").read_text().split() == [
        "x8", "exit", "0", "x4", "exit", "0", "x16", "exit", "0"]

    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) <= plan.RETURN_FILES
    for f in files:
        rel = f.relative_to(tmp_path / "out")
        assert len(rel.parts) <= 3 and all(NAME.match(part) for part in rel.parts)
        assert f.stat().st_size <= 16 * MIB
    assert sorted(str(f.relative_to(tmp_path / "out")) for f in files) == sorted(
        plan.back_files((8, 4, 16)))  # on_device.sh's own default: all three
    for s in (8, 4, 16):
        model, scale = load_model(tmp_path / "out" / f"x{s}")
        assert scale == s and model.cfg.channels == 16  # the tiny preset's weights
        with tarfile.open(tmp_path / "out" / f"x{s}" / "run.tar.gz") as tar:
            names = tar.getnames()
            summary = json.load(tar.extractfile("summary.json"))
            metrics = json.load(tar.extractfile("eval/metrics.json"))
            report = json.load(tar.extractfile("principal/principal.json"))
        assert {"train.log", "log.jsonl", "summary.json", "judge.log",
                "principal/principal_basis.npy"} <= set(names)
        assert summary["steps"]["phase1"] > 0 and summary["steps"]["phase3"] > 0
        assert summary["data"]["train_faces"] < 16  # trained on the cut pack
        # judged: the test split evaluated (4 faces), the basis fitted on these weights
        assert [(r["split"], r["sources"], r["count"]) for r in metrics] == [
            ("test", ["utkface"], 4)]
        assert report["weights_sha256"] == principal.weights_fingerprint(model)
        assert report["test"]["utkface"]["faces"] == 4


def test_ort_step_waits_for_every_part_then_joins_and_unpacks(tmp_path):
    """on_device.sh ort, twice: first call one part (staged, nothing joined), then the last
    part with SHA256SUMS: joined, checked, unpacked; the CUDA check then fails on this CPU."""
    src = tmp_path / "src"
    (src / "onnxruntime_fake").mkdir(parents=True)
    (src / "onnxruntime_fake" / "lib.so").write_bytes(np.random.default_rng(1).bytes(50_000))
    bundle = tmp_path / "onnxruntime-gpu.tar.xz"
    with tarfile.open(bundle, "w:xz") as tar:
        tar.add(src / "onnxruntime_fake", "onnxruntime_fake")
    made = parts.split(bundle, tmp_path / "made", bundle.stat().st_size // 2 + 1)
    assert len(made) == 2
    env = {"CARRIED": str(tmp_path / "carried"), "WORK": str(tmp_path / "work")}
    (tmp_path / "carried" / "ort").mkdir(parents=True)
    shutil.copy(made[0], tmp_path / "carried" / "ort")
    first = run("bash", str(DEVICE / "on_device.sh"), "ort", env=env)
    assert first.returncode == 0 and "SHA256SUMS is missing" in first.stderr
    assert (tmp_path / "work" / "stage" / made[0].name).exists()
    shutil.rmtree(tmp_path / "carried" / "ort")  # the next call's tree: only what it carries
    (tmp_path / "carried" / "ort").mkdir()
    for f in (made[1], tmp_path / "made" / parts.SUMS):
        shutil.copy(f, tmp_path / "carried" / "ort")
    second = run("bash", str(DEVICE / "on_device.sh"), "ort", env=env)
    assert "joined and checked" in second.stdout
    assert sha256(tmp_path / "work" / "onnxruntime-gpu.tar.xz") == sha256(bundle)
    unpacked = tmp_path / "work" / "site" / "onnxruntime_fake" / "lib.so"
    assert unpacked.read_bytes() == (src / "onnxruntime_fake" / "lib.so").read_bytes()
    assert second.returncode == 1 and "CUDAExecutionProvider" in second.stdout + second.stderr


def metrics(celeba: float, utkface: float, count: int = 300) -> dict[str, dict]:
    row = lambda p: {"psnr": p, "ssim": p / 40}  # noqa: E731
    return {f"{src}_test": {"icap_mean": row(p), "bicubic": row(20.0), "count": count,
                            "protocol": "RGB uint8"}
            for src, p in (("celeba", celeba), ("utkface", utkface))}


@pytest.mark.parametrize(("new", "ship"), [
    (metrics(24.0, 28.0), True),          # better on both test splits
    (metrics(24.0, 27.0), False),         # better on CelebA, worse on UTKFace
    (metrics(23.0, 27.5), False),         # as good is not better
    (metrics(25.0, 29.0, count=100), False),  # other faces: not comparable
])
def test_a_scale_ships_only_when_its_served_psnr_wins_on_every_test_split(new, ship):
    import compare

    got, lines = compare.verdict(new, metrics(23.0, 27.5))
    assert got is ship and lines


def test_the_verdict_says_whether_auto_would_serve_the_int8_graphs(tiny_model_dir):
    import compare

    from facesr_core.manifest import QuantizationLoss, load_manifest

    manifest = load_manifest(tiny_model_dir / "x8", verify=False)
    assert compare.int8_line(manifest).endswith("not measured; auto serves fp32 (tolerance "
                                                "0.02 dB)")  # calibrated without a pack
    loss = lambda db: QuantizationLoss(count=300, psnr_fp32=20, psnr_int8=20 - db,  # noqa: E731
                                       loss_db=db)
    manifest.int8.loss = {"celeba_test": loss(0.003), "utkface_test": loss(0.004)}
    manifest.int8.files["icap"] = manifest.files["icap"]  # the ICAP kept in fp32, as x16's
    assert compare.int8_line(manifest) == (
        "int8 loss: celeba_test 0.0030 dB, utkface_test 0.0040 dB (icap kept in fp32); "
        "auto serves int8 (tolerance 0.02 dB)")
    manifest.int8.loss["utkface_test"] = loss(0.085)
    assert compare.int8_line(manifest).endswith("auto serves fp32 (tolerance 0.02 dB)")
    assert compare.int8_line(manifest.model_copy(update={"int8": None})) == (
        "int8: none exported, auto serves fp32")


def fat_binary(archs: list[int], seed: int) -> bytes:
    """A fat binary as the CUDA toolchain lays it out: 16-byte header, then 64-byte entry
    headers (architecture at byte 28) each followed by its payload."""
    rng = np.random.default_rng(seed)
    entries = b""
    for arch in archs:
        payload = rng.bytes(int(rng.integers(8, 40)) * 8)
        head = bytearray(64)
        struct.pack_into("<HHIQ", head, 0, 2, 0x101, 64, len(payload))
        struct.pack_into("<I", head, 28, arch)
        entries += bytes(head) + payload
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(entries)) + entries


def test_onnxruntime_slimming_keeps_exactly_the_sm90_kernels_in_place():
    import ort_bundle

    fatbins = [fat_binary([75, 80, 90, 120], 0), fat_binary([120], 1), fat_binary([90, 86], 2)]
    section = bytearray(b"".join(fatbins))
    kept, dropped = ort_bundle.keep_one_arch(memoryview(section), 90)
    assert (kept, dropped) == (2, 4)
    assert len(section) == sum(map(len, fatbins))  # nothing moved
    offsets = np.cumsum([0] + [len(f) for f in fatbins])
    first = bytes(section[offsets[0]:offsets[1]])
    want = b"".join(e for arch, e in fat_entries(fatbins[0]) if arch == 90)
    assert struct.unpack_from("<Q", first, 8)[0] == len(want)
    assert first[16:16 + len(want)] == want and not any(first[16 + len(want):])
    assert bytes(section[offsets[1]:offsets[2]]) == fatbins[1]  # no sm_90: left as it was
    assert [a for a, _ in fat_entries(bytes(section[offsets[2]:offsets[3]]))] == [90]
    with pytest.raises(SystemExit, match="not a fat binary"):
        ort_bundle.keep_one_arch(memoryview(bytearray(b"\0" * 32)), 90)


def fat_entries(fatbin: bytes) -> list[tuple[int, bytes]]:
    _, _, header, size = struct.unpack_from("<IHHQ", fatbin, 0)
    out, pos = [], header
    while pos < header + size:
        _, _, entry_header, padded = struct.unpack_from("<HHIQ", fatbin, pos)
        out.append((struct.unpack_from("<I", fatbin, pos + 28)[0],
                    fatbin[pos:pos + entry_header + padded]))
        pos += entry_header + padded
    return out


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_wheels_carried_cover_every_import_the_gpu_machine_lacks():
    """What training, the service and the benchmarks import, less what the GPU machine's python
    already has (gpu_machine_packages.txt), must be in prepare.sh's SERVICE_WHEELS. A missing
    one stops a device call after its upload: pydantic did once (training imports the manifest),
    then fastapi-offline (the service's local /docs)."""
    code = ("import sys, json, importlib.metadata as md\n"
            "import training.cli, training.export, training.evaluate, training.principal, "
            "service.app, service.__main__, bench.service\n"
            "dists = md.packages_distributions()\n"
            "top = {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)\n"
            "print(json.dumps(sorted({d for m in top for d in dists.get(m, [])})))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=True)
    imported = {canonical(d) for d in json.loads(out.stdout.strip().splitlines()[-1])}
    there = {canonical(line) for line in (DEVICE / "gpu_machine_packages.txt").read_text()
             .splitlines() if line and not line.startswith("#")}
    prepare = (DEVICE / "prepare.sh").read_text()
    carried = {canonical(n) for n in
               re.search(r'SERVICE_WHEELS="([^"]*)"', prepare).group(1).split()}
    ours = {"facesr"}  # this checkout itself travels as the working tree
    onnxruntime = {"onnxruntime", "onnxruntime-gpu"}  # the ort bundle (ort_bundle.py)
    assert "torch" in imported and "pydantic" in imported  # the probe saw the real imports
    assert imported - there - carried - ours - onnxruntime == set()


def test_plan_run_as_a_script_finds_the_manifest_schema_or_says_what_it_needs():
    """Run as `python3 scripts/device/plan.py`, the script's folder leads sys.path, so the
    project's facesr_core must be found from the repository root; where its dependencies are
    missing (`-S`: no site-packages, so no pydantic) the script says so in one line."""
    probe = "import plan; plan.shipped_weights('{}')"
    run = subprocess.run([sys.executable, "-S", "-c", probe], cwd=DEVICE,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.startswith("plan.py: reading models/*/manifest.json needs the project's "
                                 "environment (No module named 'pydantic')")
    assert "Traceback" not in run.stderr


def test_a_copy_of_weights_shipped_over_since_is_refused_before_the_device_calls(
        tmp_path, monkeypatch):
    """init_weights.py records which weights it copied; plan.py calls/check refuse .device/init
    once another model is committed in their place (prepare.sh not run since), or a copy that
    does not say what it copied."""
    import init_weights
    import torch

    from training.config import ModelConfig
    from training.export import export_model
    from training.models import StochasticSR

    def commit_model(seed: int) -> None:
        torch.manual_seed(seed)
        export_model(StochasticSR(ModelConfig.preset("tiny")), tmp_path / "models" / "x8",
                     scale=8, preset="tiny")
        for cmd in (["add", "models"], ["commit", "-qm", f"x8 {seed}"]):
            subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *cmd],
                           cwd=tmp_path, check=True)

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)  # relative paths, as prepare.sh passes them
    commit_model(1)
    init_weights.write_init(Path("models/x8"), Path(plan.INIT) / "x8")
    assert plan.stale_init((8,), tmp_path) == []
    commit_model(2)  # a new x8 shipped after prepare.sh
    assert plan.stale_init((8,), tmp_path) == [
        f"{plan.INIT}/x8 is not a copy of models/x8 as committed: commit models/, then run "
        "scripts/device/prepare.sh again"]
    init_weights.write_init(Path("models/x8"), Path(plan.INIT) / "x8")
    assert plan.stale_init((8,), tmp_path) == []
    (tmp_path / plan.INIT / "x8" / plan.INIT_SOURCE).unlink()
    assert len(plan.stale_init((8,), tmp_path)) == 1


@pytest.mark.timeout(900)  # two tiny trainings of ~15 s each on an idle runner
def test_runs_start_from_bf16_copies_of_the_shipped_weights_keeping_what_they_were(
        carried, tmp_path):
    """init_weights.py halves the weights (bf16) and the output moves by a fraction of a grey
    level; train_all.sh with INIT_FROM=1 starts each scale from them, keeps a plain-deconv model
    plain and a balanced one balanced (the recipe asks for balanced ones), and fits phase 2
    with nll at the floor of -6 whatever the model it starts from was fitted with."""
    import init_weights
    import torch

    from training.config import ModelConfig
    from training.models import StochasticSR
    from training.weights import MODEL_WEIGHTS, save_model_weights

    x = torch.rand(2, 3, 128, 128) * 2 - 1
    for s, balanced in ((8, False), (4, True)):
        torch.manual_seed(s)
        model = StochasticSR(ModelConfig.preset("tiny", balanced_deconv=balanced,
                                                icap_logvar_min=-6.0 if balanced else -1.0))
        model.eval()
        with torch.no_grad():
            model.sr.decoder.ConvBlock3.weight.normal_(0, 0.05)  # else the output is x
        (tmp_path / "models" / f"x{s}").mkdir(parents=True)
        save_model_weights(model, tmp_path / "models" / f"x{s}" / MODEL_WEIGHTS, scale=s)
        init = init_weights.write_init(tmp_path / "models" / f"x{s}", tmp_path / "init" / f"x{s}")
        assert init.stat().st_size < 0.6 * (tmp_path / "models" / f"x{s}" / MODEL_WEIGHTS
                                            ).stat().st_size
        back, scale = load_model(init.parent)
        assert scale == s and back.cfg == model.cfg
        with torch.no_grad():
            moved = (back.sr(x) - model.sr(x)).abs().max().item() * 127.5  # grey levels
        assert 0 < moved < 0.5
    env = {"SCALES": "8 4", "INIT_FROM": "1", "INIT_DIR": str(tmp_path / "init"),
           "DEVICE": "cpu", "PRESET": "tiny", "BATCH": "4", "TRAIN_S": "14", "STARTUP_S": "6",
           "PHASE3": "0"}
    trained = run("bash", str(DEVICE / "train_all.sh"), str(tmp_path / "work"),
                  str(carried / "pack.npz"), env=env)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    for s, balanced in ((8, False), (4, True)):
        run_dir = tmp_path / "work" / f"x{s}"
        assert "starting from the weights of" in (run_dir / "train.log").read_text()
        config = json.loads((run_dir / "config.json").read_text())
        assert config["balanced_deconv"] is balanced
        assert config["phase2_loss"] == "nll" and config["icap_logvar_min"] == -6.0


@pytest.mark.parametrize(("env", "compiled"), [({}, set()), ({"COMPILE_SCALES": "8 16"}, {8, 16})])
def test_train_all_compiles_only_the_scales_named(tmp_path, env, compiled):
    """--compile for the scales in COMPILE_SCALES, none by default (measured: no gain on an
    H100). A stand-in python records each command."""
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\nargs=("$@")\n'
                    'for ((i = 0; i < $#; i++)); do [ "${args[i]}" = --scale ] && '
                    's=${args[i+1]}; done\necho "$*" >"$ARGS_DIR/x$s"\n')
    fake.chmod(0o755)
    done = run("bash", str(DEVICE / "train_all.sh"), str(tmp_path / "work"), "pack.npz",
               env={"PY": str(fake), "DEVICE": "cuda", "TRAIN_S": "100",
                    "ARGS_DIR": str(tmp_path), **env})
    assert done.returncode == 0, done.stdout + done.stderr
    for s in (8, 4, 16):
        args = (tmp_path / f"x{s}").read_text().split()
        assert args[:3] == ["-m", "training.cli", "train"]
        assert ("--compile" in args) == (s in compiled), s


def test_compare_prints_the_served_gain_face_by_face(tiny_model_dir, pack):
    import compare

    lines = compare.paired_lines(tiny_model_dir / "x8", tiny_model_dir / "x4", pack, ("utkface",))
    # the same weights in both folders: no gain on any of the 4 test faces
    assert lines == ["utkface_test icap_mean, face by face: +0.0000 dB (standard error 0.0000), "
                     "better on 0% of 4 faces"]
