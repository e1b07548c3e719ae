"""The service under load on 127.0.0.1: throughput, latency percentiles, errors, overhead over
the bare pipeline, micro-batching on/off, /samples?n=10 vs one image, and a soak/overload run.

    python -m bench.service load --model-dir /tmp/paper/x8 --pause-training
    python -m bench.service soak --model-dir /tmp/paper/x8 --concurrency 64 --duration 60
    python -m bench.service precision --model-dir models/x8 --pause-training

`load` starts two servers (`python -m service`): micro-batching on (FACESR_MAX_BATCH=16, the
default) and off (FACESR_MAX_BATCH=1). Each client is an asyncio task on one shared
httpx.AsyncClient, sending the same 16 px LR face (the scikit-image astronaut) in a loop; a
client that gets a 503 waits its Retry-After, as a well-behaved client would. In the same run
and process, the bare pipeline (service/ functions called directly, no HTTP: decode, bicubic
resize, the three ONNX graphs, PNG encode) is timed, once per image and once batched.

`soak` drives one server with `--concurrency` clients for `--duration` s and checks: only 200s
or 503s with Retry-After, no request over its client timeout (FACESR_REQUEST_TIMEOUT_S + 5 s),
server RSS growth under 10%; then SIGTERM under load (`--sigterm`) and checks that every request
the server had accepted got its response. Exit status 1 when a check fails.

`precision` starts two servers on the same model folder, FACESR_PRECISION=fp32 and =int8 (the
folder needs int8 graphs, see training/quantize.py), checks in /v1/models that each serves what
it was asked to, and times one client on /superresolve and on /samples?n=10 against each, in
turn, in the same run.

Results are printed as markdown and written as JSON (--json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import (
    ROOT,
    CpuProbe,
    lr_face,
    machine,
    md_table,
    percentiles,
    timeit,
    training_paused,
)
from bench.server import ServiceProcess

BENCH_ENV = {"FACESR_MAX_SAMPLES": "10", "FACESR_MAX_STEPS": "8", "FACESR_LOG_LEVEL": "warning"}

# --- the server ---------------------------------------------------------------------------

def start_server(model_dir: Path, env: dict[str, str], log: Path,
                 spin: bool = False) -> ServiceProcess:
    """`python -m service` of this checkout with BENCH_ENV, `env` and FACESR_ORT_SPIN_WAIT."""
    settings = {**BENCH_ENV, **env, "FACESR_ORT_SPIN_WAIT": str(spin).lower()}
    return ServiceProcess.start(model_dir, settings, log, ROOT)


def served_models(server: ServiceProcess) -> list[dict]:
    """Scale, version, the provider each model really runs on, its precision and warm-up time
    (from /v1/models), and the server's resident memory once ready."""
    import httpx

    info = httpx.get(f"{server.url}/v1/models", timeout=10).json()
    keys = ("scale", "version", "provider", "providers", "precision", "warmup_seconds")
    rss_mib = server.rss() / 2**20
    return [{**{k: m.get(k) for k in keys}, "server_rss_mib": rss_mib} for m in info["models"]]


# --- the load generator ---------------------------------------------------------------------

@dataclass
class Record:
    start: float
    latency: float
    status: int | str  # HTTP status, or the exception name for transport errors/timeouts
    retry_after: str | None = None
    batch: int | None = None
    stages: dict[str, float] = field(default_factory=dict)  # Server-Timing, ms


def server_timing(header: str | None) -> dict[str, float]:
    """'decode;dur=1.2, queue;dur=3.0' -> {'decode': 1.2, 'queue': 3.0} (ms)."""
    out = {}
    for part in (header or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name and dur:
            out[name] = float(dur)
    return out


@dataclass
class LoadResult:
    concurrency: int
    duration: float
    records: list[Record] = field(default_factory=list)

    def summary(self) -> dict:
        ok = [r.latency for r in self.records if r.status == 200]
        statuses: dict[str, int] = {}
        for r in self.records:
            statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
        batches = [r.batch for r in self.records if r.batch]
        stages: dict[str, list[float]] = {}
        for r in self.records:
            for name, ms in r.stages.items():
                stages.setdefault(name, []).append(ms)
        return {
            "concurrency": self.concurrency, "seconds": self.duration,
            "requests": len(self.records), "ok": len(ok),
            "throughput_rps": len(ok) / self.duration,
            **{k: v * 1e3 for k, v in percentiles(ok).items()},  # ms
            "statuses": statuses,
            "errors": len(self.records) - len(ok),
            "503_without_retry_after": sum(1 for r in self.records
                                           if r.status == 503 and not r.retry_after),
            "mean_batch": statistics.mean(batches) if batches else None,
            "max_latency_ms": max((r.latency for r in self.records), default=0) * 1e3,
            "stages_p50_ms": {k: statistics.median(v) for k, v in stages.items()},
        }


async def drive(url: str, path: str, files: dict, concurrency: int, duration: float,
                timeout: float, honour_retry_after: bool = True,
                new_connections: bool = False, stop_event: asyncio.Event | None = None,
                t0: float | None = None) -> LoadResult:
    """`concurrency` clients posting `files` to `path` in a loop for `duration` seconds."""
    import httpx

    result = LoadResult(concurrency, duration)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    t0 = time.perf_counter() if t0 is None else t0  # Record.start is relative to t0
    deadline = time.perf_counter() + duration

    async def one(client) -> None:
        start = time.perf_counter()
        try:
            r = await client.post(path, files=files)
            rec = Record(start - t0, time.perf_counter() - start, r.status_code,
                         r.headers.get("retry-after"),
                         int(r.headers["x-facesr-batch"]) if "x-facesr-batch" in r.headers
                         else None, server_timing(r.headers.get("server-timing")))
        except httpx.HTTPError as exc:  # timeouts, connection errors
            rec = Record(start - t0, time.perf_counter() - start, type(exc).__name__)
        result.records.append(rec)
        if rec.status == 503 and honour_retry_after:
            await asyncio.sleep(min(float(rec.retry_after or 1), deadline - time.perf_counter()))

    async def worker(shared) -> None:
        while time.perf_counter() < deadline and not (stop_event and stop_event.is_set()):
            if new_connections:
                async with httpx.AsyncClient(base_url=url, timeout=timeout) as c:
                    await one(c)
            else:
                await one(shared)

    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as shared:
        await asyncio.gather(*(worker(shared) for _ in range(concurrency)))
    result.duration = time.perf_counter() - (deadline - duration)
    return result


# --- the bare pipeline --------------------------------------------------------------------

def provider_env(provider: str | None, conv_algo_search: str | None = None) -> dict[str, str]:
    """FACESR_* for --provider (cuda is required: no silent CPU fallback) and
    --cudnn-conv-algo-search; none: the service's defaults."""
    env = {"FACESR_CUDNN_CONV_ALGO_SEARCH": conv_algo_search} if conv_algo_search else {}
    if provider:
        env |= {"FACESR_PROVIDERS": provider,
                "FACESR_REQUIRE_GPU": str(provider != "cpu").lower()}
    return env


def bare_pipeline(model_dir: Path, data: bytes, batch: int, n: int, budget_s: float,
                  spin: bool = False, provider_settings: dict[str, str] | None = None) -> dict:
    """The service's own functions without HTTP, asyncio or queues, in this process."""
    from service.api.inference import decode_input, render_samples
    from service.engine import load_models
    from service.imaging import encode
    from service.sampling import sample_set
    from service.settings import Settings

    env = {**BENCH_ENV, **(provider_settings or {})}
    settings = Settings(model_dir=model_dir, ort_spin_wait=spin,
                        **{k.removeprefix("FACESR_").lower(): v for k, v in env.items()})
    runners = load_models(settings)
    scales = tuple(sorted(runners))

    def one() -> bytes:
        lr, x = decode_input(data, None, scales, settings.max_pixels)
        out = runners[lr.scale].superresolve(x[None])
        return encode(out[0], "png")

    def batched() -> list[bytes]:
        items = [decode_input(data, None, scales, settings.max_pixels) for _ in range(batch)]
        out = runners[items[0][0].scale].superresolve(np.stack([x for _, x in items]))
        return [encode(img, "png") for img in out]

    def samples() -> bytes:
        lr, x = decode_input(data, None, scales, settings.max_pixels)
        runner = runners[lr.scale]
        draws = runner.draws()
        result = sample_set(runner, x, 1, n, draws)
        return render_samples(runner, lr, result, None, 1, draws, n, "json")[0]

    def runner_only(rows: int) -> float:
        """Median seconds of the three graphs alone on `rows` inputs (no decode, no PNG)."""
        x = np.zeros((rows, 3, 128, 128), np.float32)
        return statistics.median(timeit(lambda: runners[scales[0]].superresolve(x),
                                        min_reps=5, min_s=budget_s / 4))

    for runner in runners.values():
        runner.warmup()
    graphs_ms = {b: runner_only(b) * 1e3 for b in sorted({1, batch // 2 + 1, batch})}
    t_one = timeit(one, min_reps=20, min_s=budget_s)
    t_batch = timeit(batched, min_reps=3, min_s=budget_s)
    t_samples = timeit(samples, min_reps=5, min_s=budget_s)
    return {"one_ms": percentiles([t * 1e3 for t in t_one]),
            "batch": batch, "batch_images_per_s": batch / statistics.median(t_batch),
            "one_images_per_s": 1 / statistics.median(t_one),
            "samples_n": n, "samples_ms": percentiles([t * 1e3 for t in t_samples]),
            "graphs_ms_by_batch": graphs_ms}


# --- commands -----------------------------------------------------------------------------

def cmd_load(a: argparse.Namespace) -> dict:
    data = lr_face()
    files = {"image": ("lr.png", data, "image/png")}
    env = provider_env(a.provider, a.cudnn_conv_algo_search)
    if a.flip_ensemble:
        env["FACESR_FLIP_ENSEMBLE"] = "true"
    servers = {"on": start_server(a.model_dir, env, a.logs / "batching_on.log", a.ort_spin_wait),
               "off": start_server(a.model_dir, {**env, "FACESR_MAX_BATCH": "1"},
                                   a.logs / "batching_off.log", a.ort_spin_wait)}
    out: dict = {"machine": machine(), "model_dir": str(a.model_dir), "argv": sys.argv[1:],
                 "settings": {**BENCH_ENV, **env}, "ort_spin_wait": a.ort_spin_wait}
    try:
        for s in servers.values():
            s.wait_ready(timeout=300)
        out["models"] = served_models(servers["on"])
        print(f"models: {out['models']}", flush=True)
        with training_paused(a.pause_training) as paused:
            probe = CpuProbe()
            out["bare"] = bare_pipeline(a.model_dir, data, 16, 10, a.budget_s, a.ort_spin_wait,
                                        env)
            out["bare"]["foreign_cpu_pct"] = probe.pct()
            print(f"bare: {out['bare']}", flush=True)
            rows = []
            for c in a.concurrency:
                asyncio.run(drive(servers["on"].url, "/superresolve", files, c, a.warm_s,
                                  a.timeout))
                probe = CpuProbe()
                res = asyncio.run(drive(servers["on"].url, "/superresolve", files, c,
                                        a.duration, a.timeout)).summary()
                res["batching"], res["foreign_cpu_pct"] = "on", probe.pct()
                rows.append(res)
                print(res, flush=True)
            for c in a.batching_off_concurrency:
                asyncio.run(drive(servers["off"].url, "/superresolve", files, c, a.warm_s,
                                  a.timeout))
                probe = CpuProbe()
                res = asyncio.run(drive(servers["off"].url, "/superresolve", files, c,
                                        a.duration, a.timeout)).summary()
                res["batching"], res["foreign_cpu_pct"] = "off", probe.pct()
                rows.append(res)
                print(res, flush=True)
            out["load"] = rows
            probe = CpuProbe()
            sam = asyncio.run(drive(servers["on"].url, "/samples?n=10&seed=1", files, 1,
                                    a.duration, a.timeout)).summary()
            sam["foreign_cpu_pct"] = probe.pct()
            out["samples"] = sam
            print(sam, flush=True)
        out["training_paused"] = paused
    finally:
        for s in servers.values():
            s.stop()
    out.update(derived(out))
    return out


def cmd_precision(a: argparse.Namespace) -> dict:
    import httpx

    files = {"image": ("lr.png", lr_face(), "image/png")}
    servers = {p: start_server(a.model_dir, {"FACESR_PRECISION": p},
                               a.logs / f"precision_{p}.log", a.ort_spin_wait)
               for p in ("fp32", "int8")}
    out: dict = {"machine": machine(), "model_dir": str(a.model_dir), "argv": sys.argv[1:],
                 "settings": BENCH_ENV, "rows": []}
    try:
        for precision, server in servers.items():
            server.wait_ready(timeout=300)
            models = httpx.get(f"{server.url}/v1/models").json()["models"]
            serving = {m["precision"] for m in models}
            if serving != {precision}:
                raise RuntimeError(f"FACESR_PRECISION={precision} serves {serving}")
        with training_paused(a.pause_training) as paused:
            for path in ("/superresolve", "/samples?n=10&seed=1"):
                for precision, server in servers.items():
                    asyncio.run(drive(server.url, path, files, 1, a.warm_s, a.timeout))
                    probe = CpuProbe()
                    res = asyncio.run(drive(server.url, path, files, 1, a.duration,
                                            a.timeout)).summary()
                    res.update(precision=precision, path=path, foreign_cpu_pct=probe.pct())
                    out["rows"].append(res)
                    print(res, flush=True)
        out["training_paused"] = paused
    finally:
        for s in servers.values():
            s.stop()
    return out


def derived(out: dict) -> dict:
    bare = out["bare"]
    by = {(r["batching"], r["concurrency"]): r for r in out["load"]}
    d: dict = {}
    if ("on", 1) in by:
        d["overhead_p50"] = by["on", 1]["p50"] / bare["one_ms"]["p50"]
        d["samples_vs_one_p50"] = out["samples"]["p50"] / by["on", 1]["p50"]
    d["bare_samples_vs_one_p50"] = bare["samples_ms"]["p50"] / bare["one_ms"]["p50"]
    for c in (16, 64):
        if ("on", c) in by:
            d[f"batched_{c}_vs_bare_batched"] = (by["on", c]["throughput_rps"]
                                                 / bare["batch_images_per_s"])
        if ("on", c) in by and ("off", c) in by:
            d[f"batching_gain_{c}"] = (by["on", c]["throughput_rps"]
                                       / by["off", c]["throughput_rps"])
    return d


def cmd_soak(a: argparse.Namespace) -> dict:
    data = lr_face()
    files = {"image": ("lr.png", data, "image/png")}
    env = {"FACESR_REQUEST_TIMEOUT_S": str(a.request_timeout),
           **provider_env(a.provider, a.cudnn_conv_algo_search)}
    server = start_server(a.model_dir, env, a.logs / "soak.log", a.ort_spin_wait)
    client_timeout = a.request_timeout + 5
    out: dict = {"machine": machine(), "model_dir": str(a.model_dir), "argv": sys.argv[1:],
                 "settings": {**BENCH_ENV, **env}, "client_timeout_s": client_timeout}
    try:
        server.wait_ready(timeout=300)
        with training_paused(a.pause_training) as paused:
            asyncio.run(drive(server.url, "/superresolve", files, a.concurrency, a.warm_s,
                              client_timeout))
            rss_ready = server.rss()
            samples: list[tuple[float, int]] = []

            async def soak() -> LoadResult:
                async def sample_rss() -> None:
                    t0 = time.perf_counter()
                    while True:
                        samples.append((time.perf_counter() - t0, server.rss()))
                        await asyncio.sleep(1.0)

                sampler = asyncio.create_task(sample_rss())
                try:
                    return await drive(server.url, "/superresolve", files, a.concurrency,
                                       a.duration, client_timeout)
                finally:
                    sampler.cancel()

            res = asyncio.run(soak())
            summary = res.summary()
            rss = [r for _, r in samples]
            early = [r for t, r in samples if t <= 10] or rss[:1]
            out["soak"] = summary
            out["rss"] = {"after_warm_load_mib": rss_ready / 2**20,
                          "first_10s_max_mib": max(early) / 2**20,
                          "end_mib": rss[-1] / 2**20, "max_mib": max(rss) / 2**20,
                          "growth_from_warm_pct": 100 * (rss[-1] - rss_ready) / rss_ready,
                          "growth_after_10s_pct": 100 * (rss[-1] - max(early)) / max(early)}
            hung = [r for r in res.records if isinstance(r.status, str)
                    or r.latency > client_timeout]
            out["checks"] = {
                "only_200_or_503_with_retry_after": set(summary["statuses"]) <= {"200", "503"}
                and summary["503_without_retry_after"] == 0,
                "no_hung_request": not hung and summary["max_latency_ms"] / 1e3
                < client_timeout,
                "rss_growth_under_10pct": out["rss"]["growth_from_warm_pct"] < 10,
            }
            if a.sigterm:
                out["sigterm"] = asyncio.run(sigterm_under_load(server, files, a.concurrency,
                                                                client_timeout))
                out["checks"]["sigterm_in_flight_completed"] = out["sigterm"]["ok"]
        out["training_paused"] = paused
    finally:
        code = server.stop()
        out["exit_code"] = code
    return out


async def sigterm_under_load(server: ServiceProcess, files: dict, concurrency: int,
                             timeout: float) -> dict:
    """SIGTERM while `concurrency` clients (one new connection per request) keep sending.

    What must hold: the requests the app had admitted at the signal (facesr_requests_in_flight,
    read just before it) all get their 200, the answers are 200 or 503 (overloaded or
    shutting_down, with Retry-After), and the process exits cleanly. Reported apart: new
    connections refused once uvicorn closed its socket (ConnectError), and connections closed
    without an answer (ReadError / RemoteProtocolError): those uvicorn had accepted but whose
    request it had not parsed yet, or that were still in the kernel's accept queue.
    """
    import httpx

    stop = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(drive(server.url, "/superresolve", files, concurrency, 120,
                                     timeout, honour_retry_after=False, new_connections=True,
                                     stop_event=stop, t0=t0))
    await asyncio.sleep(3.0)
    in_flight = None
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as c:
        text = (await c.get("/metrics")).text
        for line in text.splitlines():
            if line.startswith("facesr_requests_in_flight "):
                in_flight = float(line.split()[1])
    t_signal = time.perf_counter() - t0
    server.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    stop.set()
    res = await task
    code = await asyncio.to_thread(server.proc.wait, 60)
    statuses: dict[str, int] = {}
    for r in res.records:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    ok_after = sum(1 for r in res.records
                   if r.status == 200 and r.start + r.latency >= t_signal)
    cut = {k: v for k, v in statuses.items() if k not in ("200", "503", "ConnectError")}
    cut_started_before = [round(t_signal - r.start, 2) for r in res.records
                          if str(r.status) in cut]
    return {"in_flight_at_sigterm": in_flight, "statuses": statuses, "exit_code": code,
            "ok_answered_after_sigterm": ok_after,
            "closed_without_answer": sum(cut.values()),
            "closed_sent_s_before_sigterm": sorted(cut_started_before),
            "shutdown_s": time.perf_counter() - t0 - t_signal,
            "ok": (in_flight is not None and ok_after >= in_flight
                   and set(statuses) <= {"200", "503", "ConnectError", "ReadError",
                                         "RemoteProtocolError"}
                   and code in (0, -signal.SIGTERM))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("load", "soak", "precision"):
        s = sub.add_parser(name)
        s.add_argument("--model-dir", type=Path, default=Path("/tmp/paper/x8"))
        s.add_argument("--pause-training", action="store_true")
        s.add_argument("--warm-s", type=float, default=3.0, help="untimed load before each run")
        s.add_argument("--logs", type=Path, default=Path("/tmp/facesr-bench"))
        s.add_argument("--json", type=Path, default=Path(f"bench/results/{name}.json"))
        s.add_argument("--provider", choices=["cpu", "cuda"],
                       help="FACESR_PROVIDERS for the servers and the bare pipeline (cuda also "
                            "sets FACESR_REQUIRE_GPU=true); default: the service's own (auto)")
        s.add_argument("--ort-spin-wait", action="store_true",
                       help="FACESR_ORT_SPIN_WAIT=true: ONNX Runtime's spin-waiting on")
    load = sub.choices["load"]
    load.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    load.add_argument("--batching-off-concurrency", type=int, nargs="+", default=[16])
    load.add_argument("--duration", type=float, default=15.0)
    load.add_argument("--budget-s", type=float, default=4.0)
    load.add_argument("--timeout", type=float, default=60.0)
    for name in ("load", "soak"):
        sub.choices[name].add_argument(
            "--cudnn-conv-algo-search", choices=["heuristic", "exhaustive", "default"],
            help="FACESR_CUDNN_CONV_ALGO_SEARCH for the servers and the bare pipeline (CUDA "
                 "only); default: the service's")
    load.add_argument("--flip-ensemble", action="store_true",
                      help="FACESR_FLIP_ENSEMBLE=true for the servers and the bare pipeline")
    precision = sub.choices["precision"]
    precision.add_argument("--duration", type=float, default=15.0)
    precision.add_argument("--timeout", type=float, default=60.0)
    soak = sub.choices["soak"]
    soak.add_argument("--concurrency", type=int, default=64)
    soak.add_argument("--duration", type=float, default=60.0)
    soak.add_argument("--request-timeout", type=float, default=30.0)
    soak.add_argument("--sigterm", action="store_true", help="end with SIGTERM under load")
    a = p.parse_args()
    if not ((a.model_dir / "manifest.json").exists() or any(a.model_dir.glob("*/manifest.json"))):
        from bench.model import export_random

        print(f"exporting a paper-size model with random weights to {a.model_dir}")
        export_random(a.model_dir)
    out = {"load": cmd_load, "soak": cmd_soak, "precision": cmd_precision}[a.cmd](a)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("load", "rows")}, indent=2,
                     default=str))
    if a.cmd == "precision":
        print(md_table(["endpoint", "precision", "requests", "p50 ms", "p95 ms", "errors",
                        "foreign CPU %"],
                       [[r["path"], r["precision"], r["requests"], r["p50"], r["p95"],
                         r["errors"], r["foreign_cpu_pct"]] for r in out["rows"]]))
    if a.cmd == "load":
        print(md_table(["batching", "clients", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
                        "statuses", "mean batch", "stage p50s (ms)"],
                       [[r["batching"], r["concurrency"], r["throughput_rps"], r["p50"],
                         r["p95"], r["p99"], r["errors"], r["statuses"], r["mean_batch"],
                         " ".join(f"{k} {v:.1f}" for k, v in r["stages_p50_ms"].items())]
                        for r in out["load"]]))
    print(f"wrote {a.json}")
    if a.cmd == "soak" and not all(out["checks"].values()):
        print(f"FAILED: {out['checks']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
