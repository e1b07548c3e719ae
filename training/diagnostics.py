"""Measurements behind two quality problems: banding in the SR faces, and what samples change.

Banding: the error e = SR - HR (grey levels, RGB averaged) is averaged along each row, giving a
row profile; a horizontal band is a row-to-row swing of that profile. `band_rms` is the RMS of
the profile's frequencies from `BAND_FROM` cycles per 128 px up (periods of about 10 px and
less: a face's own horizontal structure is mostly coarser), in grey levels; the same on the
column profile measures vertical bands and seams. Bicubic's figure is the floor that the face
content alone gives.

Samples: how far each sample is from the ICAP mean (RMS, grey levels) and how much of that
difference lies at low spatial frequency (below `BAND_FROM` cycles per 128 px: shapes of 10 px
and up, what a person reads as attributes) rather than texture.

    python -m training.diagnostics --model models/x16 --pack packs/faces_all.npz --split val \
        --limit 40 --out docs/banding_x16.png
    python -m training.diagnostics --model models/x8 --pack packs/faces_all.npz --split val \
        --calibrate 0 0.1 0.2 0.3 0.5 1 [--install]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from facesr_core.manifest import MANIFEST_NAME, load_manifest, write_manifest
from facesr_core.quality import psnr
from training.data import FacePack
from training.evaluate import evaluate_face
from training.visuals import model_outputs

BAND_FROM = 12  # cycles per 128 px
ROWS = ("bicubic", "deterministic", "icap_mean", "sample")
CPU = torch.device("cpu")


def profile_spectra(err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Power spectra (mean over images) of the row and column profiles of err (N,H,W), in grey
    levels squared per frequency bin, normalised so that the bins sum to the profile's mean
    square (Parseval)."""
    rows, cols = err.mean(2), err.mean(1)
    power = lambda p: (np.abs(np.fft.fft(p, axis=1)) ** 2).mean(0) / p.shape[1] ** 2  # noqa: E731
    return power(rows), power(cols)


def band_rms(spectrum: np.ndarray, start: int = BAND_FROM) -> float:
    """RMS of the profile's frequencies |k| >= start (both signs of k)."""
    n = len(spectrum)
    return float(np.sqrt(spectrum[start:n - start + 1].sum()))


def grey_error(imgs: np.ndarray, hr: np.ndarray) -> np.ndarray:
    """SR - HR in grey levels (RGB averaged), (N,H,W)."""
    return imgs.astype(np.float64).mean(-1) - hr.astype(np.float64).mean(-1)


def banding(outputs: dict[str, np.ndarray], hr: np.ndarray
            ) -> tuple[dict[str, dict[str, float]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Row (horizontal bands) and column (vertical bands, seams) band RMS of each output's error,
    and the spectra they come from.

    outputs: name -> uint8 (N,H,W,3) images of the faces in hr (N,H,W,3)."""
    result, spectra = {}, {}
    for name, imgs in outputs.items():
        spectra[name] = rows, cols = profile_spectra(grey_error(imgs, hr))
        result[name] = {"rows": band_rms(rows), "columns": band_rms(cols),
                        "psnr": float(np.mean(psnr(hr, imgs)))}
    return result, spectra


def low_frequency_share(diff: np.ndarray, below: int = BAND_FROM) -> float:
    """Share of the energy of diff (N,H,W[,3]) at spatial frequencies |k| < below cycles/128 px."""
    grey = diff.mean(-1) if diff.ndim == 4 else diff
    power = np.abs(np.fft.fft2(grey)) ** 2
    k = np.fft.fftfreq(grey.shape[-1]) * grey.shape[-1]
    low = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2) < below
    return float(power[:, low].sum() / max(power.sum(), 1e-12))


def diagnosed_outputs(model, hr: np.ndarray, scale: int,
                      temperature: float = 1.0) -> dict[str, np.ndarray]:
    """uint8 outputs for faces hr (N,H,W,3): bicubic, deterministic, icap_mean, and one sample
    per face at `temperature`."""
    o = model_outputs(model, hr, scale, temperature=temperature, n_samples=1, oracle=False)
    return {**{k: o[k] for k in ROWS[:3]}, "sample": o["samples"][:, 0]}


def best_of_gain(model, hr: np.ndarray, scale: int, temperatures: list[float], n: int = 10,
                 seed: int = 0) -> dict[float, float]:
    """Mean over faces of best-of-n PSNR minus the ICAP mean's PSNR (dB), per temperature; the
    same draws eps at every temperature (one generator per temperature, seeded alike). The
    calibrated temperature is the argmax."""
    gains = {}
    for t in temperatures:
        gen = torch.Generator().manual_seed(seed)
        faces = [evaluate_face(model, face, scale, CPU, (n,), gen, t) for face in hr]
        gains[t] = float(np.mean([f[f"best_of_{n}"]["psnr"] - f["icap_mean"]["psnr"]
                                  for f in faces]))
    return gains


def spectra_figure(spectra: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
                   path: Path) -> None:
    """One panel per model: row- and column-profile spectra of each output's error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(spectra), figsize=(5.5 * len(spectra), 3.8), squeeze=False,
                             sharey=True)
    for ax, (title, per_row) in zip(axes[0], spectra.items(), strict=True):
        for i, (name, (rows, cols)) in enumerate(per_row.items()):
            k = np.arange(1, len(rows) // 2 + 1)
            color = f"C{i}"
            ax.semilogy(k, rows[k], color=color, label=f"{name}: rows")
            ax.semilogy(k, cols[k], color=color, ls=":", label=f"{name}: columns")
        ax.axvline(BAND_FROM, color="grey", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("cycles per 128 px (16: period 8 px)")
    axes[0][0].set_ylabel("power of the error's row / column profile")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def install_temperature(model_dir: Path, temperature: float) -> None:
    """Make temperature the default of /samples and /traverse for draws=icap."""
    manifest = load_manifest(model_dir, verify=False)
    manifest.sample_temperature = temperature
    write_manifest(model_dir, manifest)
    print(f"{model_dir}: sample_temperature {temperature:g}")


def main(argv: list[str] | None = None) -> None:
    from training.weights import load_model

    p = argparse.ArgumentParser("python -m training.diagnostics", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, nargs="+", required=True,
                   help="one or more run or model folders (one panel each)")
    p.add_argument("--pack", type=Path, required=True, help="a pack made by facesr-prepare")
    p.add_argument("--split", default="val", help="the pack's split to read (default: val)")
    p.add_argument("--sources", nargs="+", default=["celeba"],
                   help="pack sources to read (default: celeba)")
    p.add_argument("--limit", type=int, default=40, help="at most this many faces (default 40)")
    p.add_argument("--temperature", type=float, default=1.0, help="of the samples")
    p.add_argument("--out", type=Path, help="figure of the spectra (.png); JSON beside it")
    p.add_argument("--calibrate", type=float, nargs="+", metavar="T",
                   help="instead: best-of-10 minus the ICAP mean (dB) at each temperature T; "
                        "the best T is the model's sample_temperature (facesr-export)")
    p.add_argument("--install", action="store_true",
                   help="with --calibrate: write each model folder's best T into its "
                        "manifest.json as sample_temperature (exported folders only)")
    a = p.parse_args(argv)
    if a.install:
        if not a.calibrate:
            p.error("--install needs --calibrate")
        unexported = [str(f) for f in a.model if not (f / MANIFEST_NAME).is_file()]
        if unexported:
            p.error(f"--install: no {MANIFEST_NAME} in {', '.join(unexported)} (export it first)")
    hr = FacePack(a.pack, split=a.split, sources=a.sources).hr[:a.limit]
    if a.calibrate:
        for folder in a.model:
            model, scale = load_model(folder)
            gains = best_of_gain(model.float().eval(), hr, scale, a.calibrate)
            best = max(gains, key=gains.get)
            print(json.dumps({"model": str(folder), "faces": len(hr), "best_of_10_minus_mean_db":
                              gains, "sample_temperature": best}))
            if a.install:
                install_temperature(folder, best)
        return
    report, spectra = {}, {}
    for folder in a.model:
        model, scale = load_model(folder)
        outputs = diagnosed_outputs(model.float().eval(), hr, scale, a.temperature)
        bands, spectra[f"{folder} (x{scale}, {len(hr)} {a.split} faces)"] = banding(outputs, hr)
        report[str(folder)] = {**bands, "faces": len(hr), "scale": scale}
    print(json.dumps(report, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        spectra_figure(spectra, a.out)
        a.out.with_suffix(".json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
