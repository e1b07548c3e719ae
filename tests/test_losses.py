"""The losses of Algorithm 1 (training/losses.py)."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from training.losses import gaussian_kl


def test_kl_of_a_distribution_with_itself_is_zero():
    mu, logvar = torch.randn(3, 4, 8, 8).tanh(), torch.randn(3, 4, 8, 8).tanh()
    assert gaussian_kl(mu, logvar, mu, logvar).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_matches_torch_distributions():
    torch.manual_seed(1)
    mq, lq, mp, lp = (torch.randn(3, 4, 8, 8).tanh() for _ in range(4))
    ref = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp()))
    expected = ref.flatten(1).sum(1).mean()
    assert gaussian_kl(mq, lq, mp, lp).item() == pytest.approx(expected.item(), rel=1e-5)
