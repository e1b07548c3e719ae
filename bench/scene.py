"""Group-photo scenes composited from face crops, with known face boxes.

A scene is built at high resolution (the "original"), then downscaled by `factor` (Pillow
bicubic, the degradation the models were trained on) so that its faces are a chosen number of
pixels wide. Each face is a 128x128 crop in the models' framing (facesr_core.degradation.to_hr),
pasted through a soft elliptical mask onto a smooth random background, so the scene has no
rectangular tile edges for a detector to latch onto. The ground-truth box of a face is the
central part of its crop given by FACE_BOX (the face itself, chin to brow, in the models'
framing; measured on CelebA crops, see bench/photo.py).

Used by the tests (faces from scikit-image's astronaut photo, or synthetic), by bench/photo.py
(faces from a real data pack: measured here, never committed) and by scripts/photo_figure.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

# The face box inside a 128 px crop in the models' framing, as fractions (left, top, right,
# bottom) of the crop side.
FACE_BOX = (0.20, 0.28, 0.80, 0.88)


@dataclass
class Scene:
    """The original (HR) scene, its downscaled copy, and the face boxes in the downscaled one."""

    original: np.ndarray  # uint8 HWC, factor times the photo's size
    photo: np.ndarray  # uint8 HWC: what a caller would send
    boxes: np.ndarray  # (N, 4) float x0, y0, x1, y1 in photo pixels
    factor: int


def face_width(crop_side: float) -> float:
    return crop_side * (FACE_BOX[2] - FACE_BOX[0])


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth coloured clouds with a little grain: texture, but nothing face-like."""
    coarse = rng.uniform(40, 215, size=(max(height // 64, 2), max(width // 64, 2), 3))
    img = Image.fromarray(coarse.astype(np.uint8)).resize((width, height),
                                                          Image.Resampling.BICUBIC)
    img = img.filter(ImageFilter.GaussianBlur(radius=max(width, height) / 60))
    grain = rng.normal(0, 4, size=(height, width, 3))
    return np.clip(np.asarray(img, np.float32) + grain, 0, 255).astype(np.uint8)


def ellipse_mask(side: int) -> Image.Image:
    """An elliptical alpha mask, opaque in the middle, fading out before the crop's edge."""
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    r = np.hypot((xx - side / 2) / (0.48 * side), (yy - side / 2) / (0.5 * side))
    alpha = np.clip((1.0 - r) / 0.12, 0.0, 1.0)
    return Image.fromarray((alpha * 255).astype(np.uint8))


def compose(faces: list[np.ndarray], face_px: list[float], factor: int = 4,
            seed: int = 0, columns: int | None = None) -> Scene:
    """A scene holding each face (128x128 uint8 crop) at the given face width in the
    downscaled photo, laid out on a jittered grid."""
    if len(faces) != len(face_px):
        raise ValueError("one face width per face")
    rng = np.random.default_rng(seed)
    n = len(faces)
    columns = columns or int(np.ceil(np.sqrt(n * 4 / 3)))
    rows = int(np.ceil(n / columns))
    crop_px = [w / (FACE_BOX[2] - FACE_BOX[0]) for w in face_px]  # crop side in the photo
    cell = int(np.ceil(max(crop_px) * 1.15))
    width, height = columns * cell * factor, rows * cell * factor
    canvas = Image.fromarray(background(height, width, rng))
    boxes = []
    for k, (face, side_lr) in enumerate(zip(faces, crop_px, strict=True)):
        side = max(int(round(side_lr * factor)), 8)
        slack = cell * factor - side
        left = (k % columns) * cell * factor + int(rng.integers(0, slack + 1))
        top = (k // columns) * cell * factor + int(rng.integers(0, slack + 1))
        tile = Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC)
        canvas.paste(tile, (left, top), ellipse_mask(side))
        fx0, fy0, fx1, fy1 = FACE_BOX
        boxes.append([(left + fx0 * side) / factor, (top + fy0 * side) / factor,
                      (left + fx1 * side) / factor, (top + fy1 * side) / factor])
    photo = canvas.resize((width // factor, height // factor), Image.Resampling.BICUBIC)
    return Scene(np.asarray(canvas), np.asarray(photo), np.asarray(boxes, np.float64), factor)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (N,4) and b (M,4): (N, M)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def matches(truth: np.ndarray, found: np.ndarray, threshold: float = 0.3) -> list[int | None]:
    """For each true box, the index of the detection matched to it (greedy by IoU), or None."""
    out: list[int | None] = [None] * len(truth)
    if len(truth) == 0 or len(found) == 0:
        return out
    overlap = iou(truth, found)
    used: set[int] = set()
    for t, d in sorted(np.argwhere(overlap >= threshold).tolist(),
                       key=lambda td: -overlap[td[0], td[1]]):
        if out[t] is None and d not in used:
            out[t], _ = d, used.add(d)
    return out


def recall(truth: np.ndarray, found: np.ndarray, threshold: float = 0.3) -> float:
    hits = matches(truth, found, threshold)
    return sum(h is not None for h in hits) / max(len(truth), 1)
