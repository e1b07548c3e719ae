"""The HTTP tests' way to start `python -m service`: bench/server.py, the one helper that
benchmarks and tests share."""

from bench.server import (  # noqa: F401 - re-exported for the tests
    ROOT,
    ServiceProcess,
    free_port,
    running_service,
    service_env,
    start_service,
)
