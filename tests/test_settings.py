"""service/settings.py and the execution providers (service/engine.py): defaults, the
environment, provider choice, model discovery, every setting documented."""

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from service import engine
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


# --- settings and providers ---------------------------------------------------------------

def test_settings_defaults_and_env(monkeypatch):
    s = Settings()
    assert (s.model_dir, s.providers, s.require_gpu, s.enable_tensorrt) == (
        ROOT / "models", "auto", False, False)
    assert (s.host, s.port, s.workers, s.intra_op_threads) == ("0.0.0.0", 8000, 1, 0)
    assert (s.max_upload_bytes, s.max_pixels, s.max_samples, s.max_steps) == (
        10485760, 16_000_000, 64, 64)
    assert (s.max_batch, s.max_wait_ms, s.max_in_flight, s.request_timeout_s) == (16, 5, 32, 30)
    assert s.api_key.get_secret_value() == "" and s.log_level == "info"
    assert (s.run_concurrency, s.retry_after_s, s.warmup, s.pad_batches) == (1, 1, True, "auto")
    monkeypatch.setenv("FACESR_MAX_SAMPLES", "7")
    monkeypatch.setenv("FACESR_PROVIDERS", "cuda,cpu")
    monkeypatch.setenv("FACESR_LOG_LEVEL", "DEBUG")
    s = Settings()
    assert s.max_samples == 7 and s.provider_names() == [CUDA, CPU] and s.log_level == "debug"
    monkeypatch.setenv("FACESR_PROVIDERS", "gpu")
    with pytest.raises(ValidationError, match="unknown provider"):
        Settings()


@pytest.mark.parametrize("providers, enable_trt, available, want", [
    ("auto", False, [CPU], [CPU]),
    ("auto", False, [TRT, CUDA, CPU], [CUDA, CPU]),
    ("auto", True, [TRT, CUDA, CPU], [TRT, CUDA, CPU]),
    ("cpu", False, [CUDA, CPU], [CPU]),
    ("tensorrt,cuda", False, [TRT, CUDA, CPU], [TRT, CUDA, CPU]),
    ("cuda", False, [CPU], [CPU]),  # not in this build: warned and skipped
])
def test_requested_providers(providers, enable_trt, available, want):
    s = Settings(providers=providers, enable_tensorrt=enable_trt)
    assert engine.requested_providers(s, available) == want


def test_require_gpu_refuses_without_a_gpu_provider():
    with pytest.raises(engine.EngineError, match="REQUIRE_GPU"):
        engine.requested_providers(Settings(require_gpu=True), [CPU])
    with pytest.raises(engine.EngineError, match="not in this onnxruntime build"):
        engine.requested_providers(Settings(require_gpu=True, providers="cuda"), [CPU])


class _FakeSession:
    def __init__(self, providers):
        self._providers = providers

    def get_providers(self):
        return self._providers


def _fake_runner(asked, got, tiny_model_dir):
    manifest = engine.load_manifest(tiny_model_dir / "x8")
    sessions = {g: _FakeSession(got) for g in ("icap", "encoder", "decoder")}
    return engine.Runner(tiny_model_dir / "x8", manifest, sessions, asked, [1], [1])


def test_silent_cuda_fallback_is_detected(tiny_model_dir, caplog):
    """onnxruntime-gpu without CUDA libraries: asked for CUDA, the session runs on the CPU."""
    runner = _fake_runner([CUDA, CPU], [CPU], tiny_model_dir)
    with caplog.at_level(logging.WARNING, logger="facesr"):
        engine.check_provider(runner, Settings())
    assert "fallback" in caplog.text and runner.provider == CPU
    with pytest.raises(engine.EngineError, match="REQUIRE_GPU"):
        engine.check_provider(runner, Settings(require_gpu=True))
    engine.check_provider(_fake_runner([CUDA, CPU], [CUDA, CPU], tiny_model_dir),
                          Settings(require_gpu=True))


def test_two_runtime_packages_are_warned_about(monkeypatch, caplog):
    versions = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}

    def fake_version(name):
        if name not in versions:
            raise engine.metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(engine.metadata, "version", fake_version)
    found = engine.installed_runtimes()
    assert found == ["onnxruntime==1.32.0", "onnxruntime-gpu==1.31.1"]
    with caplog.at_level(logging.WARNING, logger="facesr"):
        assert engine.warn_if_several_runtimes(found)
    assert "exactly one" in caplog.text
    assert not engine.warn_if_several_runtimes(found[:1])


def test_tensorrt_gets_one_profile_over_all_buckets():
    opts = engine.provider_options(TRT, {"x": ["batch", 3, 128, 128]}, 65, "heuristic")
    assert opts["trt_profile_min_shapes"] == "x:1x3x128x128"
    assert opts["trt_profile_max_shapes"] == "x:65x3x128x128"
    assert engine.provider_options(CPU, {"x": ["batch", 3, 128, 128]}, 65, "heuristic") == {}


def test_cuda_sessions_get_the_cudnn_algorithm_search_setting(tiny_model_dir, monkeypatch):
    """The CUDA provider's own default (exhaustive) benchmarks a convolution again at every
    change of its input shape; the service asks for FACESR_CUDNN_CONV_ALGO_SEARCH instead."""
    assert Settings().cudnn_conv_algo_search == "heuristic"
    assert Settings(cudnn_conv_algo_search="EXHAUSTIVE").cudnn_conv_algo_search == "exhaustive"
    with pytest.raises(ValidationError):
        Settings(cudnn_conv_algo_search="fastest")
    asked = []
    real = engine.ort.InferenceSession

    def recording(path, options, providers):
        asked.append(providers)
        return real(path, options, providers=[CPU])  # this machine has no CUDA provider

    monkeypatch.setattr(engine.ort, "InferenceSession", recording)
    settings = Settings(model_dir=tiny_model_dir, cudnn_conv_algo_search="default")
    engine.load_runner(tiny_model_dir / "x8", settings, [CUDA, CPU])
    assert len(asked) == 3  # icap, encoder, decoder
    for providers in asked:
        assert providers == [(CUDA, {"cudnn_conv_algo_search": "DEFAULT"}), (CPU, {})]


def test_model_discovery(tiny_model_dir, tmp_path):
    assert [p.name for p in engine.discover(tiny_model_dir)] == ["x16", "x4", "x8"]
    assert engine.discover(tiny_model_dir / "x8") == [tiny_model_dir / "x8"]
    with pytest.raises(engine.EngineError, match="does not exist"):
        engine.discover(tmp_path / "nope")
    with pytest.raises(engine.EngineError, match="no model"):
        engine.discover(tmp_path)


def test_corrupt_model_refuses_to_load(tiny_model_dir, tmp_path):
    import shutil

    bad = tmp_path / "x8"
    shutil.copytree(tiny_model_dir / "x8", bad)
    with open(bad / "decoder.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(engine.EngineError, match="sha256"):
        engine.load_models(Settings(model_dir=tmp_path))


def test_every_setting_is_documented():
    readme = (ROOT / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        assert f"`FACESR_{name.upper()}`" in readme, name
        assert field.description, name


@pytest.mark.parametrize("spin", [False, True])
def test_spin_waiting_follows_the_setting(spin):
    so = engine.session_options(Settings(ort_spin_wait=spin))
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spin else "0")
