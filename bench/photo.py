"""Whole-photo mode on group scenes composited from held-out real faces: detection recall, PSNR
of the face regions against the original (the pipeline vs plain bicubic), and time per photo.

    python -m bench.photo --pack packs/faces_all.npz [--faces 120] [--min-px 12 --max-px 40]

Faces come from the pack's test split (identity-disjoint from training; never committed).
Each scene holds `--per-scene` faces whose widths are drawn log-uniformly from
[min-px, max-px] in the photo; the photo is the scene's original downscaled by `--factor`
(Pillow bicubic), and /photo's pipeline returns it upscaled by the same factor, so its face
regions (the true boxes, scaled) are compared with the original's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import machine, training_paused
from bench.scene import compose, matches
from service.engine import load_models
from service.faces import FaceDetector
from service.photo import PhotoOptions, process
from service.settings import Settings

BANDS = ((8, 12), (12, 20), (20, 30), (30, 41))


def region_psnr(a: np.ndarray, b: np.ndarray, box: np.ndarray) -> float:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    diff = a[y0:y1, x0:x1].astype(np.float64) - b[y0:y1, x0:x1].astype(np.float64)
    return float(10 * np.log10(255.0**2 / max(np.mean(diff**2), 1e-10)))


def test_faces(pack: Path, count: int, seed: int) -> np.ndarray:
    from training.data import FacePack

    return FacePack(pack, split="test", sources=["celeba"], sample=count, seed=seed).hr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", type=Path, required=True, help="a facesr-prepare pack")
    ap.add_argument("--faces", type=int, default=120, help="faces in all")
    ap.add_argument("--per-scene", type=int, default=30, help="faces per photo (default 30)")
    ap.add_argument("--min-px", type=float, default=12, help="smallest face width in the photo")
    ap.add_argument("--max-px", type=float, default=40, help="largest face width in the photo")
    ap.add_argument("--factor", type=int, default=4, help="original / photo, and ?upscale")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the test faces drawn, their widths and the scenes (default 0)")
    ap.add_argument("--pause-training", action="store_true",
                    help="SIGSTOP a background facesr-train while timing (bench/common.py)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    faces = test_faces(args.pack, args.faces, args.seed)
    rng = np.random.default_rng(args.seed)
    widths = np.exp(rng.uniform(np.log(args.min_px), np.log(args.max_px), size=len(faces)))
    detector = FaceDetector()
    runners = load_models(Settings())
    for runner in runners.values():
        runner.warmup()
    options = PhotoOptions(upscale=args.factor, max_faces=args.per_scene * 2,
                           max_output_pixels=10**9)
    rows, seconds = [], []
    with training_paused(args.pause_training):
        for i in range(0, len(faces), args.per_scene):
            scene = compose(list(faces[i:i + args.per_scene]),
                            list(widths[i:i + args.per_scene]), args.factor, args.seed + i)
            start = time.perf_counter()
            result = process(scene.photo, detector, runners, options)
            seconds.append(time.perf_counter() - start)
            h, w = scene.photo.shape[:2]
            bicubic = np.asarray(Image.fromarray(scene.photo).resize(
                (w * args.factor, h * args.factor), Image.Resampling.BICUBIC))
            found = np.asarray([p.face.box for p in result.faces]).reshape(-1, 4)
            hit = matches(scene.boxes, found)
            for box, k in zip(scene.boxes, hit, strict=True):
                hr_box = box * args.factor
                rows.append({
                    "width": float(box[2] - box[0]), "found": k is not None,
                    "scale": None if k is None else result.faces[k].scale,
                    "psnr_photo": region_psnr(result.image, scene.original, hr_box),
                    "psnr_bicubic": region_psnr(bicubic, scene.original, hr_box)})
    summary = {"machine": machine(), "faces": len(rows), "factor": args.factor,
               "seconds_per_photo_median": float(np.median(seconds)),
               "faces_per_photo": args.per_scene, "bands": []}
    for lo, hi in ((args.min_px, args.max_px + 1), *BANDS):
        sel = [r for r in rows if lo <= r["width"] < hi]
        if not sel:
            continue
        summary["bands"].append({
            "px": [lo, hi], "faces": len(sel),
            "recall": float(np.mean([r["found"] for r in sel])),
            "super_resolved": int(sum(r["scale"] is not None for r in sel)),
            "psnr_photo": float(np.mean([r["psnr_photo"] for r in sel])),
            "psnr_bicubic": float(np.mean([r["psnr_bicubic"] for r in sel]))})
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
