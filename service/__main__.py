"""`python -m service` / `facesr-serve`: run uvicorn with the FACESR_* settings or their flags
(`facesr-serve --help`)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

from service.cli import settings_from_command_line
from service.settings import Settings


def multiprocess_metrics_dir(workers: int) -> str | None:
    """With several workers, a fresh PROMETHEUS_MULTIPROC_DIR (created if unset, emptied)."""
    if workers < 2:
        return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="facesr-prom-")
    shutil.rmtree(path, ignore_errors=True)  # stale files from an earlier run would be merged
    os.makedirs(path, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path  # before any worker imports prometheus_client
    return path


def providers_can_be_met(settings: Settings) -> bool:
    """Refuse FACESR_REQUIRE_GPU on a build without a GPU provider before uvicorn starts, so the
    refusal is one line (from inside the app, uvicorn would add a traceback). A GPU provider that
    is present but falls back to the CPU is only seen when the sessions exist, in the app."""
    import onnxruntime as ort

    from service.app import configure_logging
    from service.engine import EngineError, requested_providers

    configure_logging(settings.log_level)
    try:
        requested_providers(settings, ort.get_available_providers())
    except EngineError as exc:
        logging.getLogger("facesr").error("cannot start: %s", exc)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    settings = settings_from_command_line(argv)  # flags and FACESR_* variables; --help
    if not providers_can_be_met(settings):
        return 3
    multiprocess_metrics_dir(settings.workers)
    from service.server import serve

    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
