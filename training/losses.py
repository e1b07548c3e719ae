"""Losses of Algorithm 1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import PHASE2_LOSSES
from training.latent import sample_latent, standard_normal


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(q || p) between diagonal Gaussians, summed over the latent, averaged over the batch."""
    kl = 0.5 * (logvar_p - logvar_q
                + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0)
    return kl.flatten(1).sum(1).mean()


def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return sample_latent(mu, logvar, standard_normal(mu.shape, mu, generator))


class ReconstructionObjective(nn.Module):
    """The decoder's reconstruction losses (reconstruction_losses): phase 1 trains theta and phi
    with it; phase 3 (ours) passes the ICAP, so its mean path is trained too, and the caller
    freezes phi. One module, so that one DistributedDataParallel wrapper syncs what it trains."""

    def __init__(self, sr: nn.Module, ren: nn.Module, lambda_s: float,
                 icap: nn.Module | None = None, lambda_m: float = 1.0, det_loss: str = "mse"):
        super().__init__()
        self.sr, self.ren, self.lambda_s = sr, ren, lambda_s
        self.icap, self.lambda_m, self.det_loss = icap, lambda_m, det_loss

    def forward(self, x: Tensor, y: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        z_mean = None
        if self.icap is not None:
            with torch.no_grad():
                z_mean = self.icap(x)[0]
        return reconstruction_losses(self.sr, self.ren, x, y, self.lambda_s, generator,
                                     z_mean, self.lambda_m, self.det_loss)


DETERMINISTIC_LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}


def reconstruction_losses(sr, ren, x: Tensor, y: Tensor, lambda_s: float,
                          generator: torch.Generator | None = None, z_mean: Tensor | None = None,
                          lambda_m: float = 1.0,
                          det_loss: str = "mse") -> dict[str, Tensor]:
    """L_d = MSE(y, f(x, 0)) + lambda * L1(y, f(x, z_res)); the encoder runs once for both.
    `det_loss="l1"` (ours, an option) makes the deterministic term an L1 loss.

    With z_mean (phase 3, ours: the ICAP mean mu_pred), + lambda_m * MSE(y, f(x, mu_pred)): the
    decoder learns to use the code it is served with, not only REN codes.
    """
    feats = sr.encoder(x)
    y_d = sr.decoder(feats, None, x)
    loss_d = DETERMINISTIC_LOSSES[det_loss](y_d.float(), y)
    mu, logvar = ren((y - y_d).detach())  # r = y - y_d, detached (ours; the paper is silent)
    y_s = sr.decoder(feats, reparameterize(mu, logvar, generator), x)
    loss_s = F.l1_loss(y_s.float(), y)
    losses = {"loss": loss_d + lambda_s * loss_s, "loss_d": loss_d, "loss_s": loss_s,
              "logvar_res": logvar.detach().float().mean()}
    if z_mean is not None:
        loss_m = F.mse_loss(sr.decoder(feats, z_mean, x).float(), y)
        losses["loss"] = losses["loss"] + lambda_m * loss_m
        losses["loss_m"] = loss_m
    return losses


def gaussian_nll(mu_q: Tensor, logvar_q: Tensor, target: Tensor) -> Tensor:
    """-log N(target; mu_q, exp(logvar_q)) up to a constant, summed over the latent, batch mean."""
    nll = 0.5 * (logvar_q + (target - mu_q) ** 2 / logvar_q.exp())
    return nll.flatten(1).sum(1).mean()


def phase2_losses(sr, ren, mu_q: Tensor, logvar_q: Tensor, x: Tensor, y: Tensor,
                  loss: str = "kl") -> dict[str, Tensor]:
    """The ICAP's (mu_q, logvar_q) against the REN's code of r; theta and phi frozen.

    kl (the paper): KL(q_omega(z|x) || g_phi(z|r)). nll (ours): the Gaussian likelihood of the
    REN's mean mu_r, so that sigma_q measures how much mu_r varies among faces that fit x (the
    attributes x leaves open) rather than the REN's own sampling noise.
    """
    if loss not in PHASE2_LOSSES:
        raise ValueError(f"unknown phase-2 loss {loss!r}; choose from {PHASE2_LOSSES}")
    with torch.no_grad():
        mu_r, logvar_r = ren(y - sr(x, None))
    kl = gaussian_kl(mu_q.float(), logvar_q.float(), mu_r.float(), logvar_r.float())
    if loss == "kl":
        return {"loss": kl, "kl": kl}
    nll = gaussian_nll(mu_q.float(), logvar_q.float(), mu_r.float())
    return {"loss": nll, "nll": nll, "kl": kl.detach()}
