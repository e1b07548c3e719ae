"""The three networks of the paper, with its layer names (docs/method.md, Tables 3-5).

ConvBlock = Conv-BN-ReLU and DeconvBlock = ConvTranspose-BN-ReLU (after FSRNet); ResBlock = two 3x3
convs with BN/ReLU and an identity skip. All three networks are fully convolutional: a 128x128
input gives an 8x8 latent, a 64x64 training patch a 4x4 one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import ModelConfig
from training.latent import sample_latent, standard_normal


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


def balance_phases(weight: Tensor) -> Tensor:
    """Project a (cin, cout, 4, 4) stride-2 transposed-conv kernel onto equal sub-pixel phases.

    Output pixels of each parity (row r, column c) are made only by the taps
    weight[..., r::2, c::2]. When the four phases' sums differ, a smooth input comes out as a
    period-2 pattern (the checkerboard of transposed convs); with equal sums, a constant input
    gives a constant output. Each phase's deviation from the mean sum is taken off its 4 taps.
    """
    taps = weight.unflatten(3, (2, 2)).unflatten(2, (2, 2))  # [..., i, r, j, c]: row 2i+r
    sums = taps.sum((2, 4), keepdim=True)  # one per phase (r, c)
    excess = (sums - sums.mean((3, 5), keepdim=True)) / 4
    return (taps - excess).flatten(4, 5).flatten(2, 3)


class BalancedConvTranspose2d(nn.ConvTranspose2d):
    """ConvTranspose2d(k=4, s=2) whose kernel always has balanced sub-pixel phases (ours)."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        return F.conv_transpose2d(x, balance_phases(self.weight), self.bias, self.stride,
                                  self.padding, self.output_padding, self.groups, self.dilation)


class DeconvBlock(nn.Sequential):
    """4x4 transposed conv, stride 2: doubles the spatial size. `balanced`: checkerboard-free
    kernel (BalancedConvTranspose2d; same parameters, so any weights load either way)."""

    def __init__(self, cin: int, cout: int, balanced: bool = False):
        conv = BalancedConvTranspose2d if balanced else nn.ConvTranspose2d
        super().__init__(
            conv(cin, cout, 4, 2, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False),
            nn.BatchNorm2d(ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def res_stack(ch: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(ch) for _ in range(n)])


class LogVarHead(nn.Sequential):
    """3x3 to `hidden`, BN, LeakyReLU, 3x3 to the latent, BN, Tanh: log sigma^2 in [-1, 1]."""

    def __init__(self, cin: int, hidden: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, hidden, 3, 1, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.Tanh(),
        )

    @property
    def out_norm(self) -> nn.BatchNorm2d:
        """The BatchNorm before the Tanh: its bias is each channel's pre-Tanh mean."""
        return self[4]


class Encoder(nn.Module):
    """Table 3, encoder: x (3x128x128) -> features (C x 64 x 64)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.channels
        self.ConvBlock1 = ConvBlock(3, c, stride=2)
        self.ResBlock1 = res_stack(c, cfg.encoder_blocks)
        self.Conv1 = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.Conv1(self.ResBlock1(self.ConvBlock1(x)))


class ZBranch(nn.Module):
    """Table 3, z branch: z (L x 8 x 8) -> C x 64 x 64, added to the encoder output."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, bal = cfg.channels, cfg.balanced_deconv
        self.DeconvBlock2 = DeconvBlock(cfg.latent_channels, c, bal)
        self.ResBlock3 = res_stack(c, 1)
        self.DeconvBlock3 = DeconvBlock(c, c, bal)
        self.ResBlock4 = res_stack(c, 1)
        self.DeconvBlock4 = DeconvBlock(c, c, bal)
        self.ResBlock5 = res_stack(c, 1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.ResBlock3(self.DeconvBlock2(z))
        h = self.ResBlock4(self.DeconvBlock3(h))
        return self.ResBlock5(self.DeconvBlock4(h))


class Decoder(nn.Module):
    """Table 3, decoder: features (+ z branch) -> y (3 x 128 x 128)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.channels
        self.global_residual = cfg.global_residual
        self.z_branch = ZBranch(cfg)
        self.BatchNorm1 = nn.BatchNorm2d(c)
        self.ConvBlock2 = ConvBlock(c, c)
        self.DeconvBlock1 = DeconvBlock(c, c, cfg.balanced_deconv)
        self.ResBlock2 = res_stack(c, cfg.decoder_blocks)
        self.ConvBlock3 = nn.Conv2d(c, 3, 3, 1, 1)  # ours: plain conv before Tanh1
        self.Tanh1 = nn.Tanh()
        if self.global_residual:
            # The network starts as the identity on the bicubic input.
            nn.init.zeros_(self.ConvBlock3.weight)
            nn.init.zeros_(self.ConvBlock3.bias)

    def forward(self, features: Tensor, z: Tensor | None, x: Tensor | None = None) -> Tensor:
        # z = None is the deterministic path f(x, 0): the branch contributes nothing. (Feeding a
        # zero tensor through it would not: its BatchNorm shifts turn 0 into a constant.)
        h = features if z is None else features + self.z_branch(z)
        h = self.ConvBlock2(self.BatchNorm1(h))
        h = self.ResBlock2(self.DeconvBlock1(h))
        out = self.Tanh1(self.ConvBlock3(h))
        if self.global_residual:
            if x is None:
                raise ValueError("a global-residual decoder needs the input x")
            out = x + out
        return out


class EncoderDecoder(nn.Module):
    """f_theta(x, z): the SR network (Table 3)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        return self.decoder(self.encoder(x), z, x)


class REN(nn.Module):
    """g_phi(r): residual r = y - y_d to (mu_res, log sigma^2_res), both in [-1, 1] (Table 5)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, lat = cfg.channels, cfg.latent_channels
        self.ConvBlock8 = nn.Sequential(
            ConvBlock(3, c, 2), ConvBlock(c, c, 2), ConvBlock(c, c, 2), ConvBlock(c, c, 2)
        )
        self.Conv5 = nn.Conv2d(c, lat, 3, 1, 1, bias=False)
        self.BatchNorm4 = nn.BatchNorm2d(lat)
        self.logvar_head = LogVarHead(c, cfg.hidden_logvar, lat)  # Conv6 ... Tanh3

    def forward(self, r: Tensor) -> tuple[Tensor, Tensor]:
        h = self.ConvBlock8(r)
        mu = torch.tanh(self.BatchNorm4(self.Conv5(h)))  # ours: Tanh bounds mu to [-1, 1]
        return mu, self.logvar_head(h)


class ICAP(nn.Module):
    """q_omega(x): the bicubic input to (mu_pred, log sigma^2_pred), both in [-1, 1] (Table 4)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, lat = cfg.channels, cfg.latent_channels
        self.ConvBlock4, self.ResBlock6 = ConvBlock(3, c, 2), res_stack(c, 1)
        self.ConvBlock5, self.ResBlock7 = ConvBlock(c, c, 2), res_stack(c, 1)
        self.ConvBlock6, self.ResBlock8 = ConvBlock(c, c, 2), res_stack(c, 1)
        self.ConvBlock7, self.ResBlock9 = ConvBlock(c, c, 2), res_stack(c, 1)
        self.Conv2 = nn.Conv2d(c, lat, 3, 1, 1)
        self.logvar_head = LogVarHead(c, cfg.hidden_logvar, lat)  # Conv3 ... Tanh2
        self.logvar_min = cfg.icap_logvar_min

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.ResBlock6(self.ConvBlock4(x))
        h = self.ResBlock7(self.ConvBlock5(h))
        h = self.ResBlock8(self.ConvBlock6(h))
        h = self.ResBlock9(self.ConvBlock7(h))
        mu = torch.tanh(self.Conv2(h))  # ours: Tanh bounds mu to [-1, 1]
        logvar = self.logvar_head(h)
        if self.logvar_min != -1.0:  # the Tanh's [-1, 1] mapped onto [logvar_min, 1] (ours)
            logvar = self.logvar_min + (1.0 - self.logvar_min) * 0.5 * (logvar + 1.0)
        return mu, logvar

    @torch.no_grad()
    def fit_logvar(self, squared_error: Tensor) -> None:
        """Set each latent channel's log sigma^2 to log(squared_error[c]) (a per-channel mean,
        clamped inside the head's range), the same at every position and for every input: the
        constant sigma that maximises the likelihood. The head's last BatchNorm gets that bias
        and a zero scale; training then learns how sigma varies (a scale starting at zero, as
        a zero-initialised residual branch does). The spread a kl-trained head had is dropped:
        mapped onto nll's wider range it put half the positions' sigma far below their error."""
        lo, hi = self.logvar_min, 1.0
        target = squared_error.clamp_min(1e-12).log().clamp(lo + 0.05 * (hi - lo),
                                                             hi - 0.05 * (hi - lo))
        t = 2.0 * (target - lo) / (hi - lo) - 1.0  # the Tanh output that maps to it
        bn = self.logvar_head.out_norm
        bn.bias.copy_(torch.atanh(t).to(bn.bias.dtype))
        bn.weight.zero_()


class Encoding(NamedTuple):
    """What one input needs before any decoder pass: the encoder features and the ICAP's
    Gaussian."""

    features: Tensor
    mu: Tensor
    logvar: Tensor


class StochasticSR(nn.Module):
    """The three networks together: f_theta (sr), g_phi (ren), q_omega (icap)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.sr = EncoderDecoder(cfg)
        self.ren = REN(cfg)
        self.icap = ICAP(cfg)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Encoding:
        mu, logvar = self.icap(x)
        return Encoding(self.sr.encoder(x), mu, logvar)

    @torch.no_grad()
    def reference_outputs(self, x: Tensor, y: Tensor | None = None,
                          enc: Encoding | None = None) -> dict[str, Tensor]:
        """The fixed rows of Tables 1-2 for inputs x: f(x, 0) (deterministic), f(x, mu_pred)
        (ICAP mean) and, given the HR faces y, f(x, mu_res) (REN oracle, r = y - f(x, 0))."""
        enc = self.encode(x) if enc is None else enc
        det = self.sr.decoder(enc.features, None, x)
        out = {"deterministic": det, "icap_mean": self.sr.decoder(enc.features, enc.mu, x)}
        if y is not None:
            out["ren_oracle"] = self.sr.decoder(enc.features, self.ren(y - det)[0], x)
        return out

    @torch.no_grad()
    def decode_draws(self, x: Tensor, enc: Encoding, eps: Tensor, temperature: float = 1.0,
                     chunk: int | None = None) -> Tensor:
        """f(x, mu + T sigma eps) for draws eps (N*n, ...) grouped by input (n per input); the
        decoder runs `chunk` rows at a time (None: all at once)."""
        n = len(eps) // len(x)
        outs = []
        for rows in torch.arange(len(eps), device=eps.device).split(chunk or len(eps)):
            src = rows // n
            z = sample_latent(enc.mu[src], enc.logvar[src], eps[rows], temperature)
            outs.append(self.sr.decoder(enc.features[src], z, x[src]))
        return torch.cat(outs)

    @torch.no_grad()
    def predict(self, x: Tensor, temperature: float = 0.0, n: int = 1,
                generator: torch.Generator | None = None) -> Tensor:
        """ICAP mean (temperature 0) or n samples per input: (N*n, 3, H, W) grouped by input."""
        enc = self.encode(x)
        eps = standard_normal((len(x) * n, *enc.mu.shape[1:]), enc.mu, generator)
        return self.decode_draws(x, enc, eps, temperature)
