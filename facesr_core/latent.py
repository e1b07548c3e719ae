"""The latent draw z = mu + T * sigma * eps, sigma = exp(logvar / 2), in numpy.

mu and logvar are the ICAP's Gaussian (or the REN's); eps are standard-normal draws; T (the
temperature) scales sigma: 1 draws from the Gaussian itself (the paper), 0 gives the mean.
training/latent.py is its PyTorch twin (tests/test_latent.py checks that they agree).
"""

from __future__ import annotations

import numpy as np


def sample_latent(mu: np.ndarray, logvar: np.ndarray, eps: np.ndarray,
                  temperature: float = 1.0) -> np.ndarray:
    """z = mu + T * exp(logvar / 2) * eps, float32; the three arrays broadcast together."""
    sigma = np.exp(0.5 * logvar)
    return (mu + np.float32(temperature) * sigma * eps).astype(np.float32)
