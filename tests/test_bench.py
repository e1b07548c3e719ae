"""bench/ runs the service's own pipeline: its ONNX Runtime runner is service.engine.Runner, and
the PyTorch pipeline it times against gives the same images."""

import numpy as np

from bench.model import TorchPipeline, ort_runner
from service import engine
from service.settings import Settings
from training.weights import load_model


def inputs(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, 3, 128, 128)).astype(np.float32)


def test_bench_runner_is_the_service_runner(tiny_model_dir):
    x = inputs()
    served = engine.load_models(Settings(model_dir=tiny_model_dir / "x8", precision="fp32"))[8]
    bench = ort_runner(tiny_model_dir / "x8", spinning=False)
    assert isinstance(bench, engine.Runner)
    np.testing.assert_array_equal(bench.superresolve(x), served.superresolve(x))


def test_torch_pipeline_matches_onnx_runtime(tiny_model_dir):
    """The exported weights (manifest.weights, sha256-checked) load back into PyTorch and give
    the ONNX graphs' images, to a grey level."""
    model, scale = load_model(tiny_model_dir / "x8")
    assert scale == 8
    x = inputs()
    torch_out = TorchPipeline(model.eval())(x).astype(int)
    ort_out = ort_runner(tiny_model_dir / "x8").superresolve(x).astype(int)
    assert torch_out.shape == ort_out.shape == (2, 128, 128, 3)
    assert np.abs(torch_out - ort_out).max() <= 1
