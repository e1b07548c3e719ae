"""The latent draws in PyTorch: the twin of facesr_core/latent.py.

eps is always drawn on the CPU in float32 and then moved to mu's device and dtype, so a seeded
CPU generator gives the same latents on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor


def standard_normal(shape: tuple[int, ...] | torch.Size, like: Tensor,
                    generator: torch.Generator | None = None) -> Tensor:
    """eps of `shape`: float32 standard-normal draws on the CPU, moved to like's device/dtype."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(like)


def sample_latent(mu: Tensor, logvar: Tensor, eps: Tensor, temperature: float = 1.0) -> Tensor:
    """z = mu + T * exp(logvar / 2) * eps; the three tensors broadcast together."""
    return mu + temperature * torch.exp(0.5 * logvar) * eps


def principal_latent(mu: Tensor, basis: Tensor, eps: Tensor, temperature: float = 1.0) -> Tensor:
    """z = mu + T * eps @ basis: eps (N, rank), basis (rank, *latent_shape), mu (N or 1, ...)."""
    offset = (eps @ basis.flatten(1)).view(len(eps), *basis.shape[1:])
    return mu + temperature * offset
