"""The uncertainty map: which pixels of an SR face the model recovered, and which it invented.

The map is the per-pixel spread of n SR samples drawn from the ICAP's Gaussian, in grey levels
(0-255): the standard deviation over the samples, RMS over the three channels. Where every
plausible face agrees the pixel is recovered from the input; where they disagree it is one guess
among many. How well it predicts the real error |SR - HR| is measured in the README
("Uncertainty map"), with the alternatives that were tried (the RMS difference from the served
face, luminance only, the ICAP's sigma).

numpy + Pillow only: training's evaluation and the service compute the same map.
"""

from __future__ import annotations

import base64

import numpy as np
from PIL import Image, ImageDraw, ImageFont

UNIT = "grey levels (0-255), standard deviation over the samples, RMS over RGB channels"
MIN_SAMPLES = 2  # a standard deviation needs two
# Matplotlib's viridis (CC0, by Nathaniel J. Smith, Stefan van der Walt and Eric Firing),
# 17 of its 256 entries, interpolated linearly between them (at most 5 levels off the original).
VIRIDIS_ANCHORS = np.array([
    (68, 1, 84), (72, 24, 106), (71, 45, 123), (66, 64, 134), (59, 82, 139), (51, 99, 141),
    (44, 114, 142), (38, 130, 142), (33, 145, 140), (31, 160, 136), (40, 174, 128),
    (63, 188, 115), (94, 201, 98), (132, 212, 75), (173, 220, 48), (216, 226, 25),
    (253, 231, 37)], dtype=np.float64)
BAR_WIDTH = 10
LABEL_WIDTH = 40
FONT_SIZE = 10


def uncertainty_map(samples: np.ndarray) -> np.ndarray:
    """Per-pixel spread (H,W) float32, in grey levels, of n >= 2 samples uint8 (n,H,W,3): the
    standard deviation over the samples (population, divided by n), RMS over the channels."""
    n = len(samples)
    if n < MIN_SAMPLES:
        raise ValueError(f"the uncertainty map needs at least {MIN_SAMPLES} samples, got {n}")
    # exact in integers: n^2 var = n sum(x^2) - (sum x)^2, summed over the channels
    ints = samples.astype(np.int32)
    totals = ints.sum(axis=0, dtype=np.int64)
    squares = np.einsum("nhwc,nhwc->hw", ints, ints, dtype=np.int64)
    scaled = n * squares - np.einsum("hwc,hwc->hw", totals, totals)
    return np.sqrt(scaled / (n * n * samples.shape[3])).astype(np.float32)


def colour_lut() -> np.ndarray:
    """uint8 (256,3): viridis, dark (certain) to yellow (uncertain)."""
    at = np.linspace(0, 1, 256)
    anchors = np.linspace(0, 1, len(VIRIDIS_ANCHORS))
    return np.stack([np.rint(np.interp(at, anchors, VIRIDIS_ANCHORS[:, c]))
                     for c in range(3)], axis=1).astype(np.uint8)


def colour_scale_max(values: np.ndarray) -> float:
    """The top of the colour scale: the map's 99th percentile rounded up to 1, 2 or 5 x 10^k
    (so the bar reads in round numbers and a few outlier pixels do not darken the rest)."""
    top = max(float(np.percentile(values, 99)), 1e-3)
    exponent = np.floor(np.log10(top))
    for step in (1, 2, 5, 10):
        if step * 10**exponent >= top:
            return float(step * 10**exponent)
    raise AssertionError("unreachable: 10 x 10^floor(log10 t) >= t")


def colourise(values: np.ndarray, vmax: float) -> np.ndarray:
    """uint8 (H,W,3): values from 0 to vmax through the colour map (clipped above)."""
    index = np.clip(np.rint(values / vmax * 255), 0, 255).astype(np.uint8)
    return colour_lut()[index]


def render_png(values: np.ndarray, vmax: float | None = None) -> Image.Image:
    """The colour-mapped map at 1:1 with the SR face, and a labelled scale bar on its right."""
    vmax = colour_scale_max(values) if vmax is None else vmax
    h, w = values.shape
    sheet = Image.new("RGB", (w + 4 + BAR_WIDTH + LABEL_WIDTH, h), "white")
    sheet.paste(Image.fromarray(colourise(values, vmax)), (0, 0))
    ramp = colour_lut()[np.linspace(255, 0, h).astype(np.uint8)]  # top: vmax
    sheet.paste(Image.fromarray(np.repeat(ramp[:, None], BAR_WIDTH, axis=1)), (w + 4, 0))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(FONT_SIZE)
    x = w + 6 + BAR_WIDTH
    for frac, y in ((1.0, 0), (0.5, h // 2 - FONT_SIZE // 2), (0.0, h - FONT_SIZE - 2)):
        draw.text((x, y), f"{vmax * frac:g}", fill=(20, 20, 20), font=font)
    return sheet


def float16_payload(values: np.ndarray, vmax: float | None = None) -> dict:
    """The map as JSON-ready data: base64 of little-endian float16, row-major, with its shape,
    unit, summary and the colour scale the PNG uses."""
    data = values.astype("<f2").tobytes()
    return {"dtype": "float16", "shape": list(values.shape), "unit": UNIT,
            "data": base64.b64encode(data).decode("ascii"),
            "mean": float(values.mean()), "max": float(values.max()),
            "colour_scale_max": colour_scale_max(values) if vmax is None else vmax}


def decode_float16(payload: dict) -> np.ndarray:
    """The map back from float16_payload's dict (for clients and tests)."""
    raw = base64.b64decode(payload["data"])
    return np.frombuffer(raw, "<f2").reshape(payload["shape"]).astype(np.float32)
