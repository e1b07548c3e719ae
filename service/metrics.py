"""Prometheus metrics, named facesr_<thing>_<unit>, histograms in seconds.

With several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR (`python -m service` does it for you
when FACESR_WORKERS > 1): every worker writes its values there and /metrics merges them.
"""

from __future__ import annotations

import os

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
                                 "Samples (/samples) or frames (/traverse) per request",
                                 ["endpoint"], buckets=SAMPLE_BUCKETS, registry=r)
        self.model_info = Gauge("facesr_model_info", "Loaded models (value 1)",
                                ["name", "scale", "version", "provider", "precision"],
                                registry=r,
                                multiprocess_mode="max")
        self.errors = Counter("facesr_errors_total", "Error responses by kind", ["kind"],
                              registry=r)
        self.ready = Gauge("facesr_ready", "1 once the models are loaded and warmed up",
                           registry=r, multiprocess_mode="livemin")

    def observe_stage(self, endpoint: str, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(endpoint=endpoint, stage=stage).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text, merged over worker processes in multiprocess mode."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

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
