"""The README's whole-photo figure (docs/photo.png), from a scene composited at run time.

Faces: scikit-image's astronaut photo (public domain), mirrored and brightened to vary it, at
12-40 px in the photo; nothing else is used. Top: the photo with the detected boxes (green:
super-resolved, with the scale; orange: left bicubic); middle row: two faces of the photo
upscaled x4 by bicubic, by the shipped models through /photo's pipeline, and the original,
with the pasted square's outline on the bicubic panel, so the seam region can be inspected.

    python scripts/photo_figure.py [--out docs/photo.png] [--model-dir models]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.scene import compose  # noqa: E402
from facesr_core.degradation import to_hr  # noqa: E402
from service.engine import load_models  # noqa: E402
from service.faces import FaceDetector  # noqa: E402
from service.photo import PhotoOptions, process  # noqa: E402
from service.settings import Settings  # noqa: E402

FACTOR = 4
PANEL = 240  # side of each detail panel on screen (nearest-neighbour enlargement)


def astronaut_faces(count: int) -> list[np.ndarray]:
    from skimage import data

    face = to_hr(Image.fromarray(data.astronaut()[25:205, 150:330]))
    out = []
    for k in range(count):
        img = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if k % 2 else face
        out.append(np.asarray(ImageEnhance.Brightness(img).enhance(0.8 + 0.08 * (k % 5))))
    return out


def labelled(img: Image.Image, text: str) -> Image.Image:
    canvas = Image.new("RGB", (img.width, img.height + 16), "white")
    canvas.paste(img, (0, 16))
    ImageDraw.Draw(canvas).text((3, 2), text, fill="black")
    return canvas


def row(images: list[Image.Image], gap: int = 6) -> Image.Image:
    width = sum(i.width for i in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (width, max(i.height for i in images)), "white")
    x = 0
    for img in images:
        out.paste(img, (x, 0))
        x += img.width + gap
    return out


def column(images: list[Image.Image], gap: int = 8) -> Image.Image:
    height = sum(i.height for i in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (max(i.width for i in images), height), "white")
    y = 0
    for img in images:
        out.paste(img, (0, y))
        y += img.height + gap
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "photo.png")
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models")
    args = ap.parse_args()
    widths = list(np.geomspace(12, 40, 10))
    scene = compose(astronaut_faces(len(widths)), widths, factor=FACTOR, seed=3)
    runners = load_models(Settings(model_dir=args.model_dir))
    result = process(scene.photo, FaceDetector(), runners, PhotoOptions(upscale=FACTOR))
    h, w = scene.photo.shape[:2]
    bicubic = Image.fromarray(scene.photo).resize((w * FACTOR, h * FACTOR),
                                                  Image.Resampling.BICUBIC)
    boxes = Image.fromarray(scene.photo).resize((w * 2, h * 2), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(boxes)
    for p in result.faces:
        colour = "lime" if p.scale else "orange"
        draw.rectangle([v * 2 for v in p.face.box], outline=colour)
        draw.text((p.face.box[0] * 2, p.face.box[3] * 2 + 1),
                  f"x{p.scale}" if p.scale else "bicubic", fill=colour)
    panels = [labelled(boxes, f"the photo ({w}x{h}, shown 2x): detected faces")]
    done = sorted((p for p in result.faces if p.scale), key=lambda p: p.crop[2])
    for p in (done[0], done[-1]):
        left, top, side = (v * FACTOR for v in p.crop)
        pad = side // 3
        box = (left - pad, top - pad, left + side + pad, top + side + pad)
        zoom = PANEL / (box[2] - box[0])

        def panel(img: Image.Image, text: str, outline: bool = False, box: tuple = box,
                  zoom: float = zoom, pad: int = pad, side: int = side) -> Image.Image:
            out = img.crop(box).resize((PANEL, PANEL), Image.Resampling.NEAREST)
            if outline:
                ImageDraw.Draw(out).rectangle(
                    [pad * zoom, pad * zoom, (pad + side) * zoom, (pad + side) * zoom],
                    outline="yellow")
            return labelled(out, text)

        width = p.face.width
        panels.append(row([
            panel(bicubic, f"bicubic x{FACTOR} ({width:.0f} px face)", outline=True),
            panel(Image.fromarray(result.image), f"/photo (x{p.scale} model)"),
            panel(Image.fromarray(scene.original), "original")]))
    column(panels).convert("RGB").quantize(256).save(args.out, optimize=True)  # small clones
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
