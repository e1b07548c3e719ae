"""Overload and hostile clients against real servers (`python -m service` on 127.0.0.1).

- stalled uploads hold no inference slot (the body is read under its own deadline first);
- silent and half-sent connections are closed after FACESR_HEADER_TIMEOUT_S;
- heavy /samples beside light /superresolve: the light ones are served, the heavy ones get
  200 or 503 + Retry-After, nothing runs into the 504 (a 12 s loop, the timeout scaled to the
  machine's speed);
- 4000x4000 PNGs are refused from their header (no decode, no memory);
- a SIGKILLed worker's in-flight requests leave the merged gauge.
Figures (latency, RSS) are measured by bench/overload.py, not here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers import lr_png
from servers import ROOT, running_service

from bench.overload import png_of_zeros, stalled_upload

SHIPPED_X8 = ROOT / "models" / "x8"
SMALL = {"FACESR_MAX_SAMPLES": "4", "FACESR_MAX_STEPS": "4", "FACESR_MAX_BATCH": "4",
         "FACESR_LOG_LEVEL": "warning"}




def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """(whether the server closed the connection within `seconds`, what it sent first)."""
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        pass
    return True, got


def median_latency(client: httpx.Client, image: bytes, times: int = 5,
                   path: str = "/superresolve") -> float:
    took = []
    for _ in range(times):
        start = time.perf_counter()
        r = client.post(path, files={"image": ("f.png", image)})
        assert r.status_code == 200, r.text
        took.append(time.perf_counter() - start)
    return statistics.median(took)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    env = {**SMALL, "FACESR_BODY_TIMEOUT_S": "3", "FACESR_HEADER_TIMEOUT_S": "2"}
    log = tmp_path_factory.mktemp("overload") / "server.log"
    with running_service(tiny_model_dir / "x8", env, log) as server:
        yield server.url


def test_stalled_uploads_hold_no_inference_slot(server, astronaut_hr):
    """32 uploads stalled after their part header (as many as FACESR_MAX_IN_FLIGHT): a real
    request is still served at its normal speed, and each stalled one gets 408 at the body
    deadline."""
    image = lr_png(astronaut_hr)
    with httpx.Client(base_url=server, timeout=30) as client:
        normal = median_latency(client, image)
        stalled = [stalled_upload(server) for _ in range(32)]
        try:
            time.sleep(0.2)
            loaded = median_latency(client, image, times=3)
            assert loaded < normal + 2.0, (normal, loaded)
            closed, answer = closed_within(stalled[0], 10)
        finally:
            for sock in stalled:
                sock.close()
    assert closed and answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"upload_timeout"' in answer


def test_silent_and_half_sent_connections_are_closed(server):
    host, port = server.removeprefix("http://").split(":")
    silent = socket.create_connection((host, int(port)))
    half = socket.create_connection((host, int(port)))
    half.sendall(b"POST /superresolve HTTP/1.1\r\nHost: x\r\n")
    try:
        start = time.monotonic()
        assert closed_within(silent, 6) == (True, b"")
        assert closed_within(half, 6)[0]
        assert time.monotonic() - start < 6
    finally:
        silent.close()
        half.close()


def test_keep_alive_connection_serves_several_requests(server, astronaut_hr):
    """The header timer does not cut a kept-alive connection between quick requests."""
    with httpx.Client(base_url=server, timeout=30) as client:
        for _ in range(3):
            r = client.post("/superresolve", files={"image": ("f.png", lr_png(astronaut_hr))})
            assert r.status_code == 200
            time.sleep(0.5)


def test_two_image_fields_are_refused(server, astronaut_hr):
    image = lr_png(astronaut_hr)
    files = [("image", ("a.png", image, "image/png")), ("image", ("b.png", image, "image/png"))]
    r = httpx.post(f"{server}/superresolve", files=files, timeout=30)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_parameter" and "2 'image' fields" in r.json()["detail"]


def server_rss_mb(url: str) -> float:
    """RSS of the process listening on url's port (Linux: /proc)."""
    port = int(url.rsplit(":", 1)[1])
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":  # LISTEN
            inode = fields[9]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]" for fd in fds):
                status = Path(f"/proc/{pid}/status").read_text()
                return int(status.split("VmRSS:")[1].split()[0]) / 1024
        except OSError:
            continue
    raise AssertionError(f"no process listens on {url}")


def test_huge_images_are_refused_from_the_header(server, astronaut_hr):
    """16 clients sending a 4000x4000 16-bit RGBA PNG (about 125 KB, 16 Mpx: within the pixel
    limit): each gets its 422 without a decode, the server's memory stays put, and a real
    request is served meanwhile."""
    big = png_of_zeros(4000, 4000, 16, 6, 4)
    before = server_rss_mb(server)

    async def run() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            heavy = [client.post("/superresolve?scale=8", files={"image": ("big.png", big)})
                     for _ in range(16)]
            real = client.post("/superresolve", files={"image": ("f.png",
                                                                 lr_png(astronaut_hr))})
            *refused, served = await asyncio.gather(*heavy, real)
            return refused, served

    refused, served = asyncio.run(run())
    assert served.status_code == 200
    for r in refused:
        assert r.status_code == 422 and "4000x4000 face is larger than x8" in r.json()["detail"]
    assert server_rss_mb(server) - before < 100


HEAVY = "/samples?n=256"
HEAVY_ENV = {"FACESR_MAX_SAMPLES": "256", "FACESR_WARMUP": "false", "FACESR_LOG_LEVEL": "warning"}


def heavy_request_seconds(model_dir: Path, image: bytes, log: Path) -> float:
    """How long one HEAVY request takes on this machine now, alone, over HTTP (its 256 PNGs'
    encoding is about half of it): the median of 3, on a server of its own."""
    with running_service(model_dir, HEAVY_ENV, log) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        return median_latency(client, image, times=3, path=HEAVY)


@pytest.mark.slow
def test_heavy_requests_do_not_starve_light_ones(tiny_model_dir, tmp_path, astronaut_hr):
    """4 clients of /samples?n=256 beside 4 of /superresolve for 12 s. The request timeout is
    2.5x the time one heavy request takes alone on this machine now, encoding included: room
    for one under this load, not for a queue of them. At least 95% of /superresolve succeed,
    the heavy ones get 200 or 503 with Retry-After, at least one of them is served, and no
    request runs into the 504.

    (Calibrated on the heavy call alone, measured in-process, the timeout was about 1.5x a
    real heavy request: most heavy requests were refused, and on one CI run all of them.)"""
    image = lr_png(astronaut_hr)
    timeout = max(1.5, 2.5 * heavy_request_seconds(tiny_model_dir / "x8", image,
                                                   tmp_path / "alone.log"))
    env = {**HEAVY_ENV, "FACESR_REQUEST_TIMEOUT_S": f"{timeout:.2f}"}
    with running_service(tiny_model_dir / "x8", env, tmp_path / "server.log") as server:
        url = server.url
        results = asyncio.run(mixed_load(url, image, HEAVY, seconds=12))
    light = [r for path, r in results if path == "/superresolve"]
    heavy = [r for path, r in results if path != "/superresolve"]
    codes = sorted({r.status_code for _, r in results})
    seen = collections.Counter((path, r.status_code) for path, r in results)
    assert 504 not in codes and set(codes) <= {200, 503}, (seen, timeout)
    ok = sum(r.status_code == 200 for r in light)
    # each light client answered at least twice (a light request may wait for one heavy call)
    assert len(light) >= 8 and ok >= 0.95 * len(light), (ok, len(light), timeout)
    assert any(r.status_code == 200 for r in heavy), [r.status_code for r in heavy]
    for r in heavy:
        assert r.status_code == 200 or (r.headers["retry-after"]
                                        and r.json()["error"] == "overloaded"), r.text


async def mixed_load(url: str, image: bytes, heavy: str,
                     seconds: float) -> list[tuple[str, httpx.Response]]:
    """4 heavy and 4 light clients in closed loops; a refused client waits its Retry-After."""
    results: list[tuple[str, httpx.Response]] = []
    end = time.monotonic() + seconds

    async def client_loop(client: httpx.AsyncClient, path: str) -> None:
        while time.monotonic() < end:
            r = await client.post(path, files={"image": ("f.png", image)})
            results.append((path, r))
            if r.status_code == 503:
                await asyncio.sleep(min(float(r.headers.get("retry-after", 1)),
                                        max(end - time.monotonic(), 0)))

    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=16)) as client:
        await asyncio.gather(*[client_loop(client, heavy) for _ in range(4)],
                             *[client_loop(client, "/superresolve") for _ in range(4)])
    return results


@pytest.mark.slow
def test_a_killed_worker_leaves_the_in_flight_gauge(tmp_path, astronaut_hr):
    """Two workers; one is SIGKILLed while it serves /samples?n=64 (shipped x8 model, ~3 s):
    once uvicorn has replaced it, facesr_requests_in_flight is back to 0."""
    prom = tmp_path / "prom"
    env = {"FACESR_MAX_SAMPLES": "64", "FACESR_WARMUP": "false", "FACESR_WORKERS": "2",
           "FACESR_LOG_LEVEL": "warning", "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    image = lr_png(astronaut_hr)
    with running_service(SHIPPED_X8, env, tmp_path / "server.log") as server:
        url = server.url
        thread = threading.Thread(target=lambda: swallow(httpx.post, f"{url}/samples?n=64",
                                                         files={"image": ("f.png", image)},
                                                         timeout=60))
        thread.start()
        assert wait_for_gauge(url, "facesr_requests_in_flight", lambda v: v == 1, 20)
        workers = {int(p.stem.rsplit("_", 1)[1]) for p in prom.glob("gauge_livesum_*.db")}
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        thread.join(60)
        assert wait_for_gauge(url, "facesr_requests_in_flight", lambda v: v == 0, 30)


def swallow(fn, *args, **kw) -> None:
    with contextlib.suppress(httpx.HTTPError):
        fn(*args, **kw)


def wait_for_gauge(url: str, name: str, want, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            text = httpx.get(f"{url}/metrics", timeout=5).text
            value = next(float(line.split()[1]) for line in text.splitlines()
                         if line.startswith(f"{name} "))
            if want(value):
                return True
        except (httpx.HTTPError, StopIteration):
            pass
        time.sleep(0.05)
    return False
