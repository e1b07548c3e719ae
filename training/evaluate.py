"""Tables 1-2 on a held-out split: PSNR/SSIM (scikit-image) of bicubic, deterministic, ICAP mean,
REN oracle and best-of-n, plus Figs. 4, 7 and 8.

Primary protocol: RGB uint8, no border crop. The Y channel (BT.601, as in most SR papers) is
reported beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from facesr_core import identity
from facesr_core.degradation import from_model_range
from facesr_core.quality import psnr
from training.data import FacePack, make_pair
from training.latent import standard_normal
from training.visuals import figure4, figure7, figure8


def exact_fp32(device: torch.device) -> None:
    """On CUDA, no TF32 in convolutions and matmuls (PyTorch allows it in cuDNN by default):
    figures measured there then match the CPU's fp32 ones."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def psnr_ssim(hr: np.ndarray, sr: np.ndarray) -> dict[str, float]:
    """RGB and Y-channel PSNR/SSIM of one uint8 HWC pair."""
    y_hr, y_sr = rgb2ycbcr(hr)[..., 0], rgb2ycbcr(sr)[..., 0]
    return {
        "psnr": peak_signal_noise_ratio(hr, sr, data_range=255),
        "ssim": structural_similarity(hr, sr, channel_axis=-1, data_range=255),
        "psnr_y": peak_signal_noise_ratio(y_hr, y_sr, data_range=255),
        "ssim_y": structural_similarity(y_hr, y_sr, data_range=255),
    }


@torch.no_grad()
def evaluate_face(model, hr: np.ndarray, scale: int, device: torch.device,
                  best_of: tuple[int, ...], gen: torch.Generator,
                  temperature: float = 1.0, with_identity: bool = False,
                  flip_ensemble: bool = False) -> dict[str, dict[str, float]]:
    """PSNR/SSIM of every row for one HR face (and identity distances, `with_identity`);
    best-of-n picks by PSNR among the first n of max(best_of) draws from gen; `flip_ensemble`
    adds `icap_mean_flip`, the ICAP mean averaged with the mirrored face's, mirrored back (what
    the service's FACESR_FLIP_ENSEMBLE serves)."""
    x_np, y_np = make_pair(hr, scale)
    x, y = torch.from_numpy(x_np)[None].to(device), torch.from_numpy(y_np)[None].to(device)
    enc = model.encode(x)
    outs = {"bicubic": x, **model.reference_outputs(x, y, enc)}
    if flip_ensemble:
        mirrored = model.predict(x.flip(-1)).flip(-1)  # temperature 0: f(x', mu(x'))
        outs["icap_mean_flip"] = (outs["icap_mean"] + mirrored) / 2
    images = {k: from_model_range(v[0].cpu().numpy()) for k, v in outs.items()}
    if best_of:
        eps = standard_normal((max(best_of), *enc.mu.shape[1:]), enc.mu, gen)
        imgs = from_model_range(model.decode_draws(x, enc, eps, temperature, chunk=32)
                                .cpu().numpy())
        scores = psnr(hr, imgs)
        for n in best_of:
            images[f"best_of_{n}"] = imgs[int(np.argmax(scores[:n]))]
    result = {k: psnr_ssim(hr, img) for k, img in images.items()}
    if with_identity:
        for row, columns in identity.compare(hr, images).items():
            result[row].update(columns)
    return result


def evaluate(model, pack: Path | str, scale: int, split: str = "test",
             sources: tuple[str, ...] = ("celeba",), best_of: tuple[int, ...] = (10, 100),
             limit: int | None = None, device: str = "cpu", seed: int = 0,
             figures: Path | None = None, progress: bool = True,
             best_of_limit: int | None = None, temperature: float = 1.0,
             with_identity: bool = False, flip_ensemble: bool = False) -> dict:
    """Mean metrics per row over the split, and optionally the figures.

    Best-of-n costs n decoder passes per face; `best_of_limit` runs it on the first faces only.
    The ICAP mean over those same faces is then reported too (`icap_mean_best_of_faces`), so
    best-of-n is always compared like for like. `temperature` scales sigma of the samples (1: the
    paper's draws from the ICAP's Gaussian). `with_identity` adds each row's identity distance
    to the HR and whether it is under the same-person threshold (facesr_core.identity).
    `flip_ensemble` adds the row `icap_mean_flip` (evaluate_face).
    """
    from tqdm import tqdm

    dev = torch.device(device)
    exact_fp32(dev)
    model = model.float().to(dev).eval()
    faces = FacePack(pack, split=split, sources=sources)
    hrs = faces.hr[:limit] if limit else faces.hr
    if len(hrs) == 0:
        raise SystemExit(f"{pack}: no faces in split {split!r} for sources {sources}")
    gen = torch.Generator().manual_seed(seed)
    n_best = len(hrs) if best_of_limit is None else min(best_of_limit, len(hrs))
    per_face = [evaluate_face(model, hr, scale, dev, best_of if i < n_best else (), gen,
                              temperature, with_identity, flip_ensemble)
                for i, hr in enumerate(tqdm(hrs, desc=f"eval x{scale} {'+'.join(sources)}",
                                            unit="img", disable=not progress))]
    mean = lambda faces, row: {m: float(np.mean([f[row][m] for f in faces]))  # noqa: E731
                               for m in faces[0][row]}
    rows = {row: mean(per_face[:n_best] if row.startswith("best_of") else per_face, row)
            for row in per_face[0]}
    if best_of and n_best < len(hrs):
        rows["icap_mean_best_of_faces"] = mean(per_face[:n_best], "icap_mean")
    if figures:
        figures.mkdir(parents=True, exist_ok=True)
        picks = hrs[:4]
        figure4(model, picks, scale, dev).save(figures / "fig4_oracle.png")
        figure7(model, picks, scale, dev).save(figures / "fig7_samples.png")
        figure8(model, picks[:2], scale, dev).save(figures / "fig8_traversal.png")
    return {"scale": scale, "split": split, "sources": list(sources), "count": len(hrs),
            "best_of": list(best_of), "best_of_count": n_best, "seed": seed,
            "temperature": temperature,
            "protocol": "RGB uint8, no border crop; *_y: BT.601 Y channel", "rows": rows}


@torch.no_grad()
def served_psnr(model, hrs: np.ndarray, scale: int, batch: int = 20) -> np.ndarray:
    """Per-face RGB PSNR of the ICAP mean, the output /superresolve serves (fp32, CPU)."""
    model = model.float().eval()
    scores = []
    for i in range(0, len(hrs), batch):
        chunk = hrs[i:i + batch]
        x = torch.from_numpy(np.stack([make_pair(hr, scale)[0] for hr in chunk]))
        srs = from_model_range(model.predict(x).numpy())
        scores.extend(float(psnr(hr, sr[None])[0]) for hr, sr in zip(chunk, srs, strict=True))
    return np.array(scores)


def paired_gain(new, old, pack: Path | str, scale: int,
                sources: tuple[str, ...] = ("celeba", "utkface"), split: str = "test",
                limit: int | None = None) -> dict[str, dict[str, float]]:
    """Per `<source>_<split>`: the served PSNR of `new` minus `old`, face by face on the same
    faces: its mean (dB), the standard error of that mean, and the share of faces `new` does
    better on. A stage's gain can be a hundredth of a dB; the standard error says whether it
    is more than the luck of these faces."""
    gains = {}
    for source in sources:
        hrs = FacePack(pack, split=split, sources=(source,)).hr
        hrs = hrs[:limit] if limit else hrs
        if len(hrs) < 2:
            raise SystemExit(f"{pack}: fewer than 2 faces in split {split!r} of {source}")
        diff = served_psnr(new, hrs, scale) - served_psnr(old, hrs, scale)
        gains[f"{source}_{split}"] = {
            "mean_db": float(diff.mean()),
            "se_db": float(diff.std(ddof=1) / np.sqrt(len(diff))),
            "better": float(np.mean(diff > 0)),
            "count": len(diff),
        }
    return gains


def markdown_table(results: list[dict]) -> str:
    with_id = "id_distance" in next(iter(results[0]["rows"].values()))
    head = ("| data | scale | row | PSNR | SSIM | PSNR (Y) | SSIM (Y) |"
            + (" identity distance | same person |\n" if with_id else "\n")
            + "|---|---|---|---|---|---|---|" + ("---|---|\n" if with_id else "\n"))
    lines = []
    for res in results:
        for row, m in res["rows"].items():
            lines.append(f"| {'+'.join(res['sources'])} | x{res['scale']} | {row} | "
                         f"{m['psnr']:.2f} | {m['ssim']:.4f} | {m['psnr_y']:.2f} | "
                         f"{m['ssim_y']:.4f} |" + (f" {m['id_distance']:.3f} | "
                                                   f"{m['id_same']:.0%} |" if with_id else ""))
    return head + "\n".join(lines) + "\n"


def write_report(results: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    (out / "metrics.md").write_text(markdown_table(results))
