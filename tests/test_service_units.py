"""service/ piece by piece, without HTTP: settings, providers, buckets, imaging rules, PSNR/SSIM,
latent sampling and traversal maths."""

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from images import png_claiming
from PIL import Image, ImageFile
from pydantic import ValidationError
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from facesr_core.degradation import bicubic_upsample, degrade, to_model_range
from facesr_core.latent import sample_latent
from service import contact_sheet, engine, imaging, quality, sampling
from service.errors import InvalidImage, InvalidParameter, PayloadTooLarge, UnsupportedMedia
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def encoded(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


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
    opts = engine.provider_options(TRT, {"x": ["batch", 3, 128, 128]}, 65)
    assert opts["trt_profile_min_shapes"] == "x:1x3x128x128"
    assert opts["trt_profile_max_shapes"] == "x:65x3x128x128"
    assert engine.provider_options(CUDA, {"x": ["batch", 3, 128, 128]}, 65) == {}


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
    chunked = sampling.sample_set(runner, x[0], 4, 10, 1.0)
    faces = runner.superresolve(x)
    assert runner.calls["decoder"] == {1, 2, 3} and runner.calls["encoder"] == {1, 3}
    runner.max_rows = None
    whole = sampling.sample_set(runner, x[0], 4, 10, 1.0)
    np.testing.assert_array_equal(chunked.images, whole.images)
    np.testing.assert_array_equal(chunked.log_density, whole.log_density)
    np.testing.assert_array_equal(faces, runner.superresolve(x))
    assert runner.calls["decoder"] == {1, 2, 3, 7, 11}


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


# --- imaging: decode and the input-size rules ---------------------------------------------

def test_rule_non_square_is_center_cropped():
    img = Image.fromarray(np.arange(40 * 32 * 3, dtype=np.uint8).reshape(32, 40, 3))
    out, note = imaging.fit_square(img)
    assert out.size == (32, 32) and note == "center-crop 40x32 to 32x32"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img)[:, 4:36])
    assert imaging.fit_square(out) == (out, None)


@pytest.mark.parametrize("side, scale, want", [
    (32, None, 4), (16, None, 8), (8, None, 16),  # the exact LR sizes infer the scale
    (20, 8, 8), (8, 8, 8), (16, 4, 4), (40, 4, 4), (4, 16, 16), (10, 16, 16)])  # within range
def test_rule_scale_resolution(side, scale, want):
    assert imaging.resolve_scale(side, scale, (4, 8, 16)) == want


@pytest.mark.parametrize("side, scale, words", [
    (128, 8, ["larger than x8 takes (8-20 px)", "looks like an HR image", "x4: 16-40 px"]),
    (200, 8, ["worse than the image", "x16: 4-10 px", "the scale is inferred"]),
    (100, 4, ["larger than x4 takes (16-40 px)", "worse than the image"]),
    (41, 4, ["larger than x4 takes"]),
    (1, 8, ["too small for x8 (it takes 8-20 px)", "x16: 4-10 px"]),
    (6, 8, ["too small for x8", "pass ?scale=16 (it takes 4-10 px faces"]),
    (24, 8, ["larger than x8 takes", "pass ?scale=4 (it takes 16-40 px faces"]),
    (500, None, ["cannot infer the scale of a 500x500 face", "x4: 16-40 px"]),
    (20, None, ["cannot infer the scale", "pass ?scale=8 (it takes 8-20 px"]),
    (12, None, ["pass ?scale=8"]),
    (33, None, ["pass ?scale=4 (it takes 16-40 px"]),
])
def test_rule_refusals_say_what_to_send(side, scale, words):
    """Every size refusal says what would be accepted; none tells the user to pass the
    ?scale they passed, or one that would refuse the image too."""
    with pytest.raises(InvalidImage) as err:
        imaging.resolve_scale(side, scale, (4, 8, 16))
    detail = err.value.detail
    assert all(w in detail for w in words), detail
    if scale is not None:
        assert f"?scale={scale}" not in detail, detail


def test_rule_advice_names_only_loaded_scales():
    with pytest.raises(InvalidImage) as err:
        imaging.resolve_scale(30, None, (8, 16))
    assert "x8: 8-20 px, x16: 4-10 px" in err.value.detail and "x4" not in err.value.detail


def test_rule_scale_without_a_model_is_refused():
    with pytest.raises(InvalidParameter, match="no model for scale 16; loaded scales: 8"):
        imaging.resolve_scale(8, None, (8,))


def test_refused_sizes_are_never_decoded(monkeypatch):
    """The scale is settled from the header: a 4000x4000 PNG (16 Mpx, within the pixel limit)
    and a wrong-size reference are refused without decoding any pixel."""
    def no_decoding(self):
        raise AssertionError("decoded")

    big = encoded(Image.new("RGB", (4000, 4000)))
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InvalidImage, match="larger than x8 takes"):
        imaging.prepare_lr(big, 8, (4, 8, 16), 16_000_000)
    with pytest.raises(InvalidImage, match="cannot infer"):
        imaging.prepare_lr(big, None, (4, 8, 16), 16_000_000)
    with pytest.raises(InvalidImage, match="reference is 4000x4000"):
        imaging.prepare_reference(big, 16_000_000)


def test_rule_explicit_scale_resizes_bicubic():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), np.uint8))
    out, note = imaging.fit_lr(img, 8)
    assert out.size == (16, 16) and "resize 20x20 to 16x16 (bicubic)" in note
    np.testing.assert_array_equal(np.asarray(out),
                                  np.asarray(img.resize((16, 16), Image.Resampling.BICUBIC)))
    assert imaging.fit_lr(out, 8) == (out, None)


def test_prepare_lr_applies_rules_in_order():
    img = Image.new("RGB", (24, 18), (10, 200, 30))
    lr = imaging.prepare_lr(encoded(img), 8, (4, 8, 16), 10_000)
    assert lr.image.size == (16, 16) and lr.scale == 8
    assert lr.adjustments == ["center-crop 24x18 to 18x18",
                              "resize 18x18 to 16x16 (bicubic) for scale 8"]


def test_decode_modes():
    gray = Image.fromarray(np.full((16, 16), 77, np.uint8))
    img, notes = imaging.decode(encoded(gray), 10_000)
    assert img.mode == "RGB" and np.asarray(img)[0, 0].tolist() == [77, 77, 77] and not notes
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    img, notes = imaging.decode(encoded(rgba), 10_000)
    assert np.asarray(img)[0, 0].tolist() == [255, 255, 255]
    assert notes == ["alpha composited onto white"]
    opaque = Image.new("RGBA", (16, 16), (1, 2, 3, 255))
    img, notes = imaging.decode(encoded(opaque), 10_000)
    assert np.asarray(img)[0, 0].tolist() == [1, 2, 3] and not notes
    deep = Image.fromarray(np.full((16, 16), 65535, np.uint16))
    img, _ = imaging.decode(encoded(deep), 10_000)
    assert np.asarray(img)[0, 0].tolist() == [255, 255, 255]


def test_decode_applies_exif_orientation():
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:, :16] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encoded(Image.fromarray(arr), "JPEG", exif=exif, quality=100)
    img, notes = imaging.decode(data, 10_000)
    assert img.size == (16, 32) and notes == ["exif-orientation 6 applied"]
    assert np.asarray(img)[:8].mean() > 200 and np.asarray(img)[-8:].mean() < 50


def test_decode_ignores_an_invalid_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 99
    data = encoded(Image.new("RGB", (16, 8), (50, 60, 70)), "JPEG", exif=exif, quality=100)
    img, notes = imaging.decode(data, 10_000)
    assert img.size == (16, 8) and notes == ["exif-orientation 99 ignored (not 1-8)"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_decode_accepts_the_four_formats(fmt):
    img, _ = imaging.decode(encoded(Image.new("RGB", (8, 8), (9, 9, 9)), fmt), 10_000)
    assert img.size == (8, 8)


@pytest.mark.parametrize("data, error, match", [
    (b"", InvalidImage, "empty"),
    (b"hello, not an image", UnsupportedMedia, "not a PNG"),
    (encoded(Image.new("RGB", (8, 8)), "GIF"), UnsupportedMedia, "not a PNG"),
    (encoded(Image.new("RGB", (8, 8)), "TIFF"), UnsupportedMedia, "not a PNG"),
    (png_claiming(200, 200), PayloadTooLarge, "pixels"),
    (png_claiming(100_000, 100_000), PayloadTooLarge, "decode limit|pixels"),
    (png_claiming(60, 60), InvalidImage, "corrupt or truncated"),
    (encoded(Image.new("RGB", (64, 64), (1, 2, 3)))[:60], InvalidImage, "corrupt|truncated"),
    (encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")[:400], InvalidImage,
     "truncated"),
    (encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")[:1300], InvalidImage,
     "truncated"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, UnsupportedMedia, "not a PNG"),
])
def test_decode_refuses_bad_files(data, error, match):
    with pytest.raises(error, match=match):
        imaging.decode(data, 10_000)


def test_reference_must_be_128():
    assert imaging.prepare_reference(encoded(Image.new("RGB", (128, 128))), 10**6).shape == (
        128, 128, 3)
    with pytest.raises(InvalidImage, match="exactly 128x128"):
        imaging.prepare_reference(encoded(Image.new("RGB", (64, 64))), 10**6)


def test_encoders_and_sheets():
    frames = np.random.default_rng(0).integers(0, 255, (5, 128, 128, 3), np.uint8)
    for fmt in ("png", "jpeg", "webp"):
        assert Image.open(io.BytesIO(imaging.encode(frames[0], fmt))).format == fmt.upper()
    assert imaging.encode(frames[0], "png") == imaging.encode(frames[0], "png")
    for fmt in ("gif", "webp"):
        anim = Image.open(io.BytesIO(imaging.animation(frames, fmt, 100)))
        assert anim.n_frames == 5 and anim.size == (128, 128)
    assert imaging.strip(frames).size == (5 * 128, 128)


def test_contact_sheet_labels_every_tile():
    images = np.full((3, 128, 128, 3), 128, np.uint8)
    entries = [{"kind": "mean", "draw": None, "psnr": 21.5, "best": False},
               {"kind": "sample", "draw": 1, "psnr": 23.25, "best": True},
               {"kind": "sample", "draw": 0, "psnr": 20.0, "best": False}]
    lr = Image.new("RGB", (16, 16), (255, 0, 0))
    ref = np.zeros((128, 128, 3), np.uint8)
    inputs = contact_sheet.input_tiles(lr, 8, ref, 128)
    results = contact_sheet.result_tiles(images, entries)
    assert [t.lines for t in inputs] == [("LR input 16x16", "x8, shown enlarged"),
                                         ("reference (HR)", "128x128")]
    assert [t.lines for t in results] == [("ICAP mean", "PSNR 21.50 dB"),
                                          ("sample 1 (draw 1)", "PSNR 23.25 dB  best"),
                                          ("sample 2 (draw 0)", "PSNR 20.00 dB")]
    assert np.all(inputs[0].image == (255, 0, 0)) and inputs[0].image.shape == (128, 128, 3)
    sheet = contact_sheet.render([*inputs, *results], cols=3)
    cell_h = 128 + contact_sheet.CAPTION_HEIGHT + contact_sheet.GAP
    assert sheet.size == (3 * 132 + 4, 2 * cell_h + 4)
    assert sheet.getpixel((2, cell_h + 2)) == (0, 170, 0)  # the frame of the best (4th) tile
    caption = np.asarray(sheet)[4 + 128:4 + 128 + contact_sheet.CAPTION_HEIGHT, 4:132]
    assert (caption < 100).any()  # text under the first tile
    unlabelled = contact_sheet.result_tiles(images[:1], [{**entries[0], "psnr": None}])
    assert unlabelled[0].lines == ("ICAP mean", "")


# --- quality ------------------------------------------------------------------------------

def test_psnr_and_ssim_match_scikit_image(astronaut_hr):
    rng = np.random.default_rng(1)
    ref = astronaut_hr
    noisy = [np.clip(ref + rng.normal(0, s, ref.shape), 0, 255).astype(np.uint8)
             for s in (2, 10, 40)]
    blurred = np.asarray(degrade(Image.fromarray(ref), 8).resize((128, 128),
                                                                 Image.Resampling.BICUBIC))
    images = np.stack([*noisy, blurred, ref])
    want_psnr = [peak_signal_noise_ratio(ref, im, data_range=255) for im in images[:-1]]
    want_ssim = [structural_similarity(ref, im, channel_axis=-1, gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False, data_range=255)
                 for im in images]
    np.testing.assert_allclose(quality.psnr(ref, images)[:-1], want_psnr, atol=1e-3)
    np.testing.assert_allclose(quality.ssim(ref, images), want_ssim, atol=1e-3)
    assert np.isfinite(quality.psnr(ref, images)[-1])


# --- sampling -----------------------------------------------------------------------------

def test_draws_of_a_seed_are_a_prefix():
    a = sampling.draw_eps(7, 5, (8, 8, 8))
    assert a.dtype == np.float32 and a.shape == (5, 8, 8, 8)
    np.testing.assert_array_equal(sampling.draw_eps(7, 2, (8, 8, 8)), a[:2])
    assert not np.array_equal(sampling.draw_eps(8, 1, (8, 8, 8))[0], a[0])


def test_latents_and_log_density():
    rng = np.random.default_rng(0)
    mu, logvar = rng.uniform(-1, 1, (2, 3, 3)), rng.uniform(-1, 1, (2, 3, 3))
    eps = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    z = sample_latent(mu, logvar, eps, 0.5)
    np.testing.assert_allclose(z, mu + 0.5 * np.exp(logvar / 2) * eps, rtol=1e-5)
    assert z.dtype == np.float32
    sigma = np.exp(logvar / 2)
    want = [np.sum(-0.5 * ((zi - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi))
            for zi in z]
    np.testing.assert_allclose(sampling.log_density(z, mu, logvar), want, rtol=1e-5)
    dens = sampling.log_density(np.concatenate([mu[None], z]), mu, logvar)
    assert dens[0] == dens.max()  # the mean is the mode
    assert sampling.density_order(np.array([1.0, 3.0, 3.0, 2.0])).tolist() == [1, 2, 3, 0]


def test_traversal_is_eq8_with_exact_ends():
    rng = np.random.default_rng(0)
    z0, z1 = rng.standard_normal((2, 8, 8, 8)).astype(np.float32)
    alphas, z = sampling.traversal(z0, z1, 5)
    assert alphas.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_array_equal(z[0], z0)
    np.testing.assert_array_equal(z[-1], z1)
    np.testing.assert_allclose(z[2], z0 + 0.5 * (z1 - z0), atol=1e-6)


def test_traversal_endpoints_come_from_seeds():
    mu, logvar = np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 2), np.float32)
    z0, z1 = sampling.traversal_endpoints(mu, logvar, 3, None, 1.0)
    eps = sampling.draw_eps(3, 2, (2, 2, 2))
    np.testing.assert_array_equal(z0, eps[0])
    np.testing.assert_array_equal(z1, eps[1])
    z0, z1 = sampling.traversal_endpoints(mu, logvar, 3, 9, 1.0)
    np.testing.assert_array_equal(z1, sampling.draw_eps(9, 1, (2, 2, 2))[0])


def test_every_setting_is_documented():
    readme = (ROOT / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        assert f"`FACESR_{name.upper()}`" in readme, name
        assert field.description, name


@pytest.mark.parametrize("spin", [False, True])
def test_spin_waiting_follows_the_setting(spin):
    so = engine.session_options(Settings(ort_spin_wait=spin))
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spin else "0")
