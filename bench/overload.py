"""Hostile load against one `python -m service` of a checkout: a real /superresolve alone, with
32 uploads stalled after their part header, and beside 16 clients sending a 4000x4000 16-bit
RGBA PNG (status codes, median latency, server RSS growth).

    python -m bench.overload CHECKOUT MODEL_DIR     # e.g. . models/x8, or an older checkout

CHECKOUT is the repository root whose .venv and service/ run, so a before/after needs no change
to the old code. tests/test_overload.py uses the same hostile clients (png_of_zeros,
stalled_upload) for its pass/fail checks.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import struct
import time
import zlib
from pathlib import Path

import httpx

from bench.common import lr_face
from bench.server import PeakRss, ServiceProcess

SMALL = {"FACESR_MAX_SAMPLES": "4", "FACESR_MAX_STEPS": "4", "FACESR_MAX_BATCH": "4",
         "FACESR_LOG_LEVEL": "warning"}
MiB = 2**20


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of_zeros(width: int, height: int, bit_depth: int, color_type: int,
                 channels: int) -> bytes:
    """A valid PNG of all-zero pixels, compressed as it is built (never held raw in memory)."""
    row = b"\0" * (1 + (width * channels * bit_depth + 7) // 8)  # filter byte + pixels
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def stalled_upload(url: str) -> socket.socket:
    """A connection that sends a request head and one multipart part header, then nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    part = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"f.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n")
    sock.sendall(b"POST /superresolve HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                 b"boundary=b\r\nContent-Length: 100000\r\n\r\n" + part)
    return sock


def timed_posts(url: str, image: bytes, times: int) -> tuple[list[int], float]:
    """(status codes, median ms) of `times` sequential /superresolve requests."""
    codes, took = [], []
    for _ in range(times):
        start_s = time.perf_counter()
        r = httpx.post(f"{url}/superresolve", files={"image": ("f.png", image)}, timeout=60)
        codes.append(r.status_code)
        took.append(time.perf_counter() - start_s)
    return codes, 1000 * statistics.median(took)


async def huge_pngs(server: ServiceProcess,
                    image: bytes) -> tuple[list[int], list[int], float, float]:
    """16 clients sending a 4000x4000 PNG beside 5 real requests: (codes of the huge ones, codes
    of the real ones, median ms of the real ones, peak RSS growth in MB)."""
    big = png_of_zeros(4000, 4000, 16, 6, 4)
    before = server.rss()

    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        async def huge() -> int:
            r = await client.post("/superresolve?scale=8", files={"image": ("b.png", big)})
            return r.status_code

        async def real() -> list[tuple[int, float]]:
            out = []
            for _ in range(5):
                start_s = time.perf_counter()
                r = await client.post("/superresolve", files={"image": ("f.png", image)})
                out.append((r.status_code, time.perf_counter() - start_s))
            return out

        with PeakRss(server.pid, every=0.05) as peak:
            *refused, served = await asyncio.gather(*[huge() for _ in range(16)], real())
    median_ms = 1000 * statistics.median(t for _, t in served)
    return refused, [c for c, _ in served], median_ms, max(0, peak.peak - before) / MiB


def main(root: str, models: str, log: Path = Path("/tmp/facesr-bench/overload.log")) -> None:
    source = Path(root).resolve()
    server = ServiceProcess.start(Path(models), SMALL, log, source,
                                  python=str(source / ".venv" / "bin" / "python"))
    server.wait_ready(timeout=300)
    url, image = server.url, lr_face(8)
    try:
        codes, ms = timed_posts(url, image, 7)
        print(f"alone: {codes}, median {ms:.0f} ms")
        sockets = [stalled_upload(url) for _ in range(32)]
        time.sleep(0.3)
        codes, ms = timed_posts(url, image, 3)
        print(f"with 32 stalled uploads: {codes}, median {ms:.0f} ms")
        for sock in sockets:
            sock.close()
        time.sleep(1)
        refused, served, ms, peak = asyncio.run(huge_pngs(server, image))
        print(f"16 x 4000x4000 PNG: codes {sorted(set(refused))}, RSS peak +{peak:.0f} MB; "
              f"real requests {served}, median {ms:.0f} ms")
    finally:
        server.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkout", help="repository root whose .venv and service/ run")
    p.add_argument("model_dir", help="FACESR_MODEL_DIR, relative to the checkout or absolute")
    p.add_argument("--log", type=Path, default=Path("/tmp/facesr-bench/overload.log"),
                   help="the service's stdout and stderr (default /tmp/facesr-bench/overload.log)")
    a = p.parse_args()
    main(a.checkout, a.model_dir, a.log)
