"""bench/ runs the service's own pipeline: its ONNX Runtime runner is service.engine.Runner, and
the PyTorch pipeline it times against gives the same images; bench.service's bare pipeline
calls the service's functions as the routes do. bench.training reports every variant, even one
that cannot run."""

import numpy as np

from bench.model import TorchPipeline, ort_runner, random_input
from service import engine
from service.settings import Settings
from training.weights import load_model


def test_bench_runner_is_the_service_runner(tiny_model_dir):
    x = random_input(2, seed=0)
    served = engine.load_models(Settings(model_dir=tiny_model_dir / "x8", precision="fp32"))[8]
    bench = ort_runner(tiny_model_dir / "x8", spinning=False)
    assert isinstance(bench, engine.Runner)
    np.testing.assert_array_equal(bench.superresolve(x), served.superresolve(x))


def test_torch_pipeline_matches_onnx_runtime(tiny_model_dir):
    """The exported weights (manifest.weights, sha256-checked) load back into PyTorch and give
    the ONNX graphs' images, to a grey level."""
    model, scale = load_model(tiny_model_dir / "x8")
    assert scale == 8
    x = random_input(2, seed=0)
    torch_out = TorchPipeline(model.eval())(x).astype(int)
    ort_out = ort_runner(tiny_model_dir / "x8").superresolve(x).astype(int)
    assert torch_out.shape == ort_out.shape == (2, 128, 128, 3)
    assert np.abs(torch_out - ort_out).max() <= 1


def test_training_benchmark_reports_each_variant_and_survives_a_failing_one(monkeypatch):
    """bench.training times a phase-1 step per variant; a variant that cannot run (no compiler
    for torch.compile, out of GPU memory) is reported as such and the others still run."""
    import torch

    from bench import training as bench_training

    cpu = torch.device("cpu")
    rate = bench_training.rate("tiny", "naive", 2, 1, cpu, pause=False)
    assert isinstance(rate, float) and rate > 0

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler\nlong details")

    monkeypatch.setattr(bench_training, "time_steps", no_compiler)
    assert bench_training.rate("tiny", "compiled", 2, 1, cpu, pause=False) == (
        "failed: RuntimeError: no C++ compiler")


def test_bare_pipeline_runs_the_service_functions(tiny_model_dir):
    from bench.common import lr_face
    from bench.service import bare_pipeline

    out = bare_pipeline(tiny_model_dir / "x8", lr_face(), batch=2, n=3, budget_s=0.01)
    assert out["batch"] == 2 and out["samples_n"] == 3
    assert out["one_images_per_s"] > 0 and out["batch_images_per_s"] > 0
    assert set(out["graphs_ms_by_batch"]) == {1, 2}
