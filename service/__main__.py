"""`python -m service` / `facesr-serve`: run uvicorn with the FACESR_* settings."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

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


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    if argv or sys.argv[1:]:
        print("facesr-serve takes no arguments; configure it with FACESR_* variables "
              "(see the README)", file=sys.stderr)
        return 2
    multiprocess_metrics_dir(settings.workers)
    import uvicorn

    uvicorn.run(
        "service.app:create_app", factory=True, host=settings.host, port=settings.port,
        workers=settings.workers, log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
