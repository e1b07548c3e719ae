"""Hand-made image bytes for the tests."""

from __future__ import annotations

import struct
import zlib

from bench.overload import png_chunk, png_of_zeros  # noqa: F401 - the tests' hand-made PNGs


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is one tiny row."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 7)) + png_chunk(b"IEND", b""))
