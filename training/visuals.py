"""Figures: training sample grids, loss curves, and the paper's Figs. 4, 7 and 8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facesr_core.degradation import degrade, from_model_range
from training.data import make_pair
from training.latent import sample_latent, standard_normal

CPU = torch.device("cpu")


def tile(rows: list[list[np.ndarray]], pad: int = 2) -> Image.Image:
    """uint8 HWC images in a grid with white gutters."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) - pad, ncol * (w + pad) - pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            canvas[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = img
    return Image.fromarray(canvas)


def nearest_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """The LR image, blown up with nearest neighbour so its pixels stay visible."""
    lr = degrade(Image.fromarray(hr), scale)
    return np.asarray(lr.resize(hr.shape[:2][::-1], Image.Resampling.NEAREST))


def diff_image(a: np.ndarray, b: np.ndarray, gain: float = 4.0) -> np.ndarray:
    d = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(-1) * gain
    return np.repeat(np.clip(d, 0, 255).astype(np.uint8)[..., None], 3, -1)


@torch.no_grad()
def model_outputs(model, hr: np.ndarray, scale: int, device: torch.device = CPU,
                  n_samples: int = 3, temperature: float = 1.0, seed: int = 0, batch: int = 8,
                  oracle: bool = True) -> dict[str, np.ndarray]:
    """uint8 outputs for HR faces hr (N,H,W,3), `batch` faces at a time: bicubic,
    deterministic, icap_mean, ren_oracle (when `oracle`) and n samples per face at
    `temperature` ('samples': (N,n,H,W,3))."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(hr), batch):
        pairs = [make_pair(h, scale) for h in hr[start:start + batch]]
        x = torch.from_numpy(np.stack([p[0] for p in pairs])).to(device)
        y = torch.from_numpy(np.stack([p[1] for p in pairs])).to(device) if oracle else None
        enc = model.encode(x)
        eps = standard_normal((len(x) * n_samples, *enc.mu.shape[1:]), enc.mu, gen)
        rows = {"bicubic": x, **model.reference_outputs(x, y, enc),
                "samples": model.decode_draws(x, enc, eps, temperature)}
        for k, v in rows.items():
            parts.setdefault(k, []).append(from_model_range(v.float().cpu().numpy()))
    model.train(was_training)
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["samples"] = out["samples"].reshape(len(hr), n_samples, *out["samples"].shape[1:])
    return out


def sample_grid(model, hr: np.ndarray, scale: int, device: torch.device) -> Image.Image:
    """Per face: LR | bicubic | deterministic | ICAP mean | 3 samples | HR."""
    o = model_outputs(model, hr, scale, device)
    return tile([[nearest_lr(h, scale), o["bicubic"][i], o["deterministic"][i], o["icap_mean"][i],
                  *o["samples"][i], h] for i, h in enumerate(hr)])


def figure4(model, hr: np.ndarray, scale: int, device: torch.device) -> Image.Image:
    """Fig. 4: T, bicubic, D, |T-D|, S (REN oracle), |T-S|."""
    o = model_outputs(model, hr, scale, device)
    return tile([[h, o["bicubic"][i], o["deterministic"][i], diff_image(h, o["deterministic"][i]),
                  o["ren_oracle"][i], diff_image(h, o["ren_oracle"][i])] for i, h in enumerate(hr)])


def figure7(model, hr: np.ndarray, scale: int, device: torch.device, n: int = 5) -> Image.Image:
    """Fig. 7: bicubic input, ICAP mean, n samples, ground truth."""
    o = model_outputs(model, hr, scale, device, n_samples=n)
    return tile([[o["bicubic"][i], o["icap_mean"][i], *o["samples"][i], h]
                 for i, h in enumerate(hr)])


@torch.no_grad()
def figure8(model, hr: np.ndarray, scale: int, device: torch.device, steps: int = 8,
            seed: int = 0) -> Image.Image:
    """Fig. 8: latent traversal z_start + alpha (z_end - z_start) between two samples (Eq. 8)."""
    model.eval()
    rows = []
    gen = torch.Generator().manual_seed(seed)
    for h in hr:
        x = torch.from_numpy(make_pair(h, scale)[0])[None].to(device)
        enc = model.encode(x)
        z0, z1 = (sample_latent(enc.mu, enc.logvar, standard_normal(enc.mu.shape, enc.mu, gen))
                  for _ in range(2))
        alphas = torch.linspace(0, 1, steps).to(enc.mu).view(-1, 1, 1, 1)
        z = z0 + alphas * (z1 - z0)
        frames = model.sr.decoder(enc.features.expand(steps, -1, -1, -1), z,
                                  x.expand(steps, -1, -1, -1))
        rows.append(list(from_model_range(frames.float().cpu().numpy())))
    return tile(rows)


def save_loss_curve(log: Path, out: Path) -> None:
    if not log.exists():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    panels = [(1, ("loss", "loss_d", "loss_s")), (2, ("kl",)), (3, ("loss", "loss_m"))]
    panels = [(phase, keys) for phase, keys in panels
              if phase < 3 or any(r["phase"] == 3 for r in records)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5))
    for ax, (phase, keys) in zip(axes, panels, strict=True):
        recs = [r for r in records if r["phase"] == phase]
        for key in keys:
            ax.plot([r["step"] for r in recs], [r[key] for r in recs], label=key)
        ax.set_title(f"phase {phase}")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        if recs:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)

