"""Principal draws (ours): samples along the few directions in which moving the ICAP mean's code
most often brings the face closer to the truth.

A draw is z = mu_q + T * sum_i eps_i b_i (facesr_core/latent.py) with k standard-normal eps_i
and basis rows b_i = s_i v_i, which the service uses by default when a model ships a basis.
The unit directions v_i come from training faces, one of two ways (`--fit`):

- `gradient` (the default): the top eigenvectors of E[g g^T], where g = -J^T (f(x, mu_q) - y)
  is the gradient of the face's squared error with respect to the code at mu_q (J: the decoder's
  Jacobian there): the directions in which a step lowers the error of most faces. s_i is the RMS
  over faces of the best step along v_i, (g . v_i) / |J v_i|^2 (|J v_i| by a finite difference).
- `code-error`: the top eigenvectors of E[d d^T], d = mu_r - mu_q (the REN's mean code, which
  sees the HR, minus the ICAP's), with s_i = sqrt(lambda_i): where the code is most often wrong,
  whether or not the decoder's output depends on it much.

The training faces are drawn in equal numbers from each source, so the larger source (UTKFace
has twice CelebA's training faces) does not set the directions alone.

Why: ten draws of the ICAP's diagonal Gaussian spread over all 4,096 dimensions, and in so many
dimensions a random offset almost never points towards the HR's code; ten draws along a handful
of directions that carry the typical error do, so best-of-n can beat the mean (docs/method.md).

    python -m training.principal --model models/x8 --pack packs/faces_all.npz \
        --ranks 2 4 8 --temperatures 0.25 0.35 0.5 0.7 --install

fits the basis on training faces, picks the rank and temperature with the highest best-of-10
minus the ICAP mean on the validation split, checks that choice on the first test faces, and
(--install) writes `principal_basis.npy` and `principal_draws` into the model folder's
manifest.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from facesr_core.degradation import from_model_range
from facesr_core.manifest import (
    MANIFEST_NAME,
    PRINCIPAL_BASIS,
    ModelFile,
    PrincipalDraws,
    load_manifest,
    sha256_of,
    write_manifest,
)
from facesr_core.quality import psnr
from training.data import FacePack, PairDataset
from training.diagnostics import low_frequency_share
from training.evaluate import exact_fp32
from training.latent import principal_latent, standard_normal

PRINCIPAL_REPORT = "principal.json"  # beside a --save-basis file: what --install-from reads


def _pairs(hr: np.ndarray, scale: int, device: torch.device
           ) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = PairDataset(hr, scale).batch(range(len(hr)))
    return x.to(device), y.to(device)


def _encoded_batches(model, hr: np.ndarray, scale: int, batch: int, desc: str = "",
                     progress: bool = False):
    """(start, x, y, encoding) for each batch of faces, the encoder run without autograd."""
    device = next(model.parameters()).device
    for i in tqdm(range(0, len(hr), batch), desc=desc, unit="batch", disable=not progress):
        x, y = _pairs(hr[i:i + batch], scale, device)
        with torch.no_grad():
            enc = model.encode(x)
        yield i, x, y, enc  # outside no_grad: the consumer's own autograd mode applies


@torch.no_grad()
def code_errors(model, hr: np.ndarray, scale: int, batch: int = 16,
                progress: bool = True) -> torch.Tensor:
    """d = mu_r - mu_q for each face (N, latent size), float64: the REN's mean code of the
    residual y - f(x, 0) minus the ICAP's mean."""
    rows = []
    for _, x, y, enc in _encoded_batches(model, hr, scale, batch, "code errors", progress):
        mu_r = model.ren(y - model.sr.decoder(enc.features, None, x))[0]
        rows.append((mu_r - enc.mu).flatten(1).double().cpu())
    return torch.cat(rows)


def top_directions(rows: torch.Tensor, rank: int
                   ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(eigenvalues (rank,), unit directions (rank, D), share of E|row|^2 that the first k
    directions explain for k = 1..rank) of the rows' second-moment matrix, largest first."""
    second_moment = rows.T @ rows / len(rows)
    lam, vec = torch.linalg.eigh(second_moment)  # ascending
    lam, vec = lam.flip(0)[:rank].clamp_min(0), vec.flip(1)[:, :rank]
    return lam, vec.T, (lam.cumsum(0) / second_moment.trace()).numpy()


def fit_basis(errors: torch.Tensor, rank: int, latent_shape: tuple[int, ...]
              ) -> tuple[np.ndarray, np.ndarray]:
    """The `code-error` fit: (basis float32 (rank, *latent_shape): rows sqrt(lambda_i) v_i by
    decreasing lambda_i, the share of E|d|^2 that the first k rows explain, for k = 1..rank)."""
    lam, directions, explained = top_directions(errors, rank)
    basis = (directions * lam.sqrt()[:, None]).reshape(rank, *latent_shape)
    return basis.float().numpy(), explained


def latent_gradients(model, hr: np.ndarray, scale: int, batch: int = 16,
                     progress: bool = True) -> torch.Tensor:
    """g = -d/dz (|f(x, z) - y|^2 / 2) at z = mu_q for each face (N, latent size), float64: the
    direction in which moving the ICAP mean's code lowers that face's squared error fastest."""
    rows = []
    for _, x, y, enc in _encoded_batches(model, hr, scale, batch, "code gradients", progress):
        with torch.enable_grad():
            z = enc.mu.detach().requires_grad_(True)
            err = model.sr.decoder(enc.features, z, x) - y
            (grad,) = torch.autograd.grad(0.5 * err.pow(2).sum(), z)
        rows.append((-grad).flatten(1).double().cpu())
    return torch.cat(rows)


@torch.no_grad()
def step_sizes(model, hr: np.ndarray, scale: int, directions: torch.Tensor,
               gradients: torch.Tensor, h: float = 0.5, batch: int = 16) -> torch.Tensor:
    """For each unit direction v (rank, D): the RMS over faces of the step along v that
    minimises the face's squared error to second order, (g . v) / |J v|^2, with J v by a
    finite difference of size h (one decoder pass per direction and face)."""
    steps = []
    for i, x, _, enc in _encoded_batches(model, hr, scale, batch):
        base = model.sr.decoder(enc.features, enc.mu, x)
        row = []
        for v in directions.float().to(x.device):
            moved = model.sr.decoder(enc.features, enc.mu + h * v.reshape(enc.mu.shape[1:]), x)
            jv2 = (moved - base).flatten(1).pow(2).sum(1).double().cpu() / h**2
            row.append(gradients[i:i + len(x)] @ v.double().cpu() / jv2.clamp_min(1e-12))
        steps.append(torch.stack(row, 1))
    return torch.cat(steps).pow(2).mean(0).sqrt()


def fit_gradient_basis(model, hr: np.ndarray, scale: int, rank: int,
                       latent_shape: tuple[int, ...], step_faces: int = 300,
                       progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The `gradient` fit: (basis float32 (rank, *latent_shape): rows s_i v_i, v_i the top
    eigenvectors of E[g g^T], s_i their RMS best step over `step_faces` of the faces spread
    evenly; the share of E|g|^2 that the first k directions explain, for k = 1..rank)."""
    gradients = latent_gradients(model, hr, scale, progress=progress)
    _, directions, explained = top_directions(gradients, rank)
    every = max(1, len(hr) // step_faces)
    steps = step_sizes(model, hr[::every], scale, directions, gradients[::every])
    basis = (directions * steps[:, None]).reshape(rank, *latent_shape)
    return basis.float().numpy(), explained


FITS = {"gradient": "E[g g^T] of the code's error gradients, best steps",
        "code-error": "E[d d^T] of the code errors mu_r - mu_q, sqrt(lambda)"}


def basis_training_faces(pack: Path, sources: list[str], count: int, seed: int = 1
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(pack indices, HR faces) of the training faces a basis is fitted on: count // len(sources)
    of each source's, a seeded sample (scripts/device/pack.py --judge ships the same ones)."""
    parts = [FacePack(pack, split="train", sources=[source], sample=count // len(sources),
                      seed=seed) for source in sources]
    return np.concatenate([p.index for p in parts]), np.concatenate([p.hr for p in parts])


@torch.no_grad()
def face_draws(model, face: np.ndarray, scale: int, basis: torch.Tensor, ranks: list[int],
               temperatures: list[float], n: int, icap_temperature: float,
               gen: torch.Generator) -> np.ndarray:
    """uint8 images of one face: its ICAP mean, then n draws per setting (each rank with each
    temperature, then the ICAP's own draws), all from one encoder pass and one decoder call.
    The principal settings share the face's eps (n, max rank)."""
    x, _ = _pairs(face[None], scale, next(model.parameters()).device)
    enc = model.encode(x)
    eps = standard_normal((n, len(basis)), enc.mu, gen)
    z = [enc.mu]
    for k in ranks:
        z += [principal_latent(enc.mu, basis[:k], eps[:, :k], t) for t in temperatures]
    z.append(enc.mu + icap_temperature * torch.exp(0.5 * enc.logvar) * standard_normal(
        (n, *enc.mu.shape[1:]), enc.mu, gen))
    z = torch.cat(z)
    out = model.sr.decoder(enc.features.expand(len(z), -1, -1, -1), z,
                           x.expand(len(z), -1, -1, -1))
    return from_model_range(out.cpu().numpy())


def best_of_gains(model, hr: np.ndarray, scale: int, basis: np.ndarray, ranks: list[int],
                  temperatures: list[float], n: int = 10, seed: int = 0,
                  icap_temperature: float = 1.0, progress: bool = True
                  ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(gains, spread), per setting `k<rank>_T<t>` and `icap_T<t>` (the ICAP's own draws at
    `icap_temperature`; 1 is the paper's). Gains: the mean over faces of best-of-n PSNR minus
    the ICAP mean's, in dB. Spread: how far the samples are from the mean (RMS, grey levels)
    and the share of that difference at low spatial frequency (shapes, not texture:
    training.diagnostics)."""
    gen, device = torch.Generator().manual_seed(seed), next(model.parameters()).device
    names = [f"k{k}_T{t:g}" for k in ranks for t in temperatures]
    names.append(f"icap_T{icap_temperature:g}")
    per_face: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for face in tqdm(hr, desc=f"best-of-{n} x{scale}", unit="img", disable=not progress):
        images = face_draws(model, face, scale, torch.from_numpy(basis).to(device), ranks,
                            temperatures, n, icap_temperature, gen)
        scores = psnr(face, images)
        diffs = images[1:].astype(np.float64) - images[0].astype(np.float64)
        for j, name in enumerate(names):
            rows = slice(j * n, (j + 1) * n)
            per_face[name].append((float(scores[1:][rows].max() - scores[0]),
                                   float(np.sqrt(np.mean(diffs[rows] ** 2))),
                                   low_frequency_share(diffs[rows])))
    means = {name: np.mean(v, axis=0) for name, v in per_face.items()}
    return ({name: float(m[0]) for name, m in means.items()},
            {name: {"rms_from_mean": float(m[1]), "low_frequency_share": float(m[2])}
             for name, m in means.items()})


def install(model_dir: Path, basis: np.ndarray, temperature: float, calibration: dict) -> None:
    """Write the basis into an exported model folder and list it in its manifest."""
    manifest = load_manifest(model_dir, verify=False)
    if tuple(basis.shape[1:]) != tuple(manifest.latent_shape):
        raise SystemExit(f"{model_dir}: latent {manifest.latent_shape}, basis {basis.shape[1:]}")
    path = model_dir / PRINCIPAL_BASIS
    np.save(path, basis.astype(np.float32), allow_pickle=False)
    manifest.principal_draws = PrincipalDraws(
        file=ModelFile(path=PRINCIPAL_BASIS, sha256=sha256_of(path)), rank=len(basis),
        temperature=temperature, calibration=calibration)
    write_manifest(model_dir, manifest)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's float32 state (names and values): the same for a run folder and
    the export made from it, whatever files hold the weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def install_fitted(model_dir: Path, model: torch.nn.Module, fitted: Path) -> dict:
    """Install a basis fitted elsewhere (`--save-basis`, e.g. on a GPU machine): FITTED's
    principal.json and principal_basis.npy, refused unless they were fitted on these weights."""
    report = json.loads((fitted / PRINCIPAL_REPORT).read_text())
    if report.get("weights_sha256") != weights_fingerprint(model):
        raise SystemExit(f"{fitted}: its basis was fitted on other weights than {model_dir}'s")
    basis = np.load(fitted / PRINCIPAL_BASIS, allow_pickle=False)
    if len(basis) != report["rank"]:
        raise SystemExit(f"{fitted}: {PRINCIPAL_BASIS} has {len(basis)} rows, the report "
                         f"chose rank {report['rank']}")
    install(model_dir, basis, report["temperature"], report)
    return report


def _served_icap_temperature(folder: Path) -> float:
    """The temperature of the ICAP's draws that the service uses for this model: its manifest's
    sample_temperature (1, the paper's, for a run folder)."""
    if (folder / MANIFEST_NAME).exists():
        return load_manifest(folder, verify=False).sample_temperature
    return 1.0


def main(argv: list[str] | None = None) -> None:
    from training.weights import load_model

    p = argparse.ArgumentParser("python -m training.principal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True,
                   help="an exported model folder (or a run folder, without --install)")
    p.add_argument("--pack", type=Path, help="a pack made by facesr-prepare (required unless "
                                              "--install-from)")
    p.add_argument("--sources", nargs="+", default=["celeba", "utkface"],
                   help="pack sources of the training, validation and test faces "
                        "(default: celeba utkface)")
    p.add_argument("--train-faces", type=int, default=1200,
                   help="training faces the basis is fitted on (a seeded sample, the same "
                        "number from each source)")
    p.add_argument("--fit", choices=list(FITS), default="gradient",
                   help="how the directions are found: " + "; ".join(
                       f"{k}: {v}" for k, v in FITS.items()) + " (default: gradient)")
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8],
                   help="ranks k to try, each with every temperature (default: 2 4 8)")
    # T = 1 never won, nor did T < 0.25 (x8); the shipped picks are in the README
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.25, 0.35, 0.5, 0.7],
                   help="temperatures T to try (default: 0.25 0.35 0.5 0.7)")
    p.add_argument("--val-limit", type=int, default=200, help="validation faces per choice")
    p.add_argument("--test-limit", type=int, default=100,
                   help="first test faces of each source the choice is checked on (0: none)")
    p.add_argument("--install", action="store_true",
                   help="write the chosen basis and temperature into --model's manifest")
    p.add_argument("--out", type=Path, help="the report as JSON")
    p.add_argument("--save-basis", type=Path, metavar="DIR",
                   help=f"write the chosen basis and the report into DIR ({PRINCIPAL_BASIS}, "
                        f"{PRINCIPAL_REPORT}), for --install-from")
    p.add_argument("--install-from", type=Path, metavar="DIR",
                   help="fit nothing: install the basis that --save-basis wrote into DIR "
                        "(refused unless it was fitted on --model's weights); --pack unused")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    if a.pack is None and a.install_from is None:
        p.error("--pack is required (unless --install-from)")
    progress = not a.no_progress
    model, scale = load_model(a.model)
    if a.install_from:
        report = install_fitted(a.model, model, a.install_from)
        print(f"{a.model}: installed the rank-{report['rank']} basis at T = "
              f"{report['temperature']:g} from {a.install_from}")
        return
    device = torch.device(a.device)
    exact_fp32(device)
    model = model.float().to(device).eval()
    fingerprint = weights_fingerprint(model)
    _, train = basis_training_faces(a.pack, a.sources, a.train_faces)
    with torch.no_grad():
        latent_shape = tuple(model.icap(torch.zeros(1, 3, 128, 128, device=device))[0]
                             .shape[1:])
    if a.fit == "gradient":
        basis, explained = fit_gradient_basis(model, train, scale, max(a.ranks), latent_shape,
                                              progress=progress)
    else:
        basis, explained = fit_basis(code_errors(model, train, scale, progress=progress),
                                     max(a.ranks), latent_shape)
    t_icap = _served_icap_temperature(a.model)
    val = FacePack(a.pack, split="val", sources=a.sources).hr[:a.val_limit]
    gains, spread = best_of_gains(model, val, scale, basis, a.ranks, a.temperatures,
                                  icap_temperature=t_icap, progress=progress)
    pick = max((g, k, t) for k in a.ranks for t in a.temperatures
               for g in [gains[f"k{k}_T{t:g}"]])
    _, rank, temperature = pick
    report = {"fit": a.fit, "train_faces": len(train), "explained": {k: float(explained[k - 1])
                                                      for k in a.ranks},
              "val_faces": len(val), "val_best_of_10_minus_mean_db": gains,
              "val_samples_spread": spread,
              "rank": rank, "temperature": temperature, "weights_sha256": fingerprint,
              "test": {}}
    for source in a.sources if a.test_limit else ():
        test = FacePack(a.pack, split="test", sources=[source]).hr[:a.test_limit]
        checked, spread = best_of_gains(model, test, scale, basis[:rank], [rank], [temperature],
                                        icap_temperature=t_icap, progress=progress)
        report["test"][source] = {"faces": len(test), "best_of_10_minus_mean_db": checked,
                                  "samples_spread": spread}
    print(json.dumps(report, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2))
    if a.save_basis:
        a.save_basis.mkdir(parents=True, exist_ok=True)
        np.save(a.save_basis / PRINCIPAL_BASIS, basis[:rank], allow_pickle=False)
        (a.save_basis / PRINCIPAL_REPORT).write_text(json.dumps(report, indent=2))
    if a.install:
        install(a.model, basis[:rank], temperature, report)


if __name__ == "__main__":
    main()
