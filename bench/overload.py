"""Hostile load against one `python -m service` of a checkout: a real /superresolve alone, with
32 uploads stalled after their part header, and beside 16 clients sending a 4000x4000 16-bit
RGBA PNG (status codes, median latency, server RSS growth).

    python bench/overload.py CHECKOUT MODEL_DIR     # e.g. . models/x8, or an older checkout

CHECKOUT is the repository root whose .venv and service/ run, so a before/after needs no change
to the old code; the hostile clients come from tests/test_overload.py.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import free_port  # noqa: E402
from test_overload import png_of_zeros, stalled_upload  # noqa: E402

SMALL = {"FACESR_MAX_SAMPLES": "4", "FACESR_MAX_STEPS": "4", "FACESR_MAX_BATCH": "4",
         "FACESR_LOG_LEVEL": "warning"}


def start(root: str, models: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, **SMALL, "FACESR_MODEL_DIR": models, "FACESR_HOST": "127.0.0.1",
           "FACESR_PORT": str(port), "PYTHONPATH": root}
    proc = subprocess.Popen([f"{root}/.venv/bin/python", "-m", "service"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def lr_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 150)).save(buf, "PNG")
    return buf.getvalue()


def timed_posts(url: str, image: bytes, times: int) -> tuple[list[int], float]:
    """(status codes, median ms) of `times` sequential /superresolve requests."""
    codes, took = [], []
    for _ in range(times):
        start_s = time.perf_counter()
        r = httpx.post(f"{url}/superresolve", files={"image": ("f.png", image)}, timeout=60)
        codes.append(r.status_code)
        took.append(time.perf_counter() - start_s)
    return codes, 1000 * statistics.median(took)


async def huge_pngs(url: str, pid: int, image: bytes) -> tuple[list[int], list[int], float, float]:
    """16 clients sending a 4000x4000 PNG beside 5 real requests: (codes of the huge ones, codes
    of the real ones, median ms of the real ones, peak RSS growth in MB)."""
    big = png_of_zeros(4000, 4000, 16, 6, 4)
    before, peak = rss_mb(pid), 0.0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mb(pid) - before)
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
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

        watcher = asyncio.create_task(watch())
        *refused, served = await asyncio.gather(*[huge() for _ in range(16)], real())
        watcher.cancel()
    median_ms = 1000 * statistics.median(t for _, t in served)
    return refused, [c for c, _ in served], median_ms, peak


def main(root: str, models: str) -> None:
    proc, url = start(root, models)
    image = lr_png()
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
        refused, served, ms, peak = asyncio.run(huge_pngs(url, proc.pid, image))
        print(f"16 x 4000x4000 PNG: codes {sorted(set(refused))}, RSS peak +{peak:.0f} MB; "
              f"real requests {served}, median {ms:.0f} ms")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
