"""Ship a GPU-trained scale only if it beats the shipped model on the held-out test splits.

Compares the `metrics` of two exported model folders (manifest.json, as `facesr-export
--metrics` writes them): the candidate (runs/gpu/x8/export) against the shipped one (models/x8).
The rule: the ICAP-mean PSNR, the output /superresolve serves, must be higher on every test
split both were measured on (CelebA and UTKFace), with the same face counts and protocol.
SSIM and the other rows are printed beside it, and what FACESR_PRECISION=auto would serve on
the CPU (int8 only within its tolerance: a candidate that falls back to fp32 runs at about half
the speed). With --pack, the two models' weights also run on that pack's test faces, and the
served PSNR's gain is printed face by face: its mean, standard error and the share of faces
that improved (training.evaluate.paired_gain); the rule stays the one above.

    python scripts/device/compare.py runs/gpu/x8/export models/x8          # verdict
    python scripts/device/compare.py runs/gpu/x8/export models/x8 --pack packs/faces_all.npz
    python scripts/device/compare.py runs/gpu/x8/export models/x8 --ship   # and replace it
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from facesr_core.manifest import INT8_MAX_LOSS_DB, Manifest, load_manifest

SERVED = "icap_mean"
ROWS = ("bicubic", "deterministic", "icap_mean", "best_of_10")


def test_metrics(model_dir: Path) -> dict[str, dict]:
    manifest = load_manifest(model_dir, verify=False)
    return {k: v for k, v in manifest.metrics.items() if k.endswith("_test")}


def verdict(new: dict[str, dict], old: dict[str, dict]) -> tuple[bool, list[str]]:
    """(ship?, one line per split and row): ship when the served PSNR is higher on every split."""
    splits = sorted(set(new) & set(old))
    if not splits:
        return False, ["no test split measured on both: run facesr-eval, export with --metrics"]
    lines, wins = [], []
    for split in splits:
        a, b = new[split], old[split]
        if (a.get("count"), a.get("protocol")) != (b.get("count"), b.get("protocol")):
            return False, [f"{split}: not comparable (count/protocol {a.get('count')}, "
                           f"{a.get('protocol')!r} vs {b.get('count')}, {b.get('protocol')!r})"]
        for row in ROWS:
            if row in a and row in b:
                d = a[row]["psnr"] - b[row]["psnr"]
                lines.append(f"{split} {row}: PSNR {a[row]['psnr']:.2f} vs {b[row]['psnr']:.2f} "
                             f"({d:+.2f} dB), SSIM {a[row]['ssim']:.4f} vs {b[row]['ssim']:.4f}")
        wins.append(SERVED in a and SERVED in b and a[SERVED]["psnr"] > b[SERVED]["psnr"])
    return all(wins), lines


def int8_line(manifest: Manifest) -> str:
    """What FACESR_PRECISION=auto serves on the CPU, and why."""
    int8 = manifest.int8
    if int8 is None:
        return "int8: none exported, auto serves fp32"
    kept = manifest.int8_kept_in_fp32()
    losses = ", ".join(f"{k} {v.loss_db:.4f} dB" for k, v in int8.loss.items()) or "not measured"
    serves = "int8" if int8.loss_within(INT8_MAX_LOSS_DB) else "fp32"
    return (f"int8 loss: {losses}" + (f" ({', '.join(kept)} kept in fp32)" if kept else "")
            + f"; auto serves {serves} (tolerance {INT8_MAX_LOSS_DB} dB)")


def paired_lines(candidate: Path, shipped: Path, pack: Path,
                 sources: tuple[str, ...]) -> list[str]:
    """One line per source's test split: the served PSNR's gain face by face, from both
    folders' weights."""
    from training.evaluate import paired_gain
    from training.weights import load_model

    new, scale = load_model(candidate)
    old, _ = load_model(shipped)
    return [f"{split} {SERVED}, face by face: {g['mean_db']:+.4f} dB (standard error "
            f"{g['se_db']:.4f}), better on {g['better']:.0%} of {g['count']} faces"
            for split, g in paired_gain(new, old, pack, scale, sources).items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidate", type=Path, help="exported folder of the new model")
    p.add_argument("shipped", type=Path, help="the shipped folder, e.g. models/x8")
    p.add_argument("--ship", action="store_true", help="replace the shipped folder if it wins")
    p.add_argument("--pack", type=Path,
                   help="also compare face by face on this pack's test splits (minutes on a CPU)")
    a = p.parse_args()
    new, old = test_metrics(a.candidate), test_metrics(a.shipped)
    ship, lines = verdict(new, old)
    print("\n".join(lines))
    if a.pack:
        sources = tuple(split.removesuffix("_test") for split in sorted(set(new) & set(old)))
        print("\n".join(paired_lines(a.candidate, a.shipped, a.pack, sources)), flush=True)
    for folder in (a.candidate, a.shipped):
        print(f"{folder}: {int8_line(load_manifest(folder, verify=False))}")
    print(f"{a.candidate} vs {a.shipped}: {'SHIP' if ship else 'keep the shipped model'}")
    if ship and a.ship:
        shutil.rmtree(a.shipped)
        shutil.copytree(a.candidate, a.shipped)
        print(f"replaced {a.shipped}")
    sys.exit(0)


if __name__ == "__main__":
    main()
