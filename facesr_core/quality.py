"""PSNR in numpy: the one definition training's evaluation and the service's /samples share."""

from __future__ import annotations

import numpy as np

DATA_RANGE = 255.0
MIN_MSE = 1e-12  # identical images: a finite PSNR (~168 dB)


def psnr(reference: np.ndarray, images: np.ndarray) -> np.ndarray:
    """RGB PSNR (dB) of each uint8 image (N,H,W,C) against one reference (H,W,C)."""
    diff = images.astype(np.float64) - reference.astype(np.float64)[None]
    mse = (diff**2).reshape(len(images), -1).mean(axis=1)
    return 10 * np.log10(DATA_RANGE**2 / np.maximum(mse, MIN_MSE))
