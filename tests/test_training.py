"""Training, resume, export and DDP on tiny generated faces (CPU, seconds)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from facesr_core.manifest import load_manifest
from training.config import ModelConfig, TrainConfig
from training.data import collect_faces, write_pack
from training.export import ExportError, export_model
from training.models import StochasticSR
from training.train import CHECKPOINT, train
from training.weights import load_model

ROOT = Path(__file__).resolve().parents[1]


def blob_face(seed: int) -> Image.Image:
    """A smooth random 'face': a few coloured Gaussian blobs on a gradient, 150x150."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:150, 0:150] / 150.0
    img = np.stack([xx, yy, 1 - xx], -1) * 120
    for _ in range(6):
        cy, cx, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.05, 0.2)]
        img += rng.uniform(0, 120, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    (root / "imgs").mkdir()
    for k in range(24):
        blob_face(k).save(root / "imgs" / f"{k:03d}.png")
    faces = collect_faces(utkface=root / "imgs", n_test=4, n_val=4)
    write_pack(faces, root / "pack.npz", progress=False)
    return root / "pack.npz"


def tiny_cfg(pack: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(pack), out=str(out), scale=8, preset="tiny", phase1_steps=3,
                phase2_steps=2, batch_size=4, log_every=1, ckpt_every=100, sample_every=100)
    return TrainConfig(**{**base, **kw})


def logged(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def test_both_phases_write_checkpoint_and_artifacts(pack, tmp_path):
    summary = train(tiny_cfg(pack, tmp_path / "run"), progress=False)
    assert summary["steps"] == {"phase1": 3, "phase2": 2, "phase3": 0}
    run = tmp_path / "run"
    for name in (CHECKPOINT, "log.jsonl", "loss_curve.png", "summary.json", "config.json"):
        assert (run / name).is_file(), name
    ckpt = torch.load(run / CHECKPOINT, weights_only=True)
    assert ckpt["steps"] == {"phase1": 3, "phase2": 2, "phase3": 0}
    phases = [r["phase"] for r in logged(run)]
    assert phases == [1, 1, 1, 2, 2]


@pytest.mark.parametrize(("stop_at", "full"), [
    ({"phase1_steps": 2, "phase2_steps": 0}, {"phase1_steps": 3, "phase2_steps": 0}),
    ({"phase1_steps": 2, "phase2_steps": 2}, {"phase1_steps": 2, "phase2_steps": 3}),
    ({"phase1_steps": 2, "phase2_steps": 1, "phase3_steps": 1},
     {"phase1_steps": 2, "phase2_steps": 1, "phase3_steps": 2}),
])
def test_resume_gives_identical_next_step_loss(pack, tmp_path, stop_at, full):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_cfg(pack, straight, patch=64, patch_steps=1, **full), progress=False)
    train(tiny_cfg(pack, resumed, patch=64, patch_steps=1, **stop_at), progress=False)
    with open(resumed / "log.jsonl", "a") as fh:  # a step logged after the last checkpoint
        fh.write(json.dumps({"phase": 1, "step": 99, "loss": 1.0}) + "\n")
    train(tiny_cfg(pack, resumed, patch=64, patch_steps=1, **full), progress=False)
    steps = lambda out: [(r["phase"], r["step"]) for r in logged(out)]  # noqa: E731
    assert steps(resumed) == steps(straight)
    assert logged(resumed)[-1] == {**logged(straight)[-1], "wall_s": logged(resumed)[-1]["wall_s"],
                                   "images_per_s": logged(resumed)[-1]["images_per_s"]}
    a = torch.load(straight / CHECKPOINT, weights_only=True)["model"]
    b = torch.load(resumed / CHECKPOINT, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_phase3_trains_theta_on_the_icap_mean_only(pack, tmp_path):
    """Phase 3 moves theta alone (REN and ICAP stay as phase 2 left them) and logs loss_m."""
    before, after = tmp_path / "p2", tmp_path / "p3"
    train(tiny_cfg(pack, before), progress=False)
    summary = train(tiny_cfg(pack, after, phase3_steps=2), progress=False)
    assert summary["steps"] == {"phase1": 3, "phase2": 2, "phase3": 2}
    a = torch.load(before / CHECKPOINT, weights_only=True)["model"]
    b = torch.load(after / CHECKPOINT, weights_only=True)["model"]
    frozen = [k for k in a if k.startswith(("ren.", "icap."))]
    theta = [k for k in a if k.startswith("sr.") and a[k].is_floating_point()]
    assert frozen and all(torch.equal(a[k], b[k]) for k in frozen)
    assert any(not torch.equal(a[k], b[k]) for k in theta)
    phase3 = [r for r in logged(after) if r["phase"] == 3]
    assert [r["step"] for r in phase3] == [1, 2] and all(r["loss_m"] > 0 for r in phase3)


def random_tiny(global_residual: bool = True) -> StochasticSR:
    torch.manual_seed(0)
    model = StochasticSR(ModelConfig.preset("tiny", global_residual=global_residual))
    with torch.no_grad():  # zero-initialised last conv would make the decoder check trivial
        model.sr.decoder.ConvBlock3.weight.normal_(0, 0.05)
    return model.eval()


@pytest.mark.parametrize("global_residual", [True, False])
def test_onnx_parity_and_manifest(tmp_path, global_residual):
    model = random_tiny(global_residual)
    manifest = export_model(model, tmp_path / "x8", scale=8, preset="tiny")
    loaded = load_manifest(tmp_path / "x8")  # sha256 of every file checked
    assert loaded == manifest and manifest.lr_size == 16 and manifest.opset >= 17
    assert set(manifest.files["decoder"].inputs) == (
        {"features", "z", "x"} if global_residual else {"features", "z"})
    sess = {g: ort.InferenceSession(str(tmp_path / "x8" / f"{g}.onnx")) for g in manifest.files}
    x = torch.rand(5, 3, 128, 128) * 2 - 1  # a batch size the export never saw
    mu, logvar = sess["icap"].run(None, {"x": x.numpy()})
    feats = sess["encoder"].run(None, {"x": x.numpy()})[0]
    feeds = {"features": feats, "z": mu, "x": x.numpy()}
    y = sess["decoder"].run(None, {i.name: feeds[i.name] for i in sess["decoder"].get_inputs()})[0]
    with torch.no_grad():
        want = model.predict(x)
        want_mu, want_lv = model.icap(x)
    assert np.abs(y - want.numpy()).max() <= 1e-4
    assert np.abs(mu - want_mu.numpy()).max() <= 1e-4
    assert np.abs(logvar - want_lv.numpy()).max() <= 1e-4


def test_export_fails_loudly_when_onnx_differs(tmp_path, monkeypatch):
    import training.export as export

    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # nothing can meet a negative tolerance
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export.export_model(random_tiny(), tmp_path / "x8", scale=8, preset="tiny",
                            tolerance=export.TOLERANCE)


def test_int8_export_quantizes_every_graph_and_records_the_loss(tmp_path, pack):
    import onnx

    from training.quantize import add_int8

    model_dir = tmp_path / "x8"
    fp32 = export_model(random_tiny(), model_dir, scale=8, preset="tiny")
    manifest = add_int8(model_dir, pack, count=8)
    assert load_manifest(model_dir) == manifest  # every sha256 checked, the int8 ones too
    assert manifest.files == fp32.files and manifest.int8 is not None  # fp32 left as it was
    for graph, entry in manifest.int8.files.items():
        assert entry.path == f"{graph}.int8.onnx" and entry.inputs == fp32.files[graph].inputs
        ops = {n.op_type for n in onnx.load(str(model_dir / entry.path)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert manifest.int8.calibration["faces"] == 8
    (split, loss), = manifest.int8.loss.items()  # the pack's one source with a test split
    assert split == "utkface_test" and loss.count == 4
    assert loss.loss_db == pytest.approx(loss.psnr_fp32 - loss.psnr_int8)
    assert 10 < loss.psnr_int8 < 60 and abs(loss.loss_db) < 3
    export_model(random_tiny(), model_dir, scale=8, preset="tiny")  # a re-export drops them
    assert load_manifest(model_dir).int8 is None and not list(model_dir.glob("*.int8.onnx"))


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)


@pytest.mark.slow
def test_ddp_two_cpu_processes(pack, tmp_path):
    out = tmp_path / "ddp"
    proc = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "training.cli", "train", "--data", str(pack), "--out", str(out),
                   "--preset", "tiny", "--phase1-steps", "2", "--phase2-steps", "2",
                   "--phase3-steps", "1", "--batch-size", "4", "--log-every", "1",
                   "--no-progress",
                   env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["steps"] == {"phase1": 2, "phase2": 2, "phase3": 1}
    assert (out / CHECKPOINT).is_file()
    assert len(logged(out)) == 5  # rank 0 alone writes the log


@pytest.mark.slow
def test_cli_prepare_train_eval_export(tmp_path, pack):
    run, evald, model_dir = tmp_path / "run", tmp_path / "eval", tmp_path / "models" / "x8"
    steps = [
        ("train", "--data", str(pack), "--out", str(run), "--preset", "tiny", "--phase1-steps",
         "2", "--phase2-steps", "1", "--batch-size", "4", "--no-progress"),
        ("eval", "--model", str(run), "--pack", str(pack), "--sources", "utkface",
         "--best-of", "2", "--out", str(evald)),
        ("export", "--model", str(run), "--out", str(model_dir), "--metrics",
         str(evald / "metrics.json"), "--calibration-faces", "4"),
    ]
    for step in steps:
        proc = run_cli("-m", "training.cli", *step)
        assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = load_manifest(model_dir)
    assert manifest.metrics["utkface_test"]["best_of_2"]["psnr"] > 0
    # int8 came without asking, calibrated and measured on the run's own pack
    assert manifest.int8.calibration["source"] == f"{pack.name}, train split"
    assert set(manifest.int8.loss) == {"utkface_test"}
    proc = run_cli("-m", "training.cli", "export", "--int8-only", "--out", str(model_dir),
                   "--calibration-faces", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = load_manifest(model_dir)  # the run's pack again, from the manifest
    assert again.files == manifest.files and again.int8.calibration["faces"] == 2
    assert set(again.int8.loss) == {"utkface_test"}
    assert manifest.training["steps"] == {"phase1": 2, "phase2": 1, "phase3": 0}
    for fig in ("fig4_oracle.png", "fig7_samples.png", "fig8_traversal.png"):
        assert (evald / "figures_utkface" / fig).is_file()


def test_time_budget_and_weights_only_run_folder(pack, tmp_path):
    from training.weights import MODEL_WEIGHTS, load_model

    run = tmp_path / "run"
    summary = train(tiny_cfg(pack, run, phase1_steps=10_000, phase2_steps=10_000,
                             time_budget_s=2.0), progress=False)
    assert 0 < summary["steps"]["phase1"] < 10_000 and 0 < summary["steps"]["phase2"] < 10_000
    carried = tmp_path / "carried"  # what a GPU run brings back: the weights alone
    carried.mkdir()
    (carried / MODEL_WEIGHTS).write_bytes((run / MODEL_WEIGHTS).read_bytes())
    (model_a, scale_a), (model_b, scale_b) = load_model(run), load_model(carried)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    assert scale_a == scale_b == 8
    assert torch.equal(model_a.predict(x), model_b.predict(x))


def test_best_of_at_temperature_zero_is_the_icap_mean():
    from training.evaluate import evaluate_face

    hr = np.asarray(blob_face(0).resize((128, 128)))
    gen = torch.Generator().manual_seed(0)
    model = random_tiny()
    cold = evaluate_face(model, hr, 8, torch.device("cpu"), (4,), gen, temperature=0.0)
    warm = evaluate_face(model, hr, 8, torch.device("cpu"), (4,), gen, temperature=1.0)
    assert cold["best_of_4"] == cold["icap_mean"]
    assert warm["best_of_4"] != warm["icap_mean"]


def test_lr_schedule_warms_up_then_decays_to_zero():
    from training.schedule import lr_factor

    assert lr_factor("constant", 0.9, 50, 0) == 1.0
    assert lr_factor("constant", 0.0, 0, 10) == pytest.approx(0.1)
    warm = [lr_factor("cosine", s / 100, s, 10) for s in range(100)]
    assert warm[0] == pytest.approx(0.1) and max(warm) <= 1.0
    assert all(a >= b for a, b in zip(warm[10:], warm[11:], strict=False))  # monotone
    assert lr_factor("cosine", 1.0, 100, 10) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        lr_factor("step", 0.5, 1, 0)


def test_cosine_schedule_is_logged_and_ends_near_zero(pack, tmp_path):
    train(tiny_cfg(pack, tmp_path / "run", phase1_steps=6, lr_schedule="cosine"), progress=False)
    lrs = [r["lr"] for r in logged(tmp_path / "run") if r["phase"] == 1]
    assert lrs[0] == pytest.approx(2.5e-4) and lrs[-1] < 0.2 * 2.5e-4


def test_ema_phase_ends_on_the_averaged_weights_and_resumes(pack, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(pack, run, ema=0.9, phase2_steps=0), progress=False)
    ckpt = torch.load(run / CHECKPOINT, weights_only=True)
    averaged = {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    for name, value in ckpt["model"].items():
        assert torch.equal(value, averaged[name]), name
    # resumed with more steps: continues from the checkpoint's EMA, not from scratch
    summary = train(tiny_cfg(pack, run, ema=0.9, phase1_steps=5, phase2_steps=0),
                    progress=False)
    assert summary["steps"]["phase1"] == 5


def test_init_from_starts_from_a_models_weights(pack, tmp_path):
    first = tmp_path / "first"
    train(tiny_cfg(pack, first, phase2_steps=1), progress=False)
    second = tmp_path / "second"
    train(tiny_cfg(pack, second, init_from=str(first), phase1_steps=0, phase2_steps=0),
          progress=False)
    a = torch.load(first / CHECKPOINT, weights_only=True)["model"]
    b = load_model(second)[0].state_dict()  # model.safetensors: no steps, so no checkpoint
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit, match="x8 model"):
        train(tiny_cfg(pack, tmp_path / "third", init_from=str(first), scale=4), progress=False)


def test_l1_deterministic_loss(pack, tmp_path):
    summary = train(tiny_cfg(pack, tmp_path / "run", det_loss="l1", phase2_steps=0),
                    progress=False)
    assert summary["steps"]["phase1"] == 3


def test_phase2_nll_fits_a_lower_sigma_floor(pack, tmp_path):
    from training.losses import phase2_losses

    cfg = tiny_cfg(pack, tmp_path / "run", phase2_loss="nll", icap_logvar_min=-6.0)
    train(cfg, progress=False)
    model = load_model(tmp_path / "run")[0]
    assert model.cfg.icap_logvar_min == -6.0
    assert {"nll", "kl"} <= set(logged(tmp_path / "run")[-1])
    x = torch.zeros(2, 3, 128, 128)
    logvar = model.icap(x)[1]
    assert logvar.min() >= -6.0 and logvar.max() <= 1.0
    with pytest.raises(ValueError, match="phase-2 loss"):
        phase2_losses(model.sr, model.ren, *model.icap(x), x, x, loss="mse")
