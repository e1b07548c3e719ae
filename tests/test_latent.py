"""The latent draw z = mu + T * sigma * eps: facesr_core's numpy version, the service's use of
it, and training's PyTorch twin agree given the same eps."""

import numpy as np
import pytest
import torch

from facesr_core.latent import principal_latent, sample_latent
from training import latent as torch_latent
from training.config import ModelConfig
from training.models import StochasticSR


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0])
def test_numpy_and_torch_draws_agree(temperature):
    rng = np.random.default_rng(0)
    mu, logvar = rng.uniform(-1, 1, (2, 4, 8, 8)), rng.uniform(-1, 1, (2, 4, 8, 8))
    mu, logvar = mu.astype(np.float32), logvar.astype(np.float32)
    eps = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    z_np = sample_latent(mu, logvar, eps, temperature)
    z_torch = torch_latent.sample_latent(*map(torch.from_numpy, (mu, logvar, eps)), temperature)
    assert z_np.dtype == np.float32
    np.testing.assert_allclose(z_np, z_torch.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(z_np, mu + temperature * np.exp(logvar / 2) * eps, rtol=1e-5)
    if temperature == 0.0:
        np.testing.assert_array_equal(z_np, mu)


def test_eps_is_drawn_on_the_cpu_whatever_the_target():
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    like = torch.zeros(1, dtype=torch.float64)
    eps = torch_latent.standard_normal((2, 3), like, gen())
    assert eps.dtype == torch.float64
    torch.testing.assert_close(eps, torch.randn((2, 3), generator=gen()).double())


def test_predict_decodes_the_drawn_latents():
    torch.manual_seed(0)
    model = StochasticSR(ModelConfig.preset("tiny")).eval()
    with torch.no_grad():
        model.sr.decoder.ConvBlock3.weight.normal_(0.0, 0.05)  # let the latent change the output
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    got = model.predict(x, temperature=0.7, n=3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mu, logvar = model.icap(x)
        eps = torch.randn((6, *mu.shape[1:]), generator=torch.Generator().manual_seed(1))
        rep = lambda t: t.repeat_interleave(3, 0)  # noqa: E731
        z = torch_latent.sample_latent(rep(mu), rep(logvar), eps, 0.7)
        want = model.sr(rep(x), z)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got[0], got[1])  # draws of one input differ
    torch.testing.assert_close(model.predict(x), model.sr(x, mu), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 0.6])
def test_principal_draws_agree_and_stay_in_the_basis_span(temperature):
    rng = np.random.default_rng(1)
    mu = rng.uniform(-1, 1, (4, 8, 8)).astype(np.float32)
    basis = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    eps = rng.standard_normal((5, 3)).astype(np.float32)
    z_np = principal_latent(mu, basis, eps, temperature)
    z_torch = torch_latent.principal_latent(torch.from_numpy(mu)[None], torch.from_numpy(basis),
                                            torch.from_numpy(eps), temperature)
    assert z_np.shape == (5, 4, 8, 8) and z_np.dtype == np.float32
    np.testing.assert_allclose(z_np, z_torch.numpy(), rtol=1e-5, atol=1e-5)
    offsets = (z_np - mu).reshape(5, -1)
    coef, *_ = np.linalg.lstsq(basis.reshape(3, -1).T, offsets.T, rcond=None)
    np.testing.assert_allclose(coef.T, temperature * eps, atol=1e-4)  # z - mu = T eps @ basis
