"""The labelled PNG contact sheet of /samples?format=png.

Tiles left to right, `cols` per row, each with a caption under it: first the LR input (shown
nearest-neighbour enlarged to 128 px, so its pixels stay visible), then the reference (when one
was sent), then the ICAP mean and the samples in response order. With a reference every result
tile also shows its PSNR, and the best sample gets a green frame and the word "best".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facesr_core.uncertainty import colour_scale_max, colourise, uncertainty_map

GAP = 4
CAPTION_HEIGHT = 26  # two lines of Pillow's built-in font at size 10
BEST_COLOUR = (0, 170, 0)
TEXT_COLOUR = (20, 20, 20)
FONT_SIZE = 10


@dataclass
class Tile:
    image: np.ndarray  # uint8 (H,W,3)
    lines: tuple[str, ...]  # the caption, at most two lines
    best: bool = False


def input_tiles(lr: Image.Image, scale: int, reference: np.ndarray | None,
                size: int) -> list[Tile]:
    """The LR face enlarged to `size` px (nearest neighbour), and the reference if given."""
    side = lr.size[0]
    big = np.asarray(lr.convert("RGB").resize((size, size), Image.Resampling.NEAREST))
    tiles = [Tile(big, (f"LR input {side}x{side}", f"x{scale}, shown enlarged"))]
    if reference is not None:
        tiles.append(Tile(reference, ("reference (HR)", f"{size}x{size}")))
    return tiles


def result_tiles(images: np.ndarray, entries: list[dict]) -> list[Tile]:
    """One tile per /samples entry: 'mean' or 'sample k (draw d)', PSNR when known."""
    tiles = []
    for k, entry in enumerate(entries):
        title = "ICAP mean" if entry["kind"] == "mean" else f"sample {k} (draw {entry['draw']})"
        second = "" if entry["psnr"] is None else f"PSNR {entry['psnr']:.2f} dB"
        if entry["best"]:
            second = f"{second}  best".strip()
        tiles.append(Tile(images[k], (title, second), best=entry["best"]))
    return tiles


def uncertainty_tile(images: np.ndarray) -> Tile:
    """The uncertainty map of the samples images[1:] (images[0] is the mean), colour-mapped."""
    values = uncertainty_map(images[1:])
    vmax = colour_scale_max(values)
    return Tile(colourise(values, vmax), ("uncertainty", f"0 to {vmax:g} grey levels"))


def render(tiles: list[Tile], cols: int = 8) -> Image.Image:
    """The tiles on a white sheet, each captioned; the best one framed in green."""
    h, w = tiles[0].image.shape[:2]
    cols = min(cols, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    cell_w, cell_h = w + GAP, h + CAPTION_HEIGHT + GAP
    sheet = Image.new("RGB", (cols * cell_w + GAP, rows * cell_h + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(FONT_SIZE)
    for i, tile in enumerate(tiles):
        x, y = GAP + (i % cols) * cell_w, GAP + (i // cols) * cell_h
        if tile.best:
            draw.rectangle((x - GAP, y - GAP, x + w + GAP - 1, y + h + GAP - 1), fill=BEST_COLOUR)
        sheet.paste(Image.fromarray(tile.image), (x, y))
        for line_no, text in enumerate(tile.lines[:2]):
            draw.text((x + 1, y + h + 2 + line_no * 12), text, fill=TEXT_COLOUR, font=font)
    return sheet
