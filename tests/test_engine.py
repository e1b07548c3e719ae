"""service/engine.py without HTTP: serving precision, batch buckets, padding, CPU chunks,
warm-up, the model input."""

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from facesr_core.degradation import bicubic_upsample, degrade, to_model_range
from service import engine, sampling
from service.settings import Settings

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


# --- precision: fp32 or int8 ---------------------------------------------------------------

def with_int8_loss(manifest, losses: dict[str, float] | None):
    """The manifest with these int8 PSNR losses by test split (None: no int8 graphs at all)."""
    from facesr_core.manifest import QuantizationLoss

    if losses is None:
        return manifest.model_copy(update={"int8": None})
    loss = {k: QuantizationLoss(count=300, psnr_fp32=25.0, psnr_int8=25.0 - v, loss_db=v)
            for k, v in losses.items()}
    return manifest.model_copy(update={"int8": manifest.int8.model_copy(update={"loss": loss})})


BOTH_SMALL = {"celeba_test": 0.004, "utkface_test": 0.02}


@pytest.mark.parametrize("wanted, provider, losses, want", [
    ("auto", CPU, BOTH_SMALL, "int8"),
    ("auto", CPU, {"celeba_test": -0.01, "utkface_test": 0.001}, "int8"),  # int8 a bit better
    ("auto", CPU, {"celeba_test": 0.004, "utkface_test": 0.021}, "fp32"),  # one split above
    ("auto", CPU, {}, "fp32"),  # int8 graphs, but no loss measured (no pack at export)
    ("auto", CPU, None, "fp32"),  # no int8 graphs
    ("auto", CUDA, BOTH_SMALL, "fp32"),  # GPU providers: always fp32 under auto
    ("auto", TRT, BOTH_SMALL, "fp32"),
    ("fp32", CPU, BOTH_SMALL, "fp32"),
    ("int8", CPU, {"celeba_test": 0.5}, "int8"),  # asked for explicitly: served whatever the loss
    ("int8", CUDA, {}, "int8"),
])
def test_serving_precision(tiny_model_dir, wanted, provider, losses, want):
    manifest = with_int8_loss(engine.load_manifest(tiny_model_dir / "x8"), losses)
    assert engine.serving_precision(manifest, wanted, provider) == want


def test_int8_asked_for_but_absent_is_a_model_error(tiny_model_dir):
    manifest = with_int8_loss(engine.load_manifest(tiny_model_dir / "x8"), None)
    with pytest.raises(engine.ModelError, match="FACESR_PRECISION=int8 but .* no int8 graphs"):
        engine.serving_precision(manifest, "int8", CPU)


def test_precision_setting_is_checked():
    assert Settings(precision="INT8").precision == "int8"
    with pytest.raises(ValidationError):
        Settings(precision="fp16")


# --- buckets and the runner ---------------------------------------------------------------

def test_batch_buckets():
    assert engine.batch_buckets(1) == [1]
    assert engine.batch_buckets(16) == [1, 2, 4, 8, 16]
    assert engine.batch_buckets(12) == [1, 2, 4, 8, 12]
    assert engine.batch_buckets(65) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 65]
    buckets = engine.batch_buckets(65)
    assert [engine.bucket_for(n, buckets) for n in (1, 3, 9, 11, 64, 65)] == [1, 4, 16, 16, 64, 65]
    with pytest.raises(ValueError):
        engine.bucket_for(66, buckets)


def test_pad_rows():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert engine.pad_rows(a, 4).tolist() == [[0, 1, 2], [3, 4, 5], [0, 0, 0], [0, 0, 0]]
    assert engine.pad_rows(a[:1], 3).tolist() == [[0, 1, 2]] * 3


def test_runner_padding_does_not_change_outputs(tiny_model_dir, astronaut_hr):
    s = Settings(model_dir=tiny_model_dir / "x8", max_batch=4, max_samples=4, max_steps=4,
                 pad_batches="always")
    runner = engine.load_models(s)[8]
    assert runner.pad
    hr = Image.fromarray(astronaut_hr)
    x = np.stack([engine.model_input(degrade(hr.rotate(a), 8)) for a in (0, 90, 180)])
    together = runner.superresolve(x)  # 3 inputs padded to the bucket of 4
    alone = np.stack([runner.superresolve(x[i:i + 1])[0] for i in range(3)])
    np.testing.assert_array_equal(together, alone)
    assert runner.calls["decoder"] == runner.calls["icap"] == {1, 4}
    runner.pad = False
    np.testing.assert_array_equal(runner.superresolve(x), together)
    assert runner.calls["decoder"] == {1, 3, 4}
    with pytest.raises(ValueError, match="larger than the largest bucket"):
        runner.superresolve(np.concatenate([x, x]))


def test_padding_is_automatic_on_gpus_only(tiny_model_dir):
    assert not engine.load_models(Settings(model_dir=tiny_model_dir / "x8"))[8].pad
    assert engine.load_models(Settings(model_dir=tiny_model_dir / "x8",
                                       pad_batches="always"))[8].pad


def test_cpu_calls_run_in_chunks_with_unchanged_outputs(tiny_model_dir, astronaut_hr):
    s = Settings(model_dir=tiny_model_dir / "x8", max_samples=10, max_batch=8, cpu_chunk=3)
    runner = engine.load_models(s)[8]
    assert runner.max_rows == 3 and not runner.pad
    hr = Image.fromarray(astronaut_hr)
    x = np.stack([engine.model_input(degrade(hr.rotate(a), 8)) for a in range(0, 35, 5)])
    chunked = sampling.sample_set(runner, x[0], 4, 10, runner.draws("icap", 1.0))
    faces = runner.superresolve(x)
    assert runner.calls["decoder"] == {1, 2, 3} and runner.calls["encoder"] == {1, 3}
    runner.max_rows = None
    whole = sampling.sample_set(runner, x[0], 4, 10, runner.draws("icap", 1.0))
    np.testing.assert_array_equal(chunked.images, whole.images)
    np.testing.assert_array_equal(chunked.log_density, whole.log_density)
    np.testing.assert_array_equal(faces, runner.superresolve(x))
    assert runner.calls["decoder"] == {1, 2, 3, 7, 11}


def test_flip_ensemble_averages_the_face_and_its_mirror_before_rounding(tiny_model_dir,
                                                                         astronaut_hr):
    from facesr_core.degradation import from_model_range

    s = Settings(model_dir=tiny_model_dir / "x8", flip_ensemble=True)
    runner = engine.load_models(s)[8]
    assert runner.flip_ensemble and runner.info()["flip_ensemble"] is True
    hr = Image.fromarray(astronaut_hr)
    x = np.stack([engine.model_input(degrade(hr.rotate(a), 8)) for a in (0, 20)])
    ensembled = runner.superresolve(x)
    plain = runner._mean_output(x)  # float, model range, NCHW
    mirrored = runner._mean_output(np.ascontiguousarray(x[..., ::-1]))[..., ::-1]
    assert not np.allclose(plain, mirrored)  # the tiny model is not mirror-symmetric
    np.testing.assert_array_equal(ensembled, from_model_range((plain + mirrored) / 2))
    runner.flip_ensemble = False
    np.testing.assert_array_equal(runner.superresolve(x), from_model_range(plain))


def test_warm_up_sizes_and_stopping(tiny_model_dir):
    s = Settings(model_dir=tiny_model_dir / "x8", max_samples=10, max_steps=4, max_batch=4)
    cpu = engine.load_models(s)[8]
    assert cpu.warmup_sizes() == ([1], [1])  # the CPU provider tunes nothing per shape
    assert cpu.warmup() > 0 and cpu.calls["decoder"] == cpu.calls["encoder"] == {1}
    padded = engine.load_models(s.model_copy(update={"pad_batches": "always"}))[8]
    assert padded.warmup_sizes() == ([1, 2, 4], [1, 2, 4, 8, 11])
    assert padded.warmup(stop=lambda: True) is None
    assert padded.calls["encoder"] == set() and padded.warm_seconds is None
    calls = iter(range(100))
    assert padded.warmup(stop=lambda: next(calls) >= 2) is None  # SIGTERM after two calls
    assert padded.calls["encoder"] == {1, 2} and padded.calls["decoder"] == set()
    assert padded.warmup() > 0 and padded.calls["decoder"] == {1, 2, 4, 8, 11}
    assert padded.info()["warmed_batch_sizes"] == {"encoder": [1, 2, 4],
                                                  "decoder": [1, 2, 4, 8, 11]}


def test_model_input_is_the_shared_bicubic(astronaut_hr):
    lr = degrade(Image.fromarray(astronaut_hr), 8)
    np.testing.assert_array_equal(engine.model_input(lr), to_model_range(bicubic_upsample(lr)))
