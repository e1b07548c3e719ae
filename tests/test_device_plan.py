"""The GPU sequence (scripts/device/) dry-run on the CPU: every limit of the device tool is
checked before a GPU is ever asked for. Synthetic faces only; about half a minute."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import collect_faces, write_pack
from training.weights import load_model

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "scripts" / "device"
sys.path.insert(0, str(DEVICE))
import pack as device_pack  # noqa: E402
import parts  # noqa: E402
import plan  # noqa: E402

MIB = 2**20
NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def blob_face(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:140, 0:140] / 140.0
    img = np.stack([xx, yy, 1 - xx], -1) * 120
    for _ in range(5):
        cy, cx, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.05, 0.2)]
        img += rng.uniform(0, 120, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def run(*cmd: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    full = {**os.environ, "PY": sys.executable, **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=full, capture_output=True, text=True, timeout=240)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_call_fits_the_tool_and_the_time_plan_fits_15_minutes():
    """Tree without models/ plus each call's carried paths (their caps: CI has no .device/)
    within 64 MiB; files back within 8 x 16 MiB; the time plan, start included, with margin."""
    failures = plan.check(real=False)
    assert failures == []
    assert plan.tree_bytes() < 2.0 * MIB  # what leaves ~60 MiB for the pack or an ORT part
    rows = plan.time_plan(plan.calls(), plan.tree_bytes(), {
        c: plan.carried_bytes(c, real=False)[0] for call in plan.calls() for c in call.carry})
    assert rows[0]["end_s"] == plan.START_S >= 60
    assert max(r["end_s"] for r in rows) + plan.MARGIN_S <= 15 * 60
    for name in ("on_device.sh", "train_all.sh"):  # the scripts' default is the plan's
        assert f"TRAIN_S=${{TRAIN_S:-{plan.TRAIN_S}}}" in (DEVICE / name).read_text()


def test_paper_size_weights_fit_one_returned_file():
    from training.config import ModelConfig
    from training.models import StochasticSR

    params = sum(p.numel() for p in StochasticSR(ModelConfig.preset("paper")).parameters())
    assert params * 4 <= plan.BACK_FILES["x8/model.safetensors"] * MIB <= 16 * MIB


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
    damaged.unlink()
    with pytest.raises(SystemExit, match="parts missing.*part02"):
        parts.join(stage, tmp_path / "again")


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
def carried(tmp_path_factory) -> Path:
    """A .device/ as prepare.sh makes it, from synthetic faces: the pack cut to a budget."""
    root = tmp_path_factory.mktemp("device")
    (root / "imgs").mkdir()
    for k in range(30):
        blob_face(k).save(root / "imgs" / f"{k:03d}.png")
    faces = collect_faces(utkface=root / "imgs", n_test=3, n_val=5)
    write_pack(faces, root / "full.npz", progress=False)
    budget = (root / "full.npz").stat().st_size / 2 / MIB
    summary = device_pack.write(root / "full.npz", root / ".device" / "pack.npz",
                                budget_mib=budget, val=2)
    assert summary["by_split"]["val"] == 2 and 0 < summary["by_split"]["train"] < 22
    assert summary["MiB"] <= budget  # the budget cut it: not every training face fits
    return root / ".device"


def test_dry_run_trains_detached_then_finish_returns_files_within_limits(carried, tmp_path):
    """on_device.sh train (detached), status, finish (wait, collect) with --device cpu."""
    env = {"CARRIED": str(carried), "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out"),
           "DEVICE": "cpu", "PRESET": "tiny", "BATCH": "4", "TRAIN_S": "16", "STARTUP_S": "6",
           "START_WAIT_S": "60", "BENCH": "0", "FINISH_SLACK_S": "200"}
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
    assert sorted(str(f.relative_to(tmp_path / "out")) for f in files) == sorted(plan.BACK_FILES)
    for s in (8, 4, 16):
        model, scale = load_model(tmp_path / "out" / f"x{s}")
        assert scale == s and model.cfg.channels == 16  # the tiny preset's weights
        with tarfile.open(tmp_path / "out" / f"x{s}" / "run.tar.gz") as tar:
            names = tar.getnames()
            summary = json.load(tar.extractfile("summary.json"))
        assert {"train.log", "log.jsonl", "summary.json"} <= set(names)
        assert summary["steps"]["phase1"] > 0 and summary["steps"]["phase3"] > 0
        assert summary["data"]["train_faces"] < 22  # trained on the cut pack


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
    assert first.returncode == 0 and "parts missing" in first.stderr
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
