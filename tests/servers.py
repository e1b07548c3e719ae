"""Starting `python -m service` as a real process for HTTP tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(env: dict, port: int, log: Path,
                  probe: str = "/health/ready") -> tuple[subprocess.Popen, str]:
    """Start the service with `env`; return (process, base URL) once `probe` says 200."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}{probe}", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def service_env(model_dir: Path, port: int, settings: dict[str, str]) -> dict[str, str]:
    """The environment of `python -m service` on 127.0.0.1:port with FACESR_* `settings`."""
    return {**os.environ, **settings, "FACESR_MODEL_DIR": str(model_dir),
            "FACESR_HOST": "127.0.0.1", "FACESR_PORT": str(port), "PYTHONPATH": str(ROOT)}


@contextmanager
def running_service(model_dir: Path, settings: dict[str, str], log: Path) -> Iterator[str]:
    """`python -m service` on 127.0.0.1 with FACESR_* `settings`; yields its base URL once ready,
    and checks that SIGTERM ends it cleanly."""
    port = free_port()
    proc, url = start_service(service_env(model_dir, port, settings), port, log)
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM), log.read_text()
