"""Face-detector recall on small faces (8-40 px wide), on group scenes composited from real faces.

The candidates are detectors whose weights come inside a PyPI package (no download at run
time). Each runs on the photo upscaled by 1, 2, 3 and 4 (Pillow bicubic), and its boxes are
mapped back; a face counts as found when a box overlaps it with IoU >= 0.3 (bench/scene.py).

    python -m bench.detectors --faces DIR [--count 120] [--candidates haar dlib-hog ...]

DIR holds face photos (CelebA aligned or UTKFace crops: real faces give the honest number;
never commit them). Only the candidates whose packages are installed run:
- haar, haar-alt2: OpenCV's Haar cascades (opencv-python-headless, cv2.data)
- dlib-hog: dlib's HOG + linear SVM (dlib-bin; the weights are compiled into dlib)
- dlib-cnn: dlib's MMOD CNN (dlib-bin + face-recognition-models)
- mediapipe: BlazeFace full range (mediapipe 0.10.x: the .tflite files are in the wheel)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from bench.scene import compose, matches
from facesr_core.degradation import to_hr

Detector = Callable[[np.ndarray], np.ndarray]  # RGB uint8 -> (N, 4) x0, y0, x1, y1
BANDS = ((8, 12), (12, 20), (20, 40), (12, 40))


HAAR = {"scaleFactor": 1.1, "minNeighbors": 3}  # --scale-factor, --min-neighbors


def haar(name: str) -> Detector:
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)

    def detect(rgb: np.ndarray) -> np.ndarray:
        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        found = cascade.detectMultiScale(gray, minSize=(20, 20), **HAAR)
        boxes = np.asarray(found, np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        return boxes
    return detect


def dlib_hog() -> Detector:
    import dlib

    det = dlib.get_frontal_face_detector()

    def detect(rgb: np.ndarray) -> np.ndarray:
        rects = det(rgb, 0)
        return np.asarray([[r.left(), r.top(), r.right(), r.bottom()] for r in rects],
                          np.float64).reshape(-1, 4)
    return detect


def dlib_cnn() -> Detector:
    import dlib

    from facesr_core.identity import dlib_models_dir

    weights = dlib_models_dir() / "mmod_human_face_detector.dat"
    det = dlib.cnn_face_detection_model_v1(str(weights))

    def detect(rgb: np.ndarray) -> np.ndarray:
        rects = det(rgb, 0)
        return np.asarray([[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()]
                           for d in rects], np.float64).reshape(-1, 4)
    return detect


def mediapipe_full() -> Detector:
    import mediapipe as mp

    det = mp.solutions.face_detection.FaceDetection(model_selection=1,
                                                    min_detection_confidence=0.3)

    def detect(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        out = det.process(np.ascontiguousarray(rgb))
        boxes = []
        for d in out.detections or []:
            b = d.location_data.relative_bounding_box
            boxes.append([b.xmin * w, b.ymin * h, (b.xmin + b.width) * w,
                          (b.ymin + b.height) * h])
        return np.asarray(boxes, np.float64).reshape(-1, 4)
    return detect


CANDIDATES: dict[str, Callable[[], Detector]] = {
    "haar": lambda: haar("haarcascade_frontalface_default.xml"),
    "haar-alt2": lambda: haar("haarcascade_frontalface_alt2.xml"),
    "dlib-hog": dlib_hog,
    "dlib-cnn": dlib_cnn,
    "mediapipe": mediapipe_full,
}


def upscaled(detect: Detector, factor: int) -> Detector:
    def run(rgb: np.ndarray) -> np.ndarray:
        if factor == 1:
            return detect(rgb)
        h, w = rgb.shape[:2]
        big = np.asarray(Image.fromarray(rgb).resize((w * factor, h * factor),
                                                     Image.Resampling.BICUBIC))
        return detect(big) / factor
    return run


def load_faces(folder: Path, count: int, seed: int) -> list[np.ndarray]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    picked = np.random.default_rng(seed).choice(len(files), size=count, replace=False)
    return [np.asarray(to_hr(Image.open(files[k]))) for k in picked]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=Path, required=True, help="folder of face photos")
    ap.add_argument("--count", type=int, default=120, help="faces in the scenes")
    ap.add_argument("--per-scene", type=int, default=30, help="faces per scene")
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES),
                    help=f"detectors to run, of {' '.join(CANDIDATES)} (default all; those "
                         "not installed are skipped)")
    ap.add_argument("--upscales", nargs="+", type=int, default=[1, 2, 3, 4],
                    help="factors each photo is upscaled by (Pillow bicubic) before detection "
                         "(default 1 2 3 4)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the faces drawn, their widths and the scenes (default 0)")
    ap.add_argument("--scale-factor", type=float, default=1.1, help="Haar cascades' scaleFactor")
    ap.add_argument("--min-neighbors", type=int, default=3, help="Haar cascades' minNeighbors")
    ap.add_argument("--out", type=Path, help="write the table as JSON here")
    args = ap.parse_args()
    HAAR.update(scaleFactor=args.scale_factor, minNeighbors=args.min_neighbors)
    faces = load_faces(args.faces, args.count, args.seed)
    rng = np.random.default_rng(args.seed)
    widths = np.exp(rng.uniform(np.log(8), np.log(40), size=len(faces)))
    scenes = [compose(faces[i:i + args.per_scene], list(widths[i:i + args.per_scene]),
                      seed=args.seed + i) for i in range(0, len(faces), args.per_scene)]
    rows = []
    for name in args.candidates:
        try:
            base = CANDIDATES[name]()
        except ImportError as exc:
            print(f"{name}: not installed ({exc})", file=sys.stderr)
            continue
        for factor in args.upscales:
            detect = upscaled(base, factor)
            hit, size, spent, false_pos = [], [], 0.0, 0
            for scene in scenes:
                start = time.perf_counter()
                found = detect(scene.photo)
                spent += time.perf_counter() - start
                m = matches(scene.boxes, found)
                hit += [k is not None for k in m]
                size += list(scene.boxes[:, 2] - scene.boxes[:, 0])
                false_pos += len(found) - sum(k is not None for k in m)
            hit_a, size_a = np.asarray(hit), np.asarray(size)
            row = {"detector": name, "upscale": factor, "recall": float(hit_a.mean()),
                   "false_positives": false_pos, "seconds_per_scene": spent / len(scenes)}
            for lo, hi in BANDS:
                sel = (size_a >= lo) & (size_a < hi)
                row[f"recall_{lo}_{hi}"] = float(hit_a[sel].mean()) if sel.any() else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
