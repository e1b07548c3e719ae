"""Is the uncertainty map true, and does identity pick better samples? Measured on a pack's
held-out faces with the served models (ONNX Runtime, service.engine), so it measures what the
service returns.

Per face: the ICAP mean (the served SR) and n samples, the real error |SR - HR| (mean over RGB,
grey levels), and several maps scored against it:
- per-image Spearman correlation between the map and the error;
- the sparsification curve (the mean error of the pixels left after removing the fraction f
  the map ranks most uncertain, divided by the whole image's mean error) and its AUSE, the area
  between that curve and the oracle's (pixels removed by their true error): 0 is perfect.
The free baseline is the gradient magnitude of the bicubic input (edges are where SR errs).

With `--identity` (the `identity` extra) it also runs the ranking experiment on CelebA faces:
each face's samples are ranked by identity distance to ANOTHER photo of the same person (from
the same split), and the top one is compared with the served mean and with a random sample,
against the true HR: identity distance and PSNR.

    python -m training.uncertainty --pack PACK.npz --scales 8 16 --limit 100 --out runs/unc
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import spearmanr

from facesr_core import identity
from facesr_core.degradation import to_model_range
from facesr_core.uncertainty import uncertainty_map
from service.engine import Runner, load_models
from service.sampling import MAP_DRAWS, mean_and_draws
from service.settings import Settings
from training.data import FacePack, network_input

FRACTIONS = np.linspace(0.0, 0.98, 50)
SERVED_MAP, BASELINE_MAP = "sample_std", "bicubic_gradient"  # names of the maps in the results
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def luma(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) @ LUMA


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """|grad| of the luminance of a uint8 (H,W,3) image: the free baseline on the bicubic x."""
    gy, gx = np.gradient(luma(image))
    return np.hypot(gx, gy)


def served_map(samples: np.ndarray, served: np.ndarray) -> np.ndarray:
    """The map the service returns (facesr_core.uncertainty): the samples' standard deviation
    around their own mean, RMS over RGB."""
    return uncertainty_map(samples)


def rms_to_served(samples: np.ndarray, served: np.ndarray) -> np.ndarray:
    """The RMS difference of the samples from the served face, over the samples and RGB (the
    served map until x16's samples at T = 2 measured better without their drift from it)."""
    diff = samples.astype(np.float32) - served.astype(np.float32)[None]
    return np.sqrt(np.mean(diff**2, axis=(0, 3)))


def luma_std(samples: np.ndarray, served: np.ndarray) -> np.ndarray:
    return luma(samples).std(axis=0)


def upsampled_sigma(logvar: np.ndarray, size: int) -> np.ndarray:
    """The ICAP's sigma averaged over the latent channels, bilinearly resized to the face:
    no decoder call at all."""
    sigma = np.exp(0.5 * logvar).mean(axis=0).astype(np.float32)
    return np.asarray(Image.fromarray(sigma, "F").resize((size, size),
                                                         Image.Resampling.BILINEAR))


MapFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
SAMPLE_MAPS: dict[str, MapFn] = {SERVED_MAP: served_map, "rms_to_served": rms_to_served,
                                 "luma_std": luma_std}


def sparsification(error: np.ndarray, ranking: np.ndarray) -> np.ndarray:
    """Mean error left after removing the FRACTIONS of pixels with the highest `ranking`,
    divided by the mean error of all pixels."""
    e = error.ravel()[np.argsort(-ranking.ravel(), kind="stable")].astype(np.float64)
    suffix = np.cumsum(e[::-1])[::-1]  # suffix[k] = sum of e[k:]
    k = (FRACTIONS * len(e)).astype(int)
    return suffix[k] / (len(e) - k) / max(e.mean(), 1e-12)


def score_map(error: np.ndarray, values: np.ndarray, oracle: np.ndarray) -> dict:
    curve = sparsification(error, values)
    rho = spearmanr(values.ravel(), error.ravel()).statistic
    return {"spearman": float(np.nan_to_num(rho)),
            "ause": float(np.trapezoid(curve - oracle, FRACTIONS)), "curve": curve}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def run_face(runner: Runner, hr: np.ndarray, n: int, seed: int, draws: str | None = None
             ) -> dict:
    """The served mean, n samples and every map of one face, scored against its HR."""
    bicubic = network_input(hr, runner.scale)
    x = to_model_range(bicubic)
    mu, logvar, features = runner.encode(x[None])
    z = mean_and_draws(mu, logvar, seed, n, runner.draws(draws))
    images = runner.decode(features, z, x[None])
    served, samples = images[0], images[1:]
    error = np.abs(served.astype(np.float32) - hr.astype(np.float32)).mean(axis=-1)
    oracle = sparsification(error, error)
    maps = {name: fn(samples, served) for name, fn in SAMPLE_MAPS.items()}
    maps["icap_sigma"] = upsampled_sigma(logvar[0], hr.shape[0])
    maps[BASELINE_MAP] = gradient_magnitude(bicubic)
    return {"scores": {name: score_map(error, v, oracle) for name, v in maps.items()},
            "oracle": oracle, "images": images, "bicubic": bicubic}


def identity_ranking(faces: FacePack, runs: list[dict], rng: np.random.Generator) -> dict:
    """Rank each face's samples by identity distance to another photo of the same person; the
    pick, the served mean and a random sample, each measured against the true HR."""
    refs = identity.embed(faces.hr)
    rows = []
    for i, run in enumerate(runs):
        others = np.flatnonzero((faces.identities == faces.identities[i])
                                & (np.arange(len(faces)) != i))
        if faces.identities[i] < 0 or not len(others):
            continue
        emb = identity.embed(run["images"])  # the mean, then the samples
        to_ref = identity.distances(emb[1:], refs[rng.choice(others)])
        to_hr = identity.distances(emb, refs[i])
        pick, rand = 1 + int(np.argmin(to_ref)), 1 + int(rng.integers(len(to_ref)))
        hr = faces.hr[i]
        rows.append({f"{k}_{m}": v for k, j in (("pick", pick), ("mean", 0), ("random", rand))
                     for m, v in (("id", float(to_hr[j])), ("psnr", psnr(hr, run["images"][j])))})
    if not rows:
        return {"faces": 0}
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["pick_closer_than_mean"] = float(np.mean([r["pick_id"] < r["mean_id"] for r in rows]))
    return {"faces": len(rows), **out}


def evaluate_split(runner: Runner, faces: FacePack, n: int, seed: int,
                   with_identity: bool, draws: str | None = None) -> dict:
    runs = [run_face(runner, hr, n, seed + i, draws) for i, hr in enumerate(faces.hr)]
    names = list(runs[0]["scores"])
    summary = {}
    for name in names:
        scores = [r["scores"][name] for r in runs]
        summary[name] = {
            "spearman_mean": float(np.mean([s["spearman"] for s in scores])),
            "spearman_median": float(np.median([s["spearman"] for s in scores])),
            "ause_mean": float(np.mean([s["ause"] for s in scores])),
            "beats_baseline": float(np.mean([
                s["ause"] < r["scores"][BASELINE_MAP]["ause"]
                for s, r in zip(scores, runs, strict=True)])),
            "curve": np.mean([s["curve"] for s in scores], axis=0).round(4).tolist()}
    result = {"faces": len(runs), "n": n, "maps": summary,
              "oracle_curve": np.mean([r["oracle"] for r in runs], axis=0).round(4).tolist()}
    if with_identity:
        result["identity_ranking"] = identity_ranking(faces, runs, np.random.default_rng(seed))
    return result


def markdown(results: list[dict]) -> str:
    lines = ["| data | scale | faces | map | Spearman (mean / median) | AUSE | AUSE below "
             "baseline |", "|---|---|---|---|---|---|---|"]
    for res in results:
        for name, m in res["maps"].items():
            lines.append(f"| {res['source']} | x{res['scale']} | {res['faces']} | {name} | "
                         f"{m['spearman_mean']:.3f} / {m['spearman_median']:.3f} | "
                         f"{m['ause_mean']:.4f} | {m['beats_baseline']:.0%} |")
    rank = [r for r in results if r.get("identity_ranking", {}).get("faces")]
    if rank:
        lines += ["", "| data | scale | faces | identity distance to HR: pick / mean / random | "
                  "PSNR: pick / mean / random | pick closer than mean |",
                  "|---|---|---|---|---|---|"]
        for res in rank:
            r = res["identity_ranking"]
            lines.append(f"| {res['source']} | x{res['scale']} | {r['faces']} | "
                         f"{r['pick_id']:.3f} / {r['mean_id']:.3f} / {r['random_id']:.3f} | "
                         f"{r['pick_psnr']:.2f} / {r['mean_psnr']:.2f} / {r['random_psnr']:.2f} "
                         f"| {r['pick_closer_than_mean']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser("python -m training.uncertainty", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", type=Path, required=True, help="a pack made by facesr-prepare")
    p.add_argument("--models", type=Path, default=Path("models"),
                   help="the served model folder (default: models)")
    p.add_argument("--scales", type=int, nargs="+", default=[8, 16], help="default: 8 16")
    p.add_argument("--sources", nargs="+", default=["celeba", "utkface"],
                   help="each evaluated separately (default: celeba utkface)")
    p.add_argument("--split", default="test", help="default: test (val to choose a map)")
    p.add_argument("--limit", type=int, default=100,
                   help="faces per source, drawn at random with --seed (default 100)")
    p.add_argument("--n", type=int, default=10, help="samples per face (default 10, as "
                   "/samples)")
    p.add_argument("--seed", type=int, default=0, help="face draw and latent seeds (default 0)")
    p.add_argument("--identity", action="store_true",
                   help="also the identity ranking experiment (needs the identity extra)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "int8"),
                   help="graphs, as FACESR_PRECISION (default auto: what the service serves)")
    p.add_argument("--draws", choices=("principal", "icap"), default=MAP_DRAWS,
                   help=f"the samples' draws, as ?draws= (default {MAP_DRAWS}: what the service "
                        "draws for a map when a request names none)")
    p.add_argument("--out", type=Path, required=True, help="folder for uncertainty.json/.md")
    a = p.parse_args(argv)
    if a.identity and not identity.available():
        p.error(f"--identity: {identity.INSTALL_HINT}")
    runners = load_models(Settings(model_dir=a.models, providers="cpu", precision=a.precision))
    results = []
    for scale in a.scales:
        for source in a.sources:
            faces = FacePack(a.pack, split=a.split, sources=(source,), sample=a.limit,
                             seed=a.seed)
            res = evaluate_split(runners[scale], faces, a.n, a.seed,
                                 a.identity and source == "celeba", a.draws)
            results.append({"scale": scale, "source": source, "split": a.split,
                            "precision": runners[scale].precision,
                            "draws": runners[scale].draws(a.draws).kind, **res})
            print(markdown(results[-1:]), flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "uncertainty.json").write_text(json.dumps(results, indent=1))
    (a.out / "uncertainty.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
