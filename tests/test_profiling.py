"""`--profile-steps`: a profile of phase-1 steps that leaves the training exactly as it was."""

import json
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_cfg
from torch.autograd import DeviceType

import training.profiling as profiling
from training.profiling import WARMUP_STEPS, summarise
from training.train import CHECKPOINT, train


def test_profiled_steps_write_the_profile_and_train_as_unprofiled(pack, tmp_path, capsys):
    steps = WARMUP_STEPS + 2
    plain = train(tiny_cfg(pack, tmp_path / "plain", phase1_steps=steps), progress=False)
    profiled = train(tiny_cfg(pack, tmp_path / "profiled", phase1_steps=steps, profile_steps=2),
                     progress=False)
    assert "profile: 2 phase-1 steps" in capsys.readouterr().out
    assert profiled["steps"] == plain["steps"]
    a = torch.load(tmp_path / "plain" / CHECKPOINT, weights_only=True)["model"]
    b = torch.load(tmp_path / "profiled" / CHECKPOINT, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((tmp_path / "profiled" / "profile.json").read_text())
    assert summary["steps"] == 2 and summary["wall_s"] > 0 and summary["images_per_s"] > 0
    assert "device_busy_fraction" not in summary  # a CPU run has no device to be busy
    names = [row["name"] for row in summary["top_ops_by_cpu_time"]]
    assert any("conv" in name for name in names), names
    assert 0 < sum(row["share"] for row in summary["top_ops_by_cpu_time"]) <= 1.0001
    assert "Self CPU" in (tmp_path / "profiled" / "profile.txt").read_text()
    assert not (tmp_path / "plain" / "profile.json").exists()


def test_a_profiler_failure_is_reported_and_the_training_goes_on(pack, tmp_path, capsys,
                                                                  monkeypatch):
    def broken(**_):
        raise RuntimeError("no CUPTI here")

    monkeypatch.setattr(profiling, "profile", broken)
    summary = train(tiny_cfg(pack, tmp_path / "run", phase1_steps=WARMUP_STEPS + 2,
                             profile_steps=2), progress=False)
    assert summary["steps"]["phase1"] == WARMUP_STEPS + 2
    assert "the profiler failed (RuntimeError: no CUPTI here)" in capsys.readouterr().out
    assert not (tmp_path / "run" / "profile.json").exists()


def event(key: str, device: DeviceType, cpu_us: float = 0.0, device_us: float = 0.0):
    return SimpleNamespace(key=key, count=3, device_type=device, self_cpu_time_total=cpu_us,
                           self_device_time_total=device_us)


def test_device_busy_is_the_kernels_time_over_the_wall_time():
    """On a GPU the kernel rows carry the device time; the operator rows that launched them
    carry it too (as their own), so only kernel rows count as busy time."""
    events = [
        event("aten::cudnn_convolution", DeviceType.CPU, cpu_us=2_000, device_us=30_000),
        event("aten::native_batch_norm", DeviceType.CPU, cpu_us=5_000, device_us=10_000),
        event("sm90_xmma_fprop", DeviceType.CUDA, device_us=30_000),
        event("batch_norm_collect_statistics", DeviceType.CUDA, device_us=10_000),
    ]
    summary = summarise(events, wall_s=0.2, steps=2, images=128, on_device=True)
    assert summary["device_busy_s"] == pytest.approx(0.04)
    assert summary["device_busy_fraction"] == pytest.approx(0.2)
    assert summary["images_per_s"] == pytest.approx(640)
    kernels = summary["top_kernels"]
    assert [k["name"] for k in kernels] == ["sm90_xmma_fprop", "batch_norm_collect_statistics"]
    assert kernels[0]["ms_per_step"] == pytest.approx(15) and kernels[0]["share"] == 0.75
    assert summary["top_ops_by_cpu_time"][0]["name"] == "aten::native_batch_norm"


def test_the_gist_names_the_busy_share_and_the_slowest_kernels():
    events = [event("sm90_xmma_fprop", DeviceType.CUDA, device_us=30_000),
              event("aten::add", DeviceType.CPU, cpu_us=1_000)]
    gist = profiling.describe(summarise(events, wall_s=0.1, steps=1, images=64, on_device=True))
    assert "device busy 30% of the wall time" in gist and "sm90_xmma_fprop 100%" in gist
    cpu_gist = profiling.describe(summarise(events, wall_s=0.1, steps=1, images=64,
                                            on_device=False))
    assert "device busy" not in cpu_gist and "aten::add 100%" in cpu_gist


def test_a_phase_that_ends_first_writes_the_steps_it_profiled(pack, tmp_path):
    train(tiny_cfg(pack, tmp_path / "run", phase1_steps=WARMUP_STEPS + 1, profile_steps=3),
          progress=False)
    assert json.loads((tmp_path / "run" / "profile.json").read_text())["steps"] == 1
    assert torch.autograd.profiler._is_profiler_enabled is False  # none left running
