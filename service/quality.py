"""PSNR (facesr_core.quality) and SSIM in numpy (no scikit-image in the serving image).

SSIM is the Gaussian-window SSIM of Wang et al. as scikit-image computes it with
`structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)`: an 11-tap Gaussian (truncate 3.5), the map
averaged over the pixels at least 5 px from the border, then over channels. Those pixels see no
padding, so a 'valid' filter gives the same numbers.
"""

from __future__ import annotations

import numpy as np

from facesr_core.quality import DATA_RANGE, psnr

__all__ = ["psnr", "ssim"]

SIGMA = 1.5
TRUNCATE = 3.5
K1, K2 = 0.01, 0.03


def gaussian_kernel(sigma: float = SIGMA, truncate: float = TRUNCATE) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _filter_valid(arr: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering over axes 1 and 2 of (N,H,W,C)."""
    r = len(kernel)
    h, w = arr.shape[1] - r + 1, arr.shape[2] - r + 1
    rows = sum(kernel[i] * arr[:, i:i + h] for i in range(r))
    return sum(kernel[j] * rows[:, :, j:j + w] for j in range(r))


def ssim(reference: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Mean SSIM of each uint8 image (N,H,W,C) against one reference (H,W,C)."""
    kernel = gaussian_kernel()
    x = reference.astype(np.float64)[None]
    y = images.astype(np.float64)
    mu_x, mu_y = _filter_valid(x, kernel), _filter_valid(y, kernel)
    vx = _filter_valid(x * x, kernel) - mu_x**2
    vy = _filter_valid(y * y, kernel) - mu_y**2
    cov = _filter_valid(x * y, kernel) - mu_x * mu_y
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (vx + vy + c2)
    return (num / den).reshape(len(images), -1).mean(axis=1)
