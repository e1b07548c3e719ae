"""Images in and out: decode and validate uploads, the input-size rules, and the encoders.

Input-size rules. The LR input of scale s is 128/s px (x4: 32, x8: 16, x16: 8); with ?scale, a
face from half that size to 1.25 times it is accepted (x4: 16-40 px, x8: 8-20 px, x16: 4-10 px)
and resized to it. Every adjustment is reported in the X-FaceSR-Adjustment response header,
nothing is guessed silently, and every refusal says what to send instead.

1. not square                     -> centre-cropped to a square of the shorter side  (`fit_square`)
2. no ?scale, side 32/16/8        -> scale 4/8/16 inferred                        (`resolve_scale`)
3. no ?scale, any other side      -> 422 naming the ?scale that takes it, if any  (`resolve_scale`)
4. ?scale, side within its range  -> bicubic resize to 128/scale px                      (`fit_lr`)
5. ?scale, side outside its range -> 422: too small, or larger than the model's input (shrinking
                                     it would lose detail); names the scale that fits, if any
6. a scale with no loaded model   -> 422 listing the loaded scales
The side is known from the header, so rules 2-6 (and the pixel limit and the pixel mode) refuse
an image before any of it is decoded.

Other rules: EXIF orientation is applied (values 2-8; others are ignored and reported); grayscale
becomes RGB; alpha is composited onto white (reported); 16-bit images are scaled to 8 bits;
animated files use their first frame. The reference for /samples must be exactly 128x128.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facesr_core.degradation import HR_SIZE, SCALES, center_square, lr_size
from service.errors import InvalidImage, InvalidParameter, PayloadTooLarge, UnsupportedMedia

INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp",
               "gif": "image/gif"}
LR_SIDES = {lr_size(s): s for s in SCALES}  # 32 -> 4, 16 -> 8, 8 -> 16
# Pixel modes Pillow opens PNG, JPEG, WebP and BMP files in, all of which `to_rgb` converts.
DECODABLE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX",
                             "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "I;16L",
                             "I;16N", "F"})
EXIF_ORIENTATIONS = range(2, 9)  # 1 is upright; 2-8 are the mirrorings and rotations
JPEG_QUALITY = 95
WEBP_QUALITY = 95


@dataclass
class LRInput:
    """A validated LR face: RGB, square, side == 128 / scale."""

    image: Image.Image
    scale: int
    adjustments: list[str] = field(default_factory=list)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes to a Pillow image whose header alone has been read and checked (format, pixel
    count, pixel mode); nothing is decoded yet."""
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
    if img.mode not in DECODABLE_MODES:
        raise UnsupportedMedia(f"pixel mode {img.mode} is not supported: send an RGB, RGBA or "
                               "grayscale image")
    return img


def load_rgb(img: Image.Image) -> tuple[Image.Image, list[str]]:
    """Decode an opened image to RGB (first frame, EXIF orientation applied)."""
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image dimensions exceed the decode limit: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"corrupt or truncated {img.format} image: {exc}") from exc
    adjustments: list[str] = []
    img = apply_exif(img, adjustments)
    return to_rgb(img, adjustments), adjustments


def decode(data: bytes, max_pixels: int) -> tuple[Image.Image, list[str]]:
    """Bytes to an RGB Pillow image (first frame), refusing what must not be decoded."""
    return load_rgb(open_image(data, max_pixels))


def apply_exif(img: Image.Image, adjustments: list[str]) -> Image.Image:
    """Apply the EXIF orientation tag (2-8); report any other value as ignored."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, not fatal
        return img
    if orientation in (None, 1):
        return img
    if orientation not in EXIF_ORIENTATIONS:
        adjustments.append(f"exif-orientation {orientation} ignored (not 1-8)")
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


def lr_range(scale: int) -> tuple[int, int]:
    """The square sides ?scale accepts (resized to 128/scale px): half to 1.25 times it."""
    side = lr_size(scale)
    return math.ceil(side / 2), side * 5 // 4


def scales_for(side: int, available: tuple[int, ...]) -> list[int]:
    """The loaded scales whose range holds `side`, the one whose input it is exactly first."""
    fits = [s for s in available if lr_range(s)[0] <= side <= lr_range(s)[1]]
    return sorted(fits, key=lambda s: (lr_size(s) != side, abs(lr_size(s) - side)))


def what_to_send(side: int, available: tuple[int, ...]) -> str:
    """The advice that ends every size refusal."""
    fits = scales_for(side, available)
    if fits:
        lo, hi = lr_range(fits[0])
        return (f"pass ?scale={fits[0]} (it takes {lo}-{hi} px faces and resizes them to "
                f"{lr_size(fits[0])} px)")
    if not available:
        return "no model is loaded"
    ranges = ", ".join(f"x{s}: {lr_range(s)[0]}-{lr_range(s)[1]} px" for s in available)
    exact = " or ".join(str(lr_size(s)) for s in available)
    return (f"send a square face crop of a size a loaded model takes ({ranges}); at exactly "
            f"{exact} px the scale is inferred")


def resolve_scale(side: int, scale: int | None, available: tuple[int, ...]) -> int:
    """Rules 2-6: the scale for a square face of `side` px, or a 422 that says what to send."""
    if scale is None:
        if side not in LR_SIDES:
            raise InvalidImage(f"cannot infer the scale of a {side}x{side} face: "
                               f"{what_to_send(side, available)}")
        scale = LR_SIDES[side]
    if scale not in available:
        raise InvalidParameter(f"no model for scale {scale}; loaded scales: "
                               f"{', '.join(map(str, available)) or 'none'}")
    lo, hi = lr_range(scale)
    if side < lo:
        raise InvalidImage(f"a {side}x{side} face is too small for x{scale} (it takes {lo}-{hi} "
                           f"px): {what_to_send(side, available)}")
    if side > hi:
        looks_hr = " (this looks like an HR image, not an LR face)" if side >= HR_SIZE else ""
        raise InvalidImage(
            f"a {side}x{side} face is larger than x{scale} takes ({lo}-{hi} px){looks_hr}: "
            f"shrinking it to {lr_size(scale)} px would make the result worse than the image; "
            f"{what_to_send(side, available)}")
    return scale


def fit_lr(img: Image.Image, scale: int) -> tuple[Image.Image, str | None]:
    """Rule 4: with an explicit scale, a square face of another size is resized to 128/scale."""
    side, target = img.size[0], lr_size(scale)
    if side == target:
        return img, None
    resized = img.resize((target, target), Image.Resampling.BICUBIC)
    return resized, f"resize {side}x{side} to {target}x{target} (bicubic) for scale {scale}"


def prepare_lr(data: bytes, scale: int | None, available: tuple[int, ...],
               max_pixels: int) -> LRInput:
    """Upload bytes to a validated LR face, applying rules 1-6 in order. The scale is settled
    from the header, before decoding: an image the rules refuse is never decoded."""
    img = open_image(data, max_pixels)
    scale = resolve_scale(min(img.size), scale, available)  # EXIF turns keep the short side
    img, adjustments = load_rgb(img)
    img, note = fit_square(img)
    adjustments += [note] if note else []
    img, note = fit_lr(img, scale)
    adjustments += [note] if note else []
    return LRInput(img, scale, adjustments)


def prepare_reference(data: bytes, max_pixels: int) -> np.ndarray:
    """The HR reference for best-of-n: exactly 128x128 (checked before decoding), returned as
    uint8 HWC RGB."""
    img = open_image(data, max_pixels)
    if img.size != (HR_SIZE, HR_SIZE):
        raise InvalidImage(f"reference is {img.size[0]}x{img.size[1]}: send the HR face at "
                           f"exactly {HR_SIZE}x{HR_SIZE}")
    rgb, _ = load_rgb(img)
    return np.asarray(rgb, dtype=np.uint8)


def encode(arr: np.ndarray, fmt: str) -> bytes:
    """uint8 HWC RGB to PNG, JPEG or WebP bytes (deterministic for equal pixels)."""
    return encode_pil(Image.fromarray(arr), fmt)


def encode_b64(arr: np.ndarray, fmt: str = "png") -> str:
    """`encode` as base64 text: the images inside JSON bodies."""
    return base64.b64encode(encode(arr, fmt)).decode("ascii")


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
