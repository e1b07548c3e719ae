"""Synthetic faces and a tiny random model for the tests (no real photos needed)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from training.config import ModelConfig
from training.models import StochasticSR


def blob_face(seed: int) -> Image.Image:
    """A smooth random 'face': a few coloured Gaussian blobs on a gradient, 150x150."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:150, 0:150] / 150.0
    img = np.stack([xx, yy, 1 - xx], -1) * 120
    for _ in range(6):
        cy, cx, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.05, 0.2)]
        img += rng.uniform(0, 120, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def random_tiny(global_residual: bool = True) -> StochasticSR:
    torch.manual_seed(0)
    model = StochasticSR(ModelConfig.preset("tiny", global_residual=global_residual))
    with torch.no_grad():  # zero-initialised last conv would make the decoder check trivial
        model.sr.decoder.ConvBlock3.weight.normal_(0, 0.05)
    return model.eval()
