"""Whole photos: find every face, super-resolve it, paste it back into the upscaled photo.

No HTTP here: `POST /photo` (service/api/photo.py) and `facesr-photo` (service/photo_cli.py)
both run these steps, so they give the same output.

1. detect (service/faces.py): boxes and scores, best first; at most `max_faces` are kept.
2. plan: each face's square crop, framed like the models' training faces, and its scale: the
   caller's `scale`, or the loaded model whose input range holds the crop side (the rules of
   /superresolve?scale: x4 takes 16-40 px, x8 8-20 px, x16 4-10 px; the model whose input is
   nearest the side wins). A face whose crop no model takes is left bicubic, with the reason.
   The crop (edge-padded where it leaves the photo) is resized to the model's input size.
3. super-resolve: one batched call per scale for all its faces (30 faces at x4 are one call,
   chunked by the engine like any batch), the ICAP mean; with `samples=n` also n draws per face.
4. paste: the photo is upscaled by `upscale` (Pillow bicubic), and each 128 px face is resized
   to its crop's size at that factor and blended in with a raised-cosine feather over the outer
   FEATHER of each side, so no seam shows. `upscale` defaults to `scale`, else to the smallest
   scale used for a face (so no face result is enlarged), else to the smallest loaded scale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from facesr_core.degradation import lr_size
from service.engine import Runner, model_input
from service.errors import PayloadTooLarge
from service.faces import Face, FaceDetector
from service.imaging import decode, encode_b64, lr_range, scales_for
from service.sampling import mean_and_draws

DEFAULT_MAX_FACES = 32
FEATHER = 0.15  # share of each side of a pasted face that blends into the bicubic photo
MAX_UPSCALE = 16


@dataclass(frozen=True)
class PhotoOptions:
    scale: int | None = None  # the model for every face; None: from each face's size
    upscale: int | None = None  # the photo's factor; None: see the module docstring
    samples: int = 0  # draws per face besides the mean
    seed: int = 0
    temperature: float | None = None  # None: each model's calibrated temperature
    draws: str | None = None  # principal or icap; None: each model's default
    max_faces: int = DEFAULT_MAX_FACES
    max_output_pixels: int = 40_000_000


@dataclass
class FacePlan:
    face: Face
    crop: tuple[int, int, int]  # left, top, side in photo pixels (may leave the photo)
    scale: int | None  # None: left bicubic (see `skipped`)
    skipped: str | None = None
    lr: np.ndarray | None = None  # uint8 (lr_size, lr_size, 3), the model's input
    image: np.ndarray | None = None  # uint8 (128, 128, 3), the ICAP mean
    samples: np.ndarray | None = None  # uint8 (n, 128, 128, 3)


@dataclass
class Photo:
    """One photo's faces through every step; `image` is the returned photo."""

    size: tuple[int, int]  # width, height of the input
    detect_upscale: int
    faces: list[FacePlan]
    dropped: int  # faces found beyond max_faces (the lowest scores)
    upscale: int = 0
    temperature: dict[int, float] = field(default_factory=dict)  # per scale, with samples
    draws: dict[int, str] = field(default_factory=dict)  # per scale, with samples
    image: np.ndarray | None = None


def choose_scale(side: int, scale: int | None,
                 available: tuple[int, ...]) -> tuple[int | None, str | None]:
    """The scale for a face crop of `side` px, or None and why it stays bicubic."""
    if scale is not None:
        lo, hi = lr_range(scale)
        if lo <= side <= hi:
            return scale, None
        return None, f"a {side} px crop is outside what x{scale} takes ({lo}-{hi} px)"
    fits = scales_for(side, available)
    if fits:
        return fits[0], None
    ranges = ", ".join(f"x{s}: {lr_range(s)[0]}-{lr_range(s)[1]} px" for s in available)
    return None, f"no loaded model takes a {side} px crop ({ranges})"


def cut(photo: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
    """The square photo[top:top+side, left:left+side], edge-padded where it leaves the photo."""
    h, w = photo.shape[:2]
    y0, y1, x0, x1 = max(top, 0), min(top + side, h), max(left, 0), min(left + side, w)
    inside = photo[y0:y1, x0:x1]
    pad = ((y0 - top, top + side - y1), (x0 - left, left + side - x1), (0, 0))
    return np.pad(inside, pad, mode="edge")


def plan(photo: np.ndarray, faces: list[Face], scale: int | None,
         available: tuple[int, ...]) -> list[FacePlan]:
    plans = []
    for face in faces:
        left, top, side = (round(v) for v in face.crop())
        side = max(side, 1)
        chosen, why = choose_scale(side, scale, available)
        item = FacePlan(face, (left, top, side), chosen, why)
        if chosen is not None:
            target = lr_size(chosen)
            crop = Image.fromarray(cut(photo, left, top, side))
            if side != target:
                crop = crop.resize((target, target), Image.Resampling.BICUBIC)
            item.lr = np.asarray(crop)
        plans.append(item)
    return plans


def photo_upscale(plans: list[FacePlan], options: PhotoOptions,
                  available: tuple[int, ...]) -> int:
    if options.upscale is not None:
        return options.upscale
    if options.scale is not None:
        return options.scale
    used = [p.scale for p in plans if p.scale is not None]
    return min(used or available or (4,))


def check_output(size: tuple[int, int], upscale: int, limit: int) -> None:
    pixels = size[0] * size[1] * upscale * upscale
    if pixels > limit:
        raise PayloadTooLarge(
            f"the {size[0]}x{size[1]} photo upscaled {upscale}x would have {pixels} pixels, more "
            f"than the limit of {limit}: pass a smaller ?upscale or send a smaller photo")


def find_faces(photo: np.ndarray, detector: FaceDetector, options: PhotoOptions,
               available: tuple[int, ...]) -> Photo:
    """Steps 1-2: detect and plan (CPU work outside the inference pool)."""
    h, w = photo.shape[:2]
    if options.upscale or options.scale:  # known already: refuse before the detector runs
        check_output((w, h), options.upscale or options.scale or 1, options.max_output_pixels)
    faces, up = detector.detect(photo)
    kept = faces[:options.max_faces]
    result = Photo((w, h), up, plan(photo, kept, options.scale, available),
                   len(faces) - len(kept))
    result.upscale = photo_upscale(result.faces, options, available)
    check_output(result.size, result.upscale, options.max_output_pixels)
    return result


def check_draws(runners: dict[int, Runner], options: PhotoOptions) -> None:
    """LookupError, naming the scale, where a model that could serve the photo (options.scale's,
    else any) lacks options.draws: so a request fails before any work, not halfway."""
    for scale, runner in runners.items():
        if options.scale in (None, scale):
            try:
                runner.draws(options.draws, options.temperature)
            except LookupError as exc:
                raise LookupError(f"x{scale}: {exc}") from exc


def superresolve(result: Photo, runners: dict[int, Runner], options: PhotoOptions) -> Photo:
    """Step 3: one batched model call per scale (the inference pool runs this)."""
    for scale, runner in runners.items():
        todo = [p for p in result.faces if p.scale == scale]
        if not todo:
            continue
        x = np.stack([model_input(Image.fromarray(p.lr)) for p in todo])
        if options.samples == 0:
            for p, image in zip(todo, runner.superresolve(x), strict=True):
                p.image = image
            continue
        draws = runner.draws(options.draws, options.temperature)
        result.temperature[scale], result.draws[scale] = draws.temperature, draws.kind
        mu, logvar, features = runner.encode(x)
        for k, p in enumerate(todo):  # one decoder call per face: its mean and its draws
            z = mean_and_draws(mu[k:k + 1], logvar[k:k + 1], options.seed, options.samples,
                               draws)
            images = runner.decode(features[k:k + 1], z, x[k:k + 1])
            p.image, p.samples = images[0], images[1:]
    return result


def feather(side: int) -> np.ndarray:
    """(side, side, 1) weights: 1 inside, a raised cosine to 0 over the outer FEATHER."""
    ramp = max(2.0, side * FEATHER)
    k = np.arange(side) + 0.5
    t = np.clip(np.minimum(k, side - k) / ramp, 0.0, 1.0)
    w = 0.5 - 0.5 * np.cos(np.pi * t)
    return np.outer(w, w)[..., None].astype(np.float32)


def paste(photo: np.ndarray, result: Photo) -> np.ndarray:
    """Step 4: the photo upscaled (bicubic) with every super-resolved face blended in."""
    up = result.upscale
    h, w = photo.shape[:2]
    out = Image.fromarray(photo)
    if up != 1:
        out = out.resize((w * up, h * up), Image.Resampling.BICUBIC)
    canvas = np.array(out)  # uint8: only the face regions are blended in float
    for p in sorted(result.faces, key=lambda q: -q.crop[2]):  # small faces on top
        if p.image is None:
            continue
        left, top, side = (v * up for v in p.crop)
        face = np.asarray(Image.fromarray(p.image).resize((side, side),
                                                          Image.Resampling.BICUBIC), np.float32)
        weight = feather(side)
        y0, y1 = max(top, 0), min(top + side, h * up)
        x0, x1 = max(left, 0), min(left + side, w * up)
        if y0 >= y1 or x0 >= x1:
            continue
        f = face[y0 - top:y1 - top, x0 - left:x1 - left]
        a = weight[y0 - top:y1 - top, x0 - left:x1 - left]
        blend = a * f + (1 - a) * canvas[y0:y1, x0:x1].astype(np.float32)
        canvas[y0:y1, x0:x1] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return canvas


def process(photo: np.ndarray, detector: FaceDetector, runners: dict[int, Runner],
            options: PhotoOptions) -> Photo:
    """Every step, in this thread (the CLI)."""
    result = find_faces(photo, detector, options, tuple(sorted(runners)))
    superresolve(result, runners, options)
    result.image = paste(photo, result)
    return result



def describe(result: Photo, runners: dict[int, Runner], options: PhotoOptions) -> dict[str, Any]:
    """The JSON answer (?format=json, and the CLI's .json file): boxes, scores, scale per face,
    and the crops (LR input, SR result, samples) as base64 PNG."""
    faces = [{
        "box": [round(v, 2) for v in p.face.box], "score": round(p.face.score, 4),
        "crop": list(p.crop), "scale": p.scale, "skipped": p.skipped,
        "input": None if p.lr is None else encode_b64(p.lr),
        "image": None if p.image is None else encode_b64(p.image),
        "samples": [] if p.samples is None else [encode_b64(s) for s in p.samples],
    } for p in result.faces]
    used = sorted({p.scale for p in result.faces if p.scale is not None})
    return {
        "width": result.size[0], "height": result.size[1], "upscale": result.upscale,
        "output_width": result.size[0] * result.upscale,
        "output_height": result.size[1] * result.upscale,
        "detector": "opencv-haar-frontalface-alt2", "detect_upscale": result.detect_upscale,
        "models": {str(s): {"name": runners[s].manifest.name,
                            "version": runners[s].manifest.version} for s in used},
        "samples": options.samples, "seed": options.seed if options.samples else None,
        "temperature": {str(s): t for s, t in result.temperature.items()},
        "draws": {str(s): k for s, k in result.draws.items()},
        "faces_found": len(result.faces) + result.dropped, "faces_dropped": result.dropped,
        "faces": faces,
    }


def describe_json(result: Photo, runners: dict[int, Runner], options: PhotoOptions) -> bytes:
    """`describe` as compact UTF-8 JSON (the bytes /photo?format=json sends)."""
    return json.dumps(describe(result, runners, options), ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")


def decode_photo(data: bytes, max_pixels: int) -> tuple[np.ndarray, list[str]]:
    """Upload bytes to RGB uint8 pixels (the rules of service/imaging.py: EXIF, alpha, ...)."""
    img, adjustments = decode(data, max_pixels)
    return np.asarray(img), adjustments
