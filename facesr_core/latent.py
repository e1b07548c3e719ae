"""The latent draws, in numpy.

- `icap` (the paper): z = mu + T * sigma * eps over the whole latent, sigma = exp(logvar / 2),
  the ICAP's Gaussian; T (the temperature) scales sigma: 1 draws from that Gaussian, 0 gives
  the mean.
- `principal` (ours): z = mu + T * sum_i eps_i * b_i, a few standard-normal draws eps_i along a
  fixed basis b_i (rank, *latent_shape), the top principal directions of the ICAP mean's code
  error scaled by their standard deviations (training/principal.py, docs/method.md).

training/latent.py is the PyTorch twin (tests/test_latent.py checks that they agree).
"""

from __future__ import annotations

import numpy as np


def sample_latent(mu: np.ndarray, logvar: np.ndarray, eps: np.ndarray,
                  temperature: float = 1.0) -> np.ndarray:
    """z = mu + T * exp(logvar / 2) * eps, float32; the three arrays broadcast together."""
    sigma = np.exp(0.5 * logvar)
    return (mu + np.float32(temperature) * sigma * eps).astype(np.float32)


def principal_latent(mu: np.ndarray, basis: np.ndarray, eps: np.ndarray,
                     temperature: float = 1.0) -> np.ndarray:
    """z = mu + T * eps @ basis, float32: eps (..., rank) against basis (rank, *latent_shape)
    gives offsets (..., *latent_shape), which broadcast with mu."""
    offset = np.tensordot(eps.astype(np.float32), basis.astype(np.float32), axes=1)
    return (mu + np.float32(temperature) * offset).astype(np.float32)
