"""The banding and sample-spread measures on synthetic images with known structure."""

import numpy as np

from training.diagnostics import banding, low_frequency_share


def faces_with(pattern: np.ndarray, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(hr, sr) uint8 (n,128,128,3): smooth random faces, and the same plus a grey pattern."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128] / 128
    hr = np.stack([np.clip(128 + 60 * np.sin(3 * xx + rng.uniform(0, 6)) * np.cos(2 * yy), 0, 255)
                   for _ in range(n)])
    sr = np.clip(hr + pattern, 0, 255)
    to_rgb = lambda a: np.repeat(a[..., None], 3, -1).astype(np.uint8)  # noqa: E731
    return to_rgb(hr), to_rgb(sr)


def test_horizontal_bands_show_in_rows_and_a_seam_in_columns():
    rows = np.arange(128)[:, None] * np.ones((1, 128))
    bands = 10 * np.sign(np.sin(2 * np.pi * rows / 8))  # period 8 px, like the x16 bands
    hr, banded = faces_with(bands)
    _, seamed = faces_with(20.0 * (np.abs(np.arange(128) - 64) < 2)[None, :] * np.ones((128, 1)))
    got, _ = banding({"banded": banded, "seamed": seamed, "clean": hr}, hr)
    assert got["banded"]["rows"] > 5 and got["banded"]["columns"] < 0.5
    assert got["seamed"]["columns"] > 0.5 and got["seamed"]["rows"] < 0.5
    assert got["clean"]["rows"] == got["clean"]["columns"] == 0.0
    assert got["clean"]["psnr"] > 100 > got["banded"]["psnr"]


def test_low_frequency_share_separates_shapes_from_texture():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:128, :128] / 128
    shape = 20 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.6) ** 2) / 0.02)[None]
    texture = rng.normal(0, 20, (1, 128, 128))
    assert low_frequency_share(shape) > 0.95
    assert low_frequency_share(texture) < 0.05


def test_best_of_gain_is_zero_at_temperature_zero_and_not_above():
    import torch

    from training.config import ModelConfig
    from training.diagnostics import best_of_gain
    from training.models import StochasticSR

    torch.manual_seed(0)
    model = StochasticSR(ModelConfig.preset("tiny")).eval()
    with torch.no_grad():
        model.sr.decoder.ConvBlock3.weight.normal_(0.0, 0.05)  # let the latent change the output
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    gains = best_of_gain(model, hr, 8, [0.0, 1.0], n=3)
    assert gains[0.0] == 0.0
    assert gains[1.0] != 0.0


def test_calibrate_install_writes_the_best_temperature(tiny_model_dir, pack, tmp_path, capsys):
    import json
    import shutil

    import pytest

    from facesr_core.manifest import load_manifest
    from training import diagnostics

    model = tmp_path / "x8"
    shutil.copytree(tiny_model_dir / "x8", model)
    diagnostics.main(["--model", str(model), "--pack", str(pack), "--sources", "utkface",
                      "--split", "test", "--limit", "2", "--calibrate", "0", "0.5", "3",
                      "--install"])
    report = json.loads(capsys.readouterr().out.splitlines()[0])
    gains = {float(t): g for t, g in report["best_of_10_minus_mean_db"].items()}
    assert load_manifest(model).sample_temperature == max(gains, key=gains.get)
    assert load_manifest(model).sample_temperature == report["sample_temperature"]
    with pytest.raises(SystemExit):  # a run folder has no manifest to write into
        diagnostics.main(["--model", str(tmp_path), "--pack", str(pack), "--calibrate", "1",
                          "--install"])
    assert "no manifest.json" in capsys.readouterr().err
