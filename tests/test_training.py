"""Training runs on tiny generated faces (CPU, seconds): both phases, resume, phase 3, DDP, the
command line end to end, EMA, schedules and loss options."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_cfg

from facesr_core.manifest import load_manifest
from training.train import CHECKPOINT, train
from training.weights import load_model

ROOT = Path(__file__).resolve().parents[1]


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


def run_cli(*args: str, env_extra: dict | None = None,
            timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


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
def test_ddp_ranks_stop_a_time_budget_at_the_same_step(pack, tmp_path):
    """Rank 0 alone draws the loss curve after every step (--ckpt-every 1), so on their own
    clocks the other rank would reach the budget's end later and wait for rank 0 in a
    collective it never joins. All ranks read rank 0's clock, and the run ends cleanly."""
    out = tmp_path / "ddp"
    proc = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "training.cli", "train", "--data", str(pack), "--out", str(out),
                   "--preset", "tiny", "--phase1-steps", "100000", "--phase2-steps", "100000",
                   "--phase3-steps", "0", "--time-budget-s", "6", "--lr-schedule", "cosine",
                   "--warmup-steps", "0", "--batch-size", "4", "--ckpt-every", "1",
                   "--log-every", "1", "--no-progress",
                   env_extra={"OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"]["phase1"] > 1 and summary["steps"]["phase2"] > 1
    lrs = [r["lr"] for r in logged(out) if r["phase"] == 1]
    assert lrs[-1] < lrs[0]  # the cosine followed the budget's clock


@pytest.mark.slow
def test_cli_prepare_train_eval_export(tmp_path, pack):
    run, evald, model_dir = tmp_path / "run", tmp_path / "eval", tmp_path / "models" / "x8"
    steps = [
        ("train", "--data", str(pack), "--out", str(run), "--preset", "tiny", "--phase1-steps",
         "2", "--phase2-steps", "1", "--batch-size", "4", "--no-progress"),
        ("eval", "--model", str(run), "--pack", str(pack), "--sources", "utkface",
         "--best-of", "2", "--out", str(evald)),
        ("export", "--model", str(run), "--out", str(model_dir), "--metrics",
         str(evald / "metrics.json"), "--calibration-faces", "4", "--sample-temperature", "2.5"),
        # a retrained model keeps the shipped one's calibrated temperature (scripts/device/after.sh)
        ("export", "--model", str(run), "--out", str(tmp_path / "again"), "--no-int8",
         "--sample-temperature-from", str(model_dir)),
    ]
    for step in steps:
        proc = run_cli("-m", "training.cli", *step)
        assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = load_manifest(model_dir)
    assert manifest.metrics["utkface_test"]["best_of_2"]["psnr"] > 0
    assert manifest.sample_temperature == 2.5
    assert load_manifest(tmp_path / "again").sample_temperature == 2.5
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


def test_time_budget_and_weights_only_run_folder(pack, tmp_path, capfd):
    from training.weights import MODEL_WEIGHTS, load_model

    run = tmp_path / "run"
    summary = train(tiny_cfg(pack, run, phase1_steps=10_000, phase2_steps=10_000,
                             time_budget_s=2.0), progress=True)
    assert 0 < summary["steps"]["phase1"] < 10_000 and 0 < summary["steps"]["phase2"] < 10_000
    # the bars follow the budget, not the open-ended step counts, and end full
    bars = capfd.readouterr().err
    assert "phase 1 (budget 00:01): 100%" in bars and "phase 2 (budget 00:00): 100%" in bars
    assert "/10000" not in bars
    carried = tmp_path / "carried"  # what a GPU run brings back: the weights alone
    carried.mkdir()
    (carried / MODEL_WEIGHTS).write_bytes((run / MODEL_WEIGHTS).read_bytes())
    (model_a, scale_a), (model_b, scale_b) = load_model(run), load_model(carried)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    assert scale_a == scale_b == 8
    assert torch.equal(model_a.predict(x), model_b.predict(x))


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
    summary = train(tiny_cfg(pack, second, init_from=str(first), phase1_steps=0,
                             phase2_steps=0), progress=False)
    # the history travels: the first run's steps are in the second's summary (and manifest)
    assert summary["started_from"] == {"path": str(first),
                                       "training": json.loads((first / "summary.json")
                                                              .read_text())}
    assert summary["started_from"]["training"]["steps"]["phase1"] == 3
    a = torch.load(first / CHECKPOINT, weights_only=True)["model"]
    b = load_model(second)[0].state_dict()  # model.safetensors: no steps, so no checkpoint
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit, match="x8 model"):
        train(tiny_cfg(pack, tmp_path / "third", init_from=str(first), scale=4), progress=False)


def test_icap_logvar_is_aimed_at_the_log_of_the_squared_error():
    from training.config import ModelConfig
    from training.models import ICAP

    torch.manual_seed(0)
    icap = ICAP(ModelConfig.preset("tiny", icap_logvar_min=-6.0)).train()
    target = torch.logspace(-2.3, 0.2, icap.Conv2.out_channels, base=10.0)  # e^-5.3 to e^0.46
    icap.fit_logvar(target)
    _, logvar = icap(torch.rand(4, 3, 128, 128) * 2 - 1)
    assert torch.allclose(logvar, target.log()[None, :, None, None].expand_as(logvar),
                          atol=1e-4)  # the same at every position, for every input
    icap.fit_logvar(torch.full_like(target, 1e-9))  # below the floor: held inside the range
    assert icap(torch.zeros(1, 3, 128, 128))[1].min() > -6.0


def test_fitting_the_icap_logvar_lowers_phase_2s_first_nll(pack, tmp_path):
    first = tmp_path / "first"
    train(tiny_cfg(pack, first, phase2_steps=1), progress=False)  # a kl ICAP, sigma in [e^-1, e]
    nll = {}
    for fit in (0, 2):
        out = tmp_path / f"nll_fit{fit}"
        train(tiny_cfg(pack, out, init_from=str(first), phase1_steps=0, phase2_steps=1,
                       phase2_loss="nll", icap_logvar_min=-6.0, icap_logvar_fit_batches=fit),
              progress=False)
        nll[fit] = logged(out)[0]["nll"]
    assert nll[2] < 0.9 * nll[0]


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


def test_compiled_phase1_gives_the_eager_losses_and_weights(pack, tmp_path, monkeypatch,
                                                            capsys):
    """--compile (torch.compile of phase 1's networks): the first step's losses match eager
    (same weights, same batch, same draws), and the checkpoint holds the same parameters by
    the same names, so exports and --init-from see no difference. Traced by TorchDynamo and
    AOTAutograd as on a GPU, but run by the aot_eager backend: inductor's C++ code generation
    takes minutes on a 2-core CPU, and a GPU uses its Triton code generation instead."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile",
                        lambda module, **kw: compile_(module, backend="aot_eager", **kw))
    eager = train(tiny_cfg(pack, tmp_path / "eager", phase1_steps=2, phase2_steps=1),
                  progress=False)
    compiled = train(tiny_cfg(pack, tmp_path / "compiled", phase1_steps=2, phase2_steps=1,
                              compile=True), progress=False)
    assert "--compile failed" not in capsys.readouterr().out  # it ran compiled
    assert compiled["steps"] == eager["steps"]
    first = [logged(tmp_path / run)[0] for run in ("eager", "compiled")]
    for key in ("loss", "loss_d", "loss_s"):
        assert first[1][key] == pytest.approx(first[0][key], rel=1e-4), key
    a = torch.load(tmp_path / "eager" / CHECKPOINT, weights_only=True)["model"]
    b = torch.load(tmp_path / "compiled" / CHECKPOINT, weights_only=True)["model"]
    assert a.keys() == b.keys()


class FailsBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("no C++ compiler")


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_a_failing_compile_falls_back_to_eager(pack, tmp_path, monkeypatch, capsys, where):
    """A compiler failure in the first step's forward, or in its backward (compiled on its first
    call), leaves phase 1 to the eager objective, which redoes that step with the same draws:
    the run logs exactly the eager run's losses."""
    class Broken(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args):
            if where == "forward":
                raise RuntimeError("no C++ compiler")
            out = self.module(*args)
            return FailsBackward.apply(out) if isinstance(out, torch.Tensor) else out

    monkeypatch.setattr(torch, "compile", lambda module, **kw: Broken(module))
    fallback = train(tiny_cfg(pack, tmp_path / "fallback", compile=True), progress=False)
    assert "--compile failed (RuntimeError: no C++ compiler); phase 1 runs eager" in (
        capsys.readouterr().out)
    eager = train(tiny_cfg(pack, tmp_path / "eager"), progress=False)
    assert fallback["steps"] == eager["steps"]
    assert [r["loss"] for r in logged(tmp_path / "fallback")] == [
        r["loss"] for r in logged(tmp_path / "eager")]
