"""Latents for /samples and /traverse, in numpy: randomness never enters the ONNX graphs.

eps for a request is `np.random.default_rng(seed).standard_normal((k, *eps_shape))` in float32,
so draw i of a seed is the same latent in /samples and /traverse. `Draws` says how eps becomes
z (facesr_core/latent.py): `icap`, z = mu + T * sigma * eps over the whole latent (the paper),
or `principal`, z = mu + T * eps @ basis with eps of the basis's rank (ours).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from facesr_core.latent import principal_latent, sample_latent
from service.quality import psnr, ssim

SEED_MAX = 2**63 - 1
LOG_2PI = float(np.log(2 * np.pi))


def new_seed() -> int:
    """A fresh seed for requests that give none (returned to the caller, so it can be replayed)."""
    return secrets.randbelow(SEED_MAX)


def draw_eps(seed: int, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """The first `count` standard-normal draws of `seed`, float32 (count, *shape)."""
    return np.random.default_rng(seed).standard_normal((count, *shape), dtype=np.float32)


# The draws behind an uncertainty map when a request names none: measured on the test splits,
# the ICAP's own draws give a truer map than the principal ones (README, "Uncertainty map").
MAP_DRAWS = "icap"


@dataclass(frozen=True)
class Draws:
    """How one request turns eps into latents: its kind, its temperature and, for `principal`,
    the model's basis (rank, *latent_shape)."""

    kind: str
    temperature: float
    basis: np.ndarray | None = None

    def eps_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(latent_shape) if self.basis is None else (len(self.basis),)

    def latents(self, mu: np.ndarray, logvar: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """z for draws eps (k, *eps_shape) around one input's mu and logvar (latent_shape)."""
        if self.basis is None:
            return sample_latent(mu, logvar, eps, self.temperature)
        return principal_latent(mu, self.basis, eps, self.temperature)

    def log_density(self, z: np.ndarray, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
        """log-density of each z (k, ...) at temperature 1: under the ICAP's Gaussian (`icap`),
        or under the basis's Gaussian in its own subspace (`principal`)."""
        if self.basis is None:
            return log_density(z, mu, logvar)
        return basis_log_density(z, mu, self.basis)


def basis_log_density(z: np.ndarray, mu: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """log N(a; 0, I) - sum log |b_i| in nats, where a are z - mu's coordinates on the basis's
    (orthogonal) rows b_i, so a_i = T eps_i for a principal draw."""
    b = basis.reshape(len(basis), -1).astype(np.float64)
    norms2 = (b * b).sum(axis=1)
    a = (z.reshape(len(z), -1).astype(np.float64) - mu.reshape(1, -1)) @ b.T / norms2
    return (-0.5 * (a * a + LOG_2PI).sum(axis=1) - 0.5 * np.log(norms2).sum())


def log_density(z: np.ndarray, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """log N(z; mu, diag(exp(logvar))) in nats, summed over the latent, for each z (k,...)."""
    z64, mu64, lv64 = (a.astype(np.float64) for a in (z, mu, logvar))
    per_dim = (z64 - mu64[None]) ** 2 / np.exp(lv64)[None] + lv64[None] + LOG_2PI
    return -0.5 * per_dim.reshape(len(z), -1).sum(axis=1)


def density_order(densities: np.ndarray) -> np.ndarray:
    """Indices by decreasing log-density (ties: lower draw index first)."""
    return np.argsort(-densities, kind="stable")


def traversal(z_start: np.ndarray, z_end: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 8, z = z_start + a (z_end - z_start) for a = 0..1, as (1 - a) z_start + a z_end.

    The two forms are equal; the second makes the first and last frames exactly z_start and
    z_end in floating point. Returns (alphas (steps,), z (steps, ...)).
    """
    alphas = np.linspace(0.0, 1.0, steps, dtype=np.float32)
    a = alphas.reshape(-1, *([1] * z_start.ndim))
    return alphas, ((1 - a) * z_start[None] + a * z_end[None]).astype(np.float32)


def traversal_endpoints(mu: np.ndarray, logvar: np.ndarray, seed: int, seed_end: int | None,
                        draws: Draws) -> tuple[np.ndarray, np.ndarray]:
    """z_start, z_end: draws 0 and 1 of `seed`, or draw 0 of `seed` and draw 0 of `seed_end`."""
    shape = draws.eps_shape(mu.shape)
    if seed_end is None:
        eps = draw_eps(seed, 2, shape)
    else:
        eps = np.concatenate([draw_eps(seed, 1, shape), draw_eps(seed_end, 1, shape)])
    z = draws.latents(mu, logvar, eps)
    return z[0], z[1]


@dataclass
class SampleSet:
    """The ICAP mean and n samples of one input, in draw order."""

    images: np.ndarray  # uint8 (n+1,128,128,3): the mean, then draws 0..n-1
    log_density: np.ndarray  # (n+1,) under the predicted Gaussian


def mean_and_draws(mu: np.ndarray, logvar: np.ndarray, seed: int, n: int,
                   draws: Draws) -> np.ndarray:
    """The latents of one input's answer (mu, logvar of shape (1, ...)): its mean, then draws
    0..n-1 of `seed`; (n+1, ...)."""
    eps = draw_eps(seed, n, draws.eps_shape(mu.shape[1:]))
    return np.concatenate([mu, draws.latents(mu[0], logvar[0], eps)])


def sample_set(runner: Any, x: np.ndarray, seed: int, n: int, draws: Draws) -> SampleSet:
    """One ICAP pass, one encoder pass, one decoder call for the mean and all n samples."""
    mu, logvar, features = runner.encode(x[None])
    z = mean_and_draws(mu, logvar, seed, n, draws)
    return SampleSet(runner.decode(features, z, x[None]), draws.log_density(z, mu[0], logvar[0]))


def arrange(samples: SampleSet, reference: np.ndarray | None) -> list[dict[str, Any]]:
    """Entries in response order: the mean first, then the samples by decreasing log-density.

    With a reference each entry gets PSNR and SSIM, and the sample (not the mean) with the
    highest PSNR is marked best: the paper's best-of-n.
    """
    order = [0, *(1 + int(i) for i in density_order(samples.log_density[1:]))]
    psnrs = ssims = None
    best = None
    if reference is not None:
        psnrs, ssims = psnr(reference, samples.images), ssim(reference, samples.images)
        best = 1 + int(np.argmax(psnrs[1:]))
    return [{
        "kind": "mean" if i == 0 else "sample",
        "draw": None if i == 0 else i - 1,
        "log_density": float(samples.log_density[i]),
        "psnr": None if psnrs is None else float(psnrs[i]),
        "ssim": None if ssims is None else float(ssims[i]),
        "best": i == best,
        "index": i,
    } for i in order]


def traverse_frames(runner: Any, x: np.ndarray, seed: int, seed_end: int | None,
                    draws: Draws, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, uint8 frames): one ICAP and encoder pass, one decoder call for all frames."""
    mu, logvar, features = runner.encode(x[None])
    z_start, z_end = traversal_endpoints(mu[0], logvar[0], seed, seed_end, draws)
    alphas, z = traversal(z_start, z_end, steps)
    return alphas, runner.decode(features, z, x[None])
