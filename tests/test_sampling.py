"""service/quality.py and service/sampling.py: PSNR/SSIM, latent draws, log-density and the
traversal maths."""

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from facesr_core.degradation import degrade
from facesr_core.latent import sample_latent
from service import quality, sampling

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
    z0, z1 = sampling.traversal_endpoints(mu, logvar, 3, None, sampling.Draws("icap", 1.0))
    eps = sampling.draw_eps(3, 2, (2, 2, 2))
    np.testing.assert_array_equal(z0, eps[0])
    np.testing.assert_array_equal(z1, eps[1])
    z0, z1 = sampling.traversal_endpoints(mu, logvar, 3, 9, sampling.Draws("icap", 1.0))
    np.testing.assert_array_equal(z1, sampling.draw_eps(9, 1, (2, 2, 2))[0])


def test_principal_draws_and_their_log_density():
    rng = np.random.default_rng(2)
    mu, logvar = rng.uniform(-1, 1, (2, 3, 3)), np.zeros((2, 3, 3))
    q, _ = np.linalg.qr(rng.standard_normal((18, 2)))  # two orthonormal directions
    scales = np.array([2.0, 0.5])
    basis = (q.T * scales[:, None]).reshape(2, 2, 3, 3).astype(np.float32)
    draws = sampling.Draws("principal", 0.7, basis)
    assert draws.eps_shape((2, 3, 3)) == (2,)
    assert sampling.Draws("icap", 1.0).eps_shape((2, 3, 3)) == (2, 3, 3)
    z = sampling.mean_and_draws(mu[None].astype(np.float32), logvar[None], 4, 3, draws)
    eps = sampling.draw_eps(4, 3, (2,))
    np.testing.assert_allclose(z[1:], mu + 0.7 * np.tensordot(eps, basis, axes=1), atol=1e-5)
    a = 0.7 * eps  # z - mu's coordinates on the unit directions, in units of each scale
    want = (-0.5 * (a ** 2).sum(1) - np.log(scales).sum() - np.log(2 * np.pi))
    dens = draws.log_density(z, mu, logvar)
    np.testing.assert_allclose(dens[1:], want, rtol=1e-5)
    assert dens[0] == dens.max()  # the mean is the mode
    z0, z1 = sampling.traversal_endpoints(mu.astype(np.float32), logvar, 4, None, draws)
    np.testing.assert_allclose(np.stack([z0, z1]), z[1:3], atol=1e-6)
