"""`python -m service` as a real process on 127.0.0.1: started, polled until ready, measured
(pid, RSS) and stopped. The one helper the benchmarks and the HTTP tests share."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(model_dir: Path, port: int, settings: dict[str, str],
                source: Path = ROOT) -> dict[str, str]:
    """The environment of `python -m service` from checkout `source` on 127.0.0.1:port, with
    FACESR_* `settings` over this process's environment."""
    path = os.pathsep.join(p for p in (str(source), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, **settings, "FACESR_MODEL_DIR": str(model_dir),
            "FACESR_HOST": "127.0.0.1", "FACESR_PORT": str(port), "PYTHONPATH": path}


class ServiceProcess:
    """One `python -m service` process; its stdout and stderr go to `log`.

    `env` is its whole environment (service_env builds one), `args` its command-line flags,
    `python` the interpreter (another checkout's .venv gives before/after figures), `module`
    what `-m` runs (`uvicorn` with `--factory service.app:create_app` is the other way in)."""

    def __init__(self, env: dict[str, str], port: int, log: Path, args: tuple[str, ...] = (),
                 python: str = sys.executable, cwd: Path = ROOT, module: str = "service"):
        self.port, self.log = port, log
        self.url = f"http://127.0.0.1:{port}"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([python, "-m", module, *args], env=env, cwd=cwd,
                                         stdout=out, stderr=subprocess.STDOUT)

    @classmethod
    def start(cls, model_dir: Path, settings: dict[str, str], log: Path, source: Path = ROOT,
              python: str = sys.executable) -> ServiceProcess:
        port = free_port()
        return cls(service_env(model_dir, port, settings, source), port, log, python=python,
                   cwd=source)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, ready: Callable[[], bool], timeout: float = 60) -> float:
        """Poll `ready()` (transport errors count as not yet) until true; the seconds it took.
        RuntimeError with the log's tail if the process exits, TimeoutError after `timeout`."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}:\n"
                                   f"{self.log_text()[-3000:]}")
            try:
                if ready():
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the service was not ready after {timeout:.0f} s:\n"
                           f"{self.log_text()[-3000:]}")

    def wait_ready(self, timeout: float = 60, probe: str = "/health/ready") -> float:
        """Seconds until `probe` answers 200."""
        return self.wait_until(
            lambda: httpx.get(self.url + probe, timeout=2).status_code == 200, timeout)

    def rss(self) -> int:
        """Resident memory of the process, bytes."""
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, then the exit code; SIGKILL and None if it outlives `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def start_service(env: dict[str, str], port: int, log: Path,
                  probe: str = "/health/ready") -> tuple[subprocess.Popen, str]:
    """Start the service with `env` on `port`; (process, base URL) once `probe` says 200."""
    server = ServiceProcess(env, port, log)
    try:
        server.wait_ready(probe=probe)
    except Exception:
        server.stop()
        raise
    return server.proc, server.url


@contextmanager
def running_service(model_dir: Path, settings: dict[str, str],
                    log: Path) -> Iterator[ServiceProcess]:
    """`python -m service` with FACESR_* `settings`, ready; on exit, checks that SIGTERM ends
    it cleanly."""
    server = ServiceProcess.start(model_dir, settings, log)
    try:
        server.wait_ready()
        yield server
    finally:
        code = server.stop(30)
        assert code in (0, -signal.SIGTERM), server.log_text()


class PeakRss:
    """The highest RSS of a process while the block runs, sampled every `every` s."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        import psutil

        self.proc, self.every, self.peak = psutil.Process(pid), every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
