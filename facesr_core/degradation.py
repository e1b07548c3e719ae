"""The one degradation and upsampling path, shared by training and serving.

HR faces are 128x128 RGB. LR = Pillow bicubic downscale by s in {4, 8, 16}; the network input x is
the LR image bicubic-upscaled back to 128x128. Pixels are uint8 at every boundary and float32 in
[-1, 1] inside the models.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HR_SIZE = 128
SCALES = (4, 8, 16)


def lr_size(scale: int, hr_size: int = HR_SIZE) -> int:
    """Side of the LR image for a scale factor (32, 16 or 8 px for 128 px faces)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale}")
    return hr_size // scale


def center_square(img: Image.Image, side: int | None = None) -> Image.Image:
    """Centre crop to a square of `side` (default: the shorter edge)."""
    w, h = img.size
    side = min(w, h) if side is None else side
    if side > min(w, h):
        raise ValueError(f"cannot crop {side}x{side} out of {w}x{h}")
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def to_hr(img: Image.Image, crop: int | None = None, hr_size: int = HR_SIZE) -> Image.Image:
    """A face photo to the 128x128 RGB HR target: centre square crop, then bicubic resize."""
    img = center_square(img.convert("RGB"), crop)
    if img.size != (hr_size, hr_size):
        img = img.resize((hr_size, hr_size), Image.Resampling.BICUBIC)
    return img


def degrade(hr: Image.Image, scale: int) -> Image.Image:
    """HR (128x128) to LR: Pillow bicubic downscale by `scale`."""
    side = lr_size(scale, hr.size[0])
    if hr.size[0] != hr.size[1]:
        raise ValueError(f"HR image must be square, got {hr.size}")
    return hr.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)


def bicubic_upsample(lr: Image.Image, hr_size: int = HR_SIZE) -> Image.Image:
    """LR to the network input size with Pillow bicubic (the 'Bicubic' baseline too)."""
    return lr.convert("RGB").resize((hr_size, hr_size), Image.Resampling.BICUBIC)


def to_model_range(img: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 HWC RGB to float32 CHW in [-1, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    return (arr.astype(np.float32).transpose(2, 0, 1) / 127.5) - 1.0


def from_model_range(arr: np.ndarray) -> np.ndarray:
    """float32 CHW (or NCHW) in [-1, 1] to uint8 HWC (or NHWC), rounded and clipped."""
    arr = np.asarray(arr, dtype=np.float32)
    out = np.clip(np.rint((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.moveaxis(out, -3, -1)
