"""The default service as a new user starts it: time to /health/ready, memory (RSS), latency,
and how fast SIGTERM stops it at each stage.

    python -m bench.startup --pause-training
    python -m bench.startup --pause-training --source /path/to/other/checkout   # before/after

It runs `python -m service` with no FACESR_* setting but the bind address (so: the shipped
models/ x4, x8 and x16, MAX_SAMPLES=64, warm-up on) and measures:
- seconds from process start to the first 200 of /health/ready, and the warm-up log lines;
- RSS (psutil) once ready, after 20 /superresolve and 5 /samples?n=10, after /samples?n=64 on
  x8, and after n=64 on all three scales; the peak RSS during the n=64 requests (sampled every
  20 ms);
- p50 latency of /superresolve (20 requests) and /samples?n=10 (5 requests), one client;
- seconds from SIGTERM to exit: while the models load, during warm-up, and idle once ready;
- `engine`: in this process, the service's Runner on models/x8 with the CPU memory arena on or
  off and whole or chunked calls, interleaved rounds: ms for one image, n = 10 and n = 64, on
  the fp32 graphs unless `--precision` says otherwise.
Results are printed and written as JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import sys
import time
from pathlib import Path

from bench.common import ROOT, CpuProbe, lr_face, machine, training_paused
from bench.server import PeakRss, ServiceProcess

MiB = 2**20


def start_default(source: Path, log: Path) -> ServiceProcess:
    """The service of checkout `source` with no FACESR_* setting but the bind address."""
    return ServiceProcess.start(source / "models", {}, log, source)


def post(url: str, path: str, files: dict) -> float:
    import httpx

    start = time.perf_counter()
    r = httpx.post(url + path, files=files, timeout=300)
    r.raise_for_status()
    return time.perf_counter() - start


def files_for(scale: int) -> dict:
    return {"image": ("lr.png", lr_face(scale), "image/png")}


def time_to_exit(server: ServiceProcess, timeout: float = 120) -> float:
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.stop(timeout)
    if code is None:
        return float("inf")
    return time.monotonic() - start


def wait_for_log(server: ServiceProcess, pattern: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, server.log_text()):
            return True
        time.sleep(0.02)
    return False


def serve_and_measure(source: Path, logs: Path) -> dict:
    server = start_default(source, logs / "default.log")
    out: dict = {}
    try:
        probe = CpuProbe()
        ready_s = server.wait_ready(timeout=900)
        out["ready_s"] = ready_s
        out["foreign_cpu_pct_startup"] = probe.pct()
        log = server.log_text()
        out["warmup_log_lines"] = [line.split("facesr: ", 1)[-1] for line in log.splitlines()
                                   if "warming up" in line or "warmed up" in line]
        time.sleep(1.0)
        out["rss_ready_mib"] = server.rss() / MiB
        probe = CpuProbe()
        one = [post(server.url, "/superresolve", files_for(8)) for _ in range(21)][1:]
        ten = [post(server.url, "/samples?n=10&seed=1", files_for(8)) for _ in range(6)][1:]
        out["superresolve_p50_ms"] = 1e3 * statistics.median(one)
        out["samples10_p50_ms"] = 1e3 * statistics.median(ten)
        out["foreign_cpu_pct_latency"] = probe.pct()
        out["rss_after_latency_mib"] = server.rss() / MiB
        with PeakRss(server.pid) as peak:
            out["samples64_x8_s"] = post(server.url, "/samples?n=64&seed=1", files_for(8))
        out["rss_after_n64_x8_mib"] = server.rss() / MiB
        out["peak_n64_x8_mib"] = peak.peak / MiB
        with PeakRss(server.pid) as peak:
            for scale in (4, 16):
                post(server.url, "/samples?n=64&seed=1", files_for(scale))
        out["rss_after_n64_all_scales_mib"] = server.rss() / MiB
        out["peak_n64_all_scales_mib"] = max(peak.peak / MiB, out["peak_n64_x8_mib"])
        out["sigterm_idle_s"] = time_to_exit(server)
    finally:
        server.stop()
    return out


def sigterm_during(source: Path, logs: Path, stage: str) -> dict:
    """SIGTERM while the models load (0.5 s after the app starts) or during warm-up (0.2 s
    after the first 'warming up' line)."""
    server = start_default(source, logs / f"sigterm_{stage}.log")
    try:
        if stage == "loading":
            found = wait_for_log(server, r"Waiting for application startup", 120)
            time.sleep(0.5)
        else:
            found = wait_for_log(server, r"warming up|warm", 600)
            time.sleep(0.2)
        signalled = time.monotonic() - server.started
        exit_s = time_to_exit(server)
        return {"stage": stage, "log_line_seen": found, "signal_at_s": signalled,
                "exit_s": exit_s, "exit_code": server.proc.returncode}
    finally:
        server.stop()


ENGINE_VARIANTS = {  # (CPU memory arena, rows per call): the service's choice is the last
    "arena on, whole calls (before)": (True, None),
    "arena off, whole calls": (False, None),
    "arena off, chunks of 8 (service)": (False, 8),
}


def engine_variant(model_dir: Path, arena: bool, chunk: int | None, precision: str):
    """The service's Runner for one model with the arena and chunking of a variant."""
    from service import engine
    from service.settings import Settings

    original = engine.session_options

    def options(settings: Settings):
        so = original(settings)
        so.enable_cpu_mem_arena = arena
        return so

    engine.session_options = options
    try:
        settings = Settings(model_dir=model_dir, precision=precision)
        runner = next(iter(engine.load_models(settings).values()))
    finally:
        engine.session_options = original
    runner.max_rows = chunk
    runner.warmup()
    return runner


def engine_ab(model_dir: Path, rounds: int, precision: str = "fp32") -> dict:
    """ms per call of each variant, rounds interleaved (so load on the machine hits all alike):
    one image (ICAP + encoder + decoder), /samples' work for n = 10 and for n = 64."""
    from service.engine import model_input
    from service.imaging import prepare_lr
    from service.sampling import sample_set

    lr = prepare_lr(lr_face(8), None, (8,), 10**6)
    x = model_input(lr.image)
    runners = {name: engine_variant(model_dir, *v, precision)
               for name, v in ENGINE_VARIANTS.items()}
    times: dict[str, dict[str, list[float]]] = {n: {"one": [], "n10": [], "n64": []}
                                                for n in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            for _ in range(5):
                t = time.perf_counter()
                runner.superresolve(x[None])
                times[name]["one"].append(time.perf_counter() - t)
            for key, n in (("n10", 10), ("n64", 64)):
                t = time.perf_counter()
                sample_set(runner, x, 1, n, runner.draws())
                times[name][key].append(time.perf_counter() - t)
    return {name: {k: 1e3 * statistics.median(v) for k, v in t.items()}
            for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=ROOT,
                   help="checkout whose service and models/ run (default: this one)")
    p.add_argument("--sections", nargs="+", default=["serve", "sigterm", "engine"],
                   choices=("serve", "sigterm", "engine"),
                   help="what to measure: serve (ready time, RSS, latency), sigterm (exit "
                        "time), engine (Runner A/B); see above (default all three)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of `engine`")
    p.add_argument("--precision", choices=("fp32", "int8", "auto"), default="fp32",
                   help="FACESR_PRECISION of the `engine` Runners (default fp32: auto would pick "
                        "x8's int8 graphs)")
    p.add_argument("--pause-training", action="store_true",
                   help="SIGSTOP a background facesr-train for the whole run (at most 900 s; "
                        "bench/common.py)")
    p.add_argument("--logs", type=Path, default=Path("/tmp/facesr-bench/startup"),
                   help="folder for the started services' stdout and stderr "
                        "(default /tmp/facesr-bench/startup)")
    p.add_argument("--json", type=Path, default=Path("bench/results/startup.json"),
                   help="write the results here (default bench/results/startup.json)")
    a = p.parse_args()
    out: dict = {"machine": machine(), "source": str(a.source), "argv": sys.argv[1:]}
    with training_paused(a.pause_training, max_s=900) as paused:
        if "serve" in a.sections:
            out["default"] = serve_and_measure(a.source, a.logs)
            print(json.dumps(out["default"], indent=2), flush=True)
        if "sigterm" in a.sections:
            out["sigterm"] = [sigterm_during(a.source, a.logs, s) for s in ("loading", "warmup")]
            print(json.dumps(out["sigterm"], indent=2), flush=True)
        if "engine" in a.sections:
            probe = CpuProbe()
            out["engine_ms"] = engine_ab(a.source / "models" / "x8", a.rounds, a.precision)
            out["engine_precision"] = a.precision
            out["foreign_cpu_pct_engine"] = probe.pct()
            print(json.dumps(out["engine_ms"], indent=2), flush=True)
    out["training_paused"] = paused
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
