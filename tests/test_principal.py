"""training/principal.py: the basis of the principal draws, its calibration and its install."""

import json

import numpy as np
import pytest
import torch

from facesr_core.manifest import PRINCIPAL_BASIS, load_manifest
from training import principal


def test_the_basis_is_the_top_principal_directions_of_the_code_error():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(32, 3, generator=gen, dtype=torch.float64))
    coords = torch.randn(4000, 3, generator=gen, dtype=torch.float64) * torch.tensor(
        [3.0, 2.0, 1.0], dtype=torch.float64)
    errors = coords @ q.T + 0.01 * torch.randn(4000, 32, generator=gen, dtype=torch.float64)
    basis, explained = principal.fit_basis(errors, 2, (2, 4, 4))
    assert basis.shape == (2, 2, 4, 4) and basis.dtype == np.float32
    rows = basis.reshape(2, -1).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), [3.0, 2.0], rtol=0.05)
    for row, direction in zip(rows, q.T[:2].numpy(), strict=True):  # up to sign
        assert abs(row @ direction) / np.linalg.norm(row) > 0.999
    assert abs(rows[0] @ rows[1]) < 1e-6 * np.linalg.norm(rows[0]) * np.linalg.norm(rows[1])
    np.testing.assert_allclose(explained, [9 / 14, 13 / 14], atol=0.03)


class _LinearDecoderModel(torch.nn.Module):
    """A stand-in SR model whose decoder is linear in the code: f(x, z) = x + A z, and whose
    ICAP mean is 0, so a face's code gradient is A^T (y - x) and its best step along a unit v
    is (g . v) / |A v|^2 exactly."""

    def __init__(self, latent_shape: tuple[int, ...], gen: torch.Generator):
        super().__init__()
        self.latent_shape = latent_shape
        size = int(np.prod(latent_shape))
        self.A = torch.nn.Parameter(torch.randn(3 * 128 * 128, size, generator=gen) / 50)
        self.sr = torch.nn.Module()
        self.sr.decoder = lambda features, z, x: x + (z.flatten(1) @ self.A.T).reshape(x.shape)

    def encode(self, x):
        from types import SimpleNamespace

        return SimpleNamespace(features=None, mu=x.new_zeros(len(x), *self.latent_shape))


def test_the_gradient_basis_is_the_top_directions_of_the_code_gradients_with_their_best_steps():
    from training.data import PairDataset

    gen = torch.Generator().manual_seed(0)
    shape = (2, 2, 2)
    model = _LinearDecoderModel(shape, gen)
    hr = (np.random.default_rng(0).random((12, 128, 128, 3)) * 255).astype(np.uint8)
    x, y = PairDataset(hr, 8).batch(range(len(hr)))
    a = model.A.detach().double()
    want_g = (y - x).flatten(1).double() @ a  # A^T (y - f(x, 0)) per face
    got_g = principal.latent_gradients(model, hr, 8, batch=5, progress=False)
    torch.testing.assert_close(got_g, want_g, rtol=1e-3, atol=1e-5)  # float32 sums of 49,152

    basis, explained = principal.fit_gradient_basis(model, hr, 8, 2, shape, step_faces=12,
                                                    progress=False)
    lam, vec = torch.linalg.eigh(want_g.T @ want_g / len(hr))
    for row, v in zip(basis.reshape(2, -1), vec.flip(1).T[:2], strict=True):
        norm = np.linalg.norm(row)
        assert abs(row @ v.numpy()) / norm > 0.999  # the direction, up to sign
        best_steps = (want_g @ v) / (a @ v).pow(2).sum()
        np.testing.assert_allclose(norm, best_steps.pow(2).mean().sqrt(), rtol=1e-3)
    np.testing.assert_allclose(explained, (lam.flip(0).cumsum(0) / lam.sum())[:2], rtol=1e-4)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from training.config import ModelConfig
    from training.export import export_model
    from training.models import StochasticSR

    torch.manual_seed(0)
    model = StochasticSR(ModelConfig.preset("tiny"))
    with torch.no_grad():
        model.sr.decoder.ConvBlock3.weight.normal_(0.0, 0.05)
    out = tmp_path_factory.mktemp("principal") / "x8"
    export_model(model, out, scale=8, preset="tiny", version="test-1")
    return out


def test_the_cli_calibrates_and_installs_a_basis_the_service_loads(tiny_run, pack, tmp_path):
    from service.engine import load_runner
    from service.settings import Settings

    report = tmp_path / "report.json"
    principal.main(["--model", str(tiny_run), "--pack", str(pack), "--sources", "utkface",
                    "--train-faces", "12", "--ranks", "1", "2", "--temperatures", "0.5", "1",
                    "--test-limit", "2", "--install", "--out", str(report), "--no-progress"])
    assert torch.is_grad_enabled()  # the CLI leaves the process's autograd mode as it was
    got = json.loads(report.read_text())
    gains = got["val_best_of_10_minus_mean_db"]
    assert got["fit"] == "gradient"  # the default
    assert set(gains) == {"k1_T0.5", "k1_T1", "k2_T0.5", "k2_T1", "icap_T1"}  # the manifest's T
    assert gains[f"k{got['rank']}_T{got['temperature']:g}"] == max(
        v for k, v in gains.items() if not k.startswith("icap"))
    assert got["val_faces"] == 4 and got["test"]["utkface"]["faces"] == 2
    spread = got["val_samples_spread"]
    assert all(v["rms_from_mean"] > 0 and 0 <= v["low_frequency_share"] <= 1
               for v in spread.values())
    assert spread["k1_T1"]["rms_from_mean"] > spread["k1_T0.5"]["rms_from_mean"]
    manifest = load_manifest(tiny_run)  # verifies the basis's sha256 too
    entry = manifest.principal_draws
    assert (entry.rank, entry.temperature) == (got["rank"], got["temperature"])
    assert entry.calibration == got
    basis = np.load(tiny_run / PRINCIPAL_BASIS)
    assert basis.shape == (got["rank"], *manifest.latent_shape)
    runner = load_runner(tiny_run, Settings(), ["CPUExecutionProvider"])
    assert runner.default_draws == "principal"
    assert runner.draws().temperature == got["temperature"]
    np.testing.assert_array_equal(runner.draws().basis, basis)


def test_a_new_export_drops_the_basis_of_the_replaced_model(tiny_run, tmp_path):
    import shutil

    from training.export import export_model
    from training.weights import load_model

    shutil.copytree(tiny_run, tmp_path / "x8")
    (tmp_path / "x8" / PRINCIPAL_BASIS).write_bytes(b"old")
    model, _ = load_model(tiny_run)
    export_model(model, tmp_path / "x8", scale=8, preset="tiny", version="test-2")
    assert not (tmp_path / "x8" / PRINCIPAL_BASIS).exists()
    assert load_manifest(tmp_path / "x8").principal_draws is None


def test_a_basis_saved_in_one_place_installs_in_another_only_for_the_same_weights(
        tiny_run, pack, tmp_path):
    """--save-basis (the GPU machine fits it on the run folder) then --install-from (here, into
    the export of the same weights): the same basis, rank, temperature and report as a fit with
    --install; into a model with other weights it is refused."""
    import shutil

    from training.export import export_model
    from training.weights import load_model

    fitted = tmp_path / "fitted"
    principal.main(["--model", str(tiny_run), "--pack", str(pack), "--sources", "utkface",
                    "--train-faces", "12", "--ranks", "1", "2", "--temperatures", "0.5",
                    "--test-limit", "0", "--save-basis", str(fitted), "--no-progress",
                    "--fit", "code-error"])
    report = json.loads((fitted / principal.PRINCIPAL_REPORT).read_text())
    assert report["fit"] == "code-error"
    same = tmp_path / "same"
    model, _ = load_model(tiny_run)
    export_model(model, same, scale=8, preset="tiny", version="test-3")
    principal.main(["--model", str(same), "--install-from", str(fitted)])
    entry = load_manifest(same).principal_draws
    assert (entry.rank, entry.temperature, entry.calibration) == (
        report["rank"], report["temperature"], report)
    np.testing.assert_array_equal(np.load(same / PRINCIPAL_BASIS),
                                  np.load(fitted / PRINCIPAL_BASIS))

    other = tmp_path / "other"
    shutil.copytree(same, other)
    with torch.no_grad():
        model.sr.decoder.ConvBlock3.weight.add_(0.01)
    export_model(model, other, scale=8, preset="tiny", version="test-4")
    with pytest.raises(SystemExit, match="fitted on other weights"):
        principal.main(["--model", str(other), "--install-from", str(fitted)])
    assert load_manifest(other).principal_draws is None
