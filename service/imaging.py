"""Images in and out: decode and validate uploads, the input-size rules, and the encoders.

Input-size rules (each one a small function below; every adjustment is reported in the
X-FaceSR-Adjustment response header, nothing is guessed silently):

1. not square                  -> centre-cropped to a square of the shorter side  (`fit_square`)
2. side >= 128                 -> 422: send the LR face, not an HR image           (`resolve_scale`)
3. no ?scale, side 32/16/8     -> scale 4/8/16 inferred                            (`resolve_scale`)
4. no ?scale, any other side   -> 422: send 8, 16 or 32 px or pass ?scale          (`resolve_scale`)
5. ?scale and side != 128/scale -> bicubic resize to the LR size 128/scale          (`fit_lr`)

Other rules: EXIF orientation is applied; grayscale becomes RGB; alpha is composited onto
white (reported); 16-bit images are scaled to 8 bits; animated files use their first frame.
The reference for /samples must be exactly 128x128 (after EXIF orientation).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facesr_core.degradation import HR_SIZE, SCALES, center_square, lr_size
from service.errors import InvalidImage, InvalidParameter, PayloadTooLarge, UnsupportedMedia

INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp",
               "gif": "image/gif"}
LR_SIDES = {lr_size(s): s for s in SCALES}  # 32 -> 4, 16 -> 8, 8 -> 16
JPEG_QUALITY = 95
WEBP_QUALITY = 95


@dataclass
class LRInput:
    """A validated LR face: RGB, square, side == 128 / scale."""

    image: Image.Image
    scale: int
    adjustments: list[str] = field(default_factory=list)


def decode(data: bytes, max_pixels: int) -> tuple[Image.Image, list[str]]:
    """Bytes to an RGB Pillow image (first frame), refusing what must not be decoded."""
    if not data:
        raise InvalidImage("the uploaded file is empty")
    try:
        img = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image dimensions exceed the decode limit: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedMedia("not a PNG, JPEG, WebP or BMP image (unrecognised or "
                               "unsupported format)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"corrupt or truncated image header: {exc}") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image is {width}x{height} = {width * height} pixels, more than "
                              f"the limit of {max_pixels}")
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image dimensions exceed the decode limit: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"corrupt or truncated {img.format} image: {exc}") from exc
    adjustments: list[str] = []
    img = apply_exif(img, adjustments)
    return to_rgb(img, adjustments), adjustments


def apply_exif(img: Image.Image, adjustments: list[str]) -> Image.Image:
    """Apply the EXIF orientation tag (if any, and not 1)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, not fatal
        return img
    if orientation in (None, 1):
        return img
    rotated = ImageOps.exif_transpose(img)
    adjustments.append(f"exif-orientation {orientation} applied")
    return rotated if rotated is not None else img


def to_rgb(img: Image.Image, adjustments: list[str]) -> Image.Image:
    """Any decoded mode to 8-bit RGB: gray replicated, alpha on white, 16-bit scaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if arr.max(initial=0) > 255 else 1.0
        gray = np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            adjustments.append("alpha composited onto white")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def fit_square(img: Image.Image) -> tuple[Image.Image, str | None]:
    """Rule 1: a non-square image is centre-cropped to a square of its shorter side."""
    w, h = img.size
    if w == h:
        return img, None
    side = min(w, h)
    return center_square(img, side), f"center-crop {w}x{h} to {side}x{side}"


def resolve_scale(side: int, scale: int | None, available: tuple[int, ...]) -> int:
    """Rules 2-4: the scale to use for a square image of `side` px, or a 422 saying what to send."""
    if side >= HR_SIZE:
        raise InvalidImage(
            f"image is {side}x{side}: this looks like an HR face, not an LR one. Send the LR "
            "face (8, 16 or 32 px square) or pass ?scale and an image smaller than 128 px")
    if scale is None:
        if side not in LR_SIDES:
            raise InvalidImage(
                f"cannot infer the scale from a {side}x{side} image: send an 8, 16 or 32 px "
                "square LR face, or pass ?scale=4|8|16 to have it resized to 128/scale px")
        scale = LR_SIDES[side]
    if scale not in available:
        raise InvalidParameter(f"no model for scale {scale}; loaded scales: "
                               f"{', '.join(map(str, available)) or 'none'}")
    return scale


def fit_lr(img: Image.Image, scale: int) -> tuple[Image.Image, str | None]:
    """Rule 5: with an explicit scale, a square image of another size is resized to 128/scale."""
    side, target = img.size[0], lr_size(scale)
    if side == target:
        return img, None
    resized = img.resize((target, target), Image.Resampling.BICUBIC)
    return resized, f"resize {side}x{side} to {target}x{target} (bicubic) for scale {scale}"


def prepare_lr(data: bytes, scale: int | None, available: tuple[int, ...],
               max_pixels: int) -> LRInput:
    """Upload bytes to a validated LR face, applying rules 1-5 in order."""
    img, adjustments = decode(data, max_pixels)
    img, note = fit_square(img)
    adjustments += [note] if note else []
    scale = resolve_scale(img.size[0], scale, available)
    img, note = fit_lr(img, scale)
    adjustments += [note] if note else []
    return LRInput(img, scale, adjustments)


def prepare_reference(data: bytes, max_pixels: int) -> np.ndarray:
    """The HR reference for best-of-n: exactly 128x128, returned as uint8 HWC RGB."""
    img, _ = decode(data, max_pixels)
    if img.size != (HR_SIZE, HR_SIZE):
        raise InvalidImage(f"reference is {img.size[0]}x{img.size[1]}: send the HR face at "
                           f"exactly {HR_SIZE}x{HR_SIZE}")
    return np.asarray(img, dtype=np.uint8)


def encode(arr: np.ndarray, fmt: str) -> bytes:
    """uint8 HWC RGB to PNG, JPEG or WebP bytes (deterministic for equal pixels)."""
    return encode_pil(Image.fromarray(arr), fmt)


def encode_pil(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=6)
    elif fmt == "jpeg":
        img.save(buf, "JPEG", quality=JPEG_QUALITY)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=WEBP_QUALITY, method=4)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return buf.getvalue()


def strip(frames: np.ndarray) -> Image.Image:
    """Frames (N,H,W,3) side by side, no gaps."""
    return Image.fromarray(np.concatenate(list(frames), axis=1))


def animation(frames: np.ndarray, fmt: str, duration_ms: int) -> bytes:
    """An endlessly looping GIF or lossless WebP animation of the frames."""
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    if fmt == "gif":
        images[0].save(buf, "GIF", save_all=True, append_images=images[1:],
                       duration=duration_ms, loop=0, optimize=False)
    elif fmt == "webp":
        images[0].save(buf, "WEBP", save_all=True, append_images=images[1:],
                       duration=duration_ms, loop=0, lossless=True)
    else:
        raise ValueError(f"unknown animation format {fmt!r}")
    return buf.getvalue()
