"""Prometheus metrics, named facesr_<thing>_<unit>, histograms in seconds.

With several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR (`python -m service` does it for you
when FACESR_WORKERS > 1): every worker writes its values there and /metrics merges them. Gauges
use the `live*` modes, and /metrics first drops the gauge files of workers that died without a
clean shutdown (SIGKILL, out of memory): uvicorn starts a new worker, and a dead one's in-flight
requests must not stay counted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
SAMPLE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("decode", "queue", "inference", "encode")
LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """All metrics of one app, in their own registry (so tests can build several apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("facesr_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.request_seconds = Histogram("facesr_request_duration_seconds",
                                         "Whole request latency", ["endpoint"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("facesr_stage_duration_seconds",
                                       "Latency by stage: decode, queue, inference, encode",
                                       ["endpoint", "stage"], buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.in_flight = Gauge("facesr_requests_in_flight", "Inference requests being served",
                               registry=r, multiprocess_mode="livesum")
        self.batch_size = Histogram("facesr_batch_size_requests",
                                    "Requests per micro-batch of /superresolve", ["scale"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.samples = Histogram("facesr_samples_per_request",
                                 "Samples (/samples), frames (/traverse) or face decodes "
                                 "(/photo) per request",
                                 ["endpoint"], buckets=SAMPLE_BUCKETS, registry=r)
        self.model_info = Gauge("facesr_model_info", "Loaded models (value 1)",
                                ["name", "scale", "version", "provider", "precision"],
                                registry=r, multiprocess_mode="livemax")
        self.errors = Counter("facesr_errors_total", "Error responses by kind", ["kind"],
                              registry=r)
        self.ready = Gauge("facesr_ready", "1 once the models are loaded and warmed up",
                           registry=r, multiprocess_mode="livemin")
        self.queued_decodes = Gauge("facesr_queued_work_decodes",
                                    "Admitted inference work not yet done, in decodes (one "
                                    "128x128 output each)", registry=r,
                                    multiprocess_mode="livesum")
        self.queued_seconds = Gauge("facesr_queued_work_seconds",
                                    "Admitted inference work not yet done, in estimated seconds "
                                    "(per worker: divide by the workers for the wait)",
                                    registry=r, multiprocess_mode="livesum")

    def set_admitted(self, requests: int, decodes: float, seconds: float) -> None:
        """The admitted work (service/admission.py calls this after every change)."""
        self.in_flight.set(requests)
        self.queued_decodes.set(decodes)
        self.queued_seconds.set(seconds)

    def observe_stage(self, endpoint: str, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(endpoint=endpoint, stage=stage).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text, merged over worker processes in multiprocess mode."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            mark_dead_workers(multiprocess_dir())
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    @staticmethod
    def process_exit() -> None:
        """Drop this process's live gauges from the multiprocess directory."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


def mark_dead_workers(directory: str) -> list[int]:
    """Drop the live gauges of every process that left files in `directory` and is gone."""
    from prometheus_client import multiprocess

    pids = {int(m.group(1)) for p in Path(directory).iterdir()
            if (m := LIVE_GAUGE_FILE.match(p.name))}
    dead = [pid for pid in sorted(pids) if not process_alive(pid)]
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)
    return dead


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds the pid
        return True
    return True
