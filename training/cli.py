"""Command lines: facesr-prepare, facesr-train, facesr-eval, facesr-export.

Also `python -m training.cli {prepare,train,eval,export} ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

# glibc malloc settings measured on the 2-core CPU (SPEC.md): without them ~25% of training time
# went to page faults on re-mapped activation buffers; with them 1.53x throughput.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def _tuned_malloc_or_reexec(argv: list[str], command: str) -> None:
    """Re-run this process once with the malloc settings unless they are set (or opted out)."""
    if sys.platform != "linux" or os.environ.get("FACESR_NO_MALLOC_TUNING"):
        return
    if all(k in os.environ for k in MALLOC_ENV):
        return
    os.environ.update({k: os.environ.get(k, v) for k, v in MALLOC_ENV.items()})
    os.execv(sys.executable, [sys.executable, "-m", "training.cli", command, *argv])


def prepare_main(argv: list[str] | None = None) -> None:
    from training.data import collect_faces, write_pack

    p = argparse.ArgumentParser("facesr-prepare", description="Pack HR 128x128 face crops (with "
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
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not any([a.celeba, a.utkface, a.celeba_wild, a.folder]):
        p.error("give at least one of --celeba, --utkface, --celeba-wild, --folder")
    faces = collect_faces(a.celeba, a.identities, a.utkface, a.celeba_wild, a.folder,
                          n_test=a.test, n_val=a.val, seed=a.seed, limit=a.limit)
    summary = write_pack(faces, a.out, quality=a.quality)
    size = a.out.stat().st_size / 2**20
    print(json.dumps({**summary, "path": str(a.out), "MiB": round(size, 1)}, indent=2))


def _add_dataclass_flags(p: argparse.ArgumentParser, cls) -> None:
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if f.type in ("bool", "bool | None"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            p.add_argument(flag, type=kind, default=default, help=f"default: {default}")


def train_main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    _tuned_malloc_or_reexec(argv, "train")
    from training.config import TrainConfig
    from training.train import train

    p = argparse.ArgumentParser("facesr-train", description="Phase 1 (SR Encoder-Decoder + REN) "
                                "then phase 2 (ICAP). Resumes from OUT/checkpoint.pt if present.")
    _add_dataclass_flags(p, TrainConfig)
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = vars(p.parse_args(argv))
    resume, progress = not a.pop("no_resume"), not a.pop("no_progress")
    if not a["data"]:
        p.error("--data PACK.npz is required (make one with facesr-prepare)")
    summary = train(TrainConfig(**a), resume=resume, progress=progress)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary, indent=2))


def eval_main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    _tuned_malloc_or_reexec(argv, "eval")  # 2x faster evaluation on this CPU, measured
    from training.evaluate import evaluate, markdown_table, write_report
    from training.weights import load_model

    p = argparse.ArgumentParser("facesr-eval", description="PSNR/SSIM table (Tables 1-2) and "
                                "figures (Figs. 4, 7, 8) on a held-out split of a pack.")
    p.add_argument("--model", type=Path, required=True,
                   help="a training run folder (checkpoint.pt) or an exported model folder")
    p.add_argument("--pack", type=Path, required=True)
    p.add_argument("--scale", type=int, help="default: the model's")
    p.add_argument("--split", default="test")
    p.add_argument("--sources", nargs="+", default=["celeba", "utkface"],
                   help="evaluate each source separately (default: celeba utkface)")
    p.add_argument("--best-of", type=int, nargs="*", default=[10, 100])
    p.add_argument("--limit", type=int, help="at most this many faces per source")
    p.add_argument("--best-of-limit", type=int,
                   help="best-of-n on the first N faces only (n decoder passes per face)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scales sigma of the best-of-n samples (default 1, the paper's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.json/.md, figures")
    a = p.parse_args(argv)
    model, scale = load_model(a.model)
    scale = a.scale or scale
    results = [evaluate(model, a.pack, scale, a.split, (src,), tuple(a.best_of), a.limit,
                        a.device, a.seed, figures=a.out / f"figures_{src}",
                        best_of_limit=a.best_of_limit, temperature=a.temperature)
               for src in a.sources]
    write_report(results, a.out)
    print(markdown_table(results))


def export_main(argv: list[str] | None = None) -> None:
    from training.quantize import CALIBRATION_FACES

    p = argparse.ArgumentParser("facesr-export", description="ONNX graphs + manifest.json for the "
                                "service, each checked against PyTorch in ONNX Runtime; then "
                                "their int8 copies for the CPU (training/quantize.py), calibrated "
                                "on the pack's train split, with the PSNR they lose on its test "
                                "splits recorded in the manifest.")
    p.add_argument("--model", type=Path, help="training run folder (required unless --int8-only)")
    p.add_argument("--out", type=Path, required=True, help="model folder, e.g. models/x8")
    p.add_argument("--metrics", type=Path, help="metrics.json from facesr-eval, for the manifest")
    p.add_argument("--name")
    p.add_argument("--version")
    p.add_argument("--pack", type=Path, help="face pack for int8: calibration on its train split, "
                   "quality loss on its test splits (default: the pack the model was trained "
                   "on, as its manifest records it, if that file exists; without one, "
                   "calibration on scikit-image sample photos and no loss recorded, so "
                   "FACESR_PRECISION=auto serves fp32)")
    p.add_argument("--calibration-faces", type=int, default=CALIBRATION_FACES,
                   help=f"train faces for int8 calibration (default {CALIBRATION_FACES})")
    p.add_argument("--int8-eval-limit", type=int,
                   help="at most this many faces per test split for the int8 loss (default all)")
    p.add_argument("--no-int8", action="store_true", help="export the fp32 graphs only")
    p.add_argument("--int8-only", action="store_true", help="quantize the fp32 graphs already in "
                   "--out and add int8 to its manifest, leaving the fp32 files as they are")
    a = p.parse_args(argv)
    if a.int8_only and a.no_int8:
        p.error("--int8-only and --no-int8 exclude each other")
    if not a.int8_only and a.model is None:
        p.error("--model RUN is required (or --int8-only for a folder already exported)")
    run_pack = _run_pack_of(a.out) if a.int8_only else _export_fp32(a)
    pack = a.pack or run_pack
    if a.no_int8:
        return
    _export_int8(a.out, pack, a.calibration_faces, a.int8_eval_limit)


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
                            name=a.name, version=a.version, training=summary, metrics=metrics)
    print(f"wrote {a.out}: " + ", ".join(f.path for f in manifest.files.values()))
    return _run_pack_of(a.out)


def _run_pack_of(model_dir: Path) -> Path | None:
    """The pack the model was trained on (its manifest says), if that file is here."""
    from facesr_core.manifest import load_manifest

    pack = Path(load_manifest(model_dir, verify=False).training.get("data", {}).get("pack") or "")
    return pack if pack.name and pack.is_file() else None


def _export_int8(out: Path, pack: Path | None, faces: int, eval_limit: int | None) -> None:
    from training.quantize import add_int8

    if pack is not None and not pack.is_file():
        raise SystemExit(f"facesr-export: pack {pack} not found (give --pack PACK.npz)")
    if pack is None:
        print("no pack: int8 calibrated on scikit-image sample photos, no loss measured "
              "(FACESR_PRECISION=auto will serve fp32; give --pack to measure it)")
    manifest = add_int8(out, pack, faces, eval_limit)
    assert manifest.int8 is not None
    losses = ", ".join(f"{k} {v.loss_db:+.4f} dB" for k, v in manifest.int8.loss.items())
    print(f"wrote {out}: " + ", ".join(f.path for f in manifest.int8.files.values())
          + (f" (int8 PSNR loss: {losses})" if losses else ""))


COMMANDS = {"prepare": prepare_main, "train": train_main, "eval": eval_main,
            "export": export_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m training.cli {{{','.join(COMMANDS)}}} ...")
    COMMANDS[sys.argv[1]](sys.argv[2:])
