"""Faults: a missing or corrupt model, CUDA asked for where there is none, an inference that
fails or runs past its deadline, SIGTERM with work queued or under overload.

What the service does with a bad model (missing, corrupt, inconsistent): it stays up but not
ready, logging one `not ready: <cause>` line; /health/ready answers 503 with the cause, so an
orchestrator keeps it out of rotation. Provider settings that cannot be met (FACESR_REQUIRE_GPU
on a build without a GPU provider) stop it at once: exit code 3, one `cannot start` line.

Also covered elsewhere: tests/test_engine.py (provider fallback detection, a corrupt model
refused by the loader), tests/test_overload.py (slow clients, overload, a killed worker).
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import (
    assert_error,
    gate_decoder,
    lr_png,
    metric,
    model_copy_with_int8_loss,
    pixels,
    png,
    settings_for,
    upload,
    wait_ready,
)
from PIL import Image
from servers import free_port, service_env, start_service

from service.app import create_app
from service.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def server_env(model_dir: Path, port: int, **extra: str) -> dict[str, str]:
    limits = {"FACESR_MAX_SAMPLES": "64", "FACESR_MAX_STEPS": "4", "FACESR_MAX_BATCH": "2"}
    return service_env(model_dir, port, {**limits, **extra})


def start_and_fail(model_dir: Path, **extra: str) -> tuple[int, str, int]:
    """Run `python -m service` with settings that must not start: (exit code, log, port)."""
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "service"],
                          env=server_env(model_dir, port, **extra), cwd=ROOT, timeout=120,
                          capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, port


def broken_models(tiny_model_dir: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (FACESR_MODEL_DIR, the words the `not ready` line must hold)."""
    corrupt = tmp_path / "corrupt" / "x8"
    shutil.copytree(tiny_model_dir / "x8", corrupt)
    with open(corrupt / "decoder.onnx", "ab") as fh:  # same file, one byte more: wrong sha256
        fh.write(b"\0")
    missing_file = tmp_path / "missing_file" / "x8"
    shutil.copytree(tiny_model_dir / "x8", missing_file)
    (missing_file / "encoder.onnx").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    no_manifest = tmp_path / "no_manifest"  # x8 complete, x4 without its manifest.json
    for scale in (4, 8):
        shutil.copytree(tiny_model_dir / f"x{scale}", no_manifest / f"x{scale}")
    (no_manifest / "x4" / "manifest.json").unlink()
    return {
        "missing directory": (tmp_path / "nowhere", "does not exist"),
        "no model in the directory": (empty, "no model in"),
        "graph file missing": (missing_file.parent, "encoder.onnx"),
        "wrong sha256": (corrupt.parent, "sha256"),
        "scale folder without a manifest": (no_manifest, "x4 has no manifest.json"),
    }


CASES = ["missing directory", "no model in the directory", "graph file missing",
         "wrong sha256", "scale folder without a manifest"]


@pytest.mark.parametrize("case", CASES)
def test_bad_model_leaves_the_service_up_but_not_ready(tiny_model_dir, tmp_path, astronaut_hr,
                                                      case):
    model_dir, words = broken_models(tiny_model_dir, tmp_path)[case]
    port = free_port()
    log = tmp_path / "server.log"
    proc, url = start_service(server_env(model_dir, port), port, log, probe="/health/live")
    try:
        ready = httpx.get(f"{url}/health/ready", timeout=10)
        models = httpx.get(f"{url}/v1/models", timeout=10).json()
        sr = httpx.post(f"{url}/superresolve", timeout=10,
                        files={"image": ("lr.png", lr_png(astronaut_hr), "image/png")})
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    text = log.read_text()
    assert code in (0, -signal.SIGTERM), text
    assert ready.status_code == 503 and ready.headers["retry-after"], ready.text
    assert ready.json()["error"] == "not_ready", ready.text
    assert "model error" in ready.json()["detail"] and str(tmp_path) not in ready.text, ready.text
    assert words in models["detail"], models
    assert sr.status_code == 503 and sr.json()["error"] == "not_ready", sr.text
    assert "facesr_ready 0.0" in metrics
    lines = [line for line in text.splitlines() if "facesr: not ready:" in line]
    assert len(lines) == 1, text
    assert words in lines[0] and lines[0].startswith("ERROR:"), lines[0]
    assert "Traceback" not in text, text


def test_require_gpu_without_a_gpu_provider_stops_with_one_line(tiny_model_dir, tmp_path):
    code, log, port = start_and_fail(tiny_model_dir / "x8", FACESR_PROVIDERS="cuda",
                                     FACESR_REQUIRE_GPU="1")
    assert code == 3, log
    lines = [line for line in log.splitlines() if "facesr: cannot start:" in line]
    assert len(lines) == 1 and "not in this onnxruntime build" in lines[0], log
    assert "Traceback" not in log, log
    with pytest.raises(httpx.TransportError):  # nothing is left listening
        httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2)


@pytest.mark.parametrize("listed", [False, True], ids=["cuda-not-in-build", "cuda-listed"])
def test_cuda_requested_but_unavailable_runs_on_cpu(tiny_model_dir, astronaut_hr, monkeypatch,
                                                    caplog, listed):
    """FACESR_PROVIDERS=cuda on a machine without CUDA: the service starts on the CPU, warns,
    and shows the provider really in use in /v1/models and facesr_model_info.

    cuda-not-in-build: onnxruntime (CPU) does not list CUDA at all.
    cuda-listed: onnxruntime-gpu lists CUDA but cannot load it (no CUDA/cuDNN libraries), so
    its sessions quietly run on the CPU; simulated by listing CUDA in
    get_available_providers, which makes this CPU build fall back the same way.
    """
    import onnxruntime as ort

    if listed:
        monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    settings = Settings(model_dir=tiny_model_dir / "x8", providers="cuda", warmup=False,
                        max_samples=4, max_steps=4, max_batch=2)
    caplog.set_level(logging.WARNING, logger="facesr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime's own UserWarning about CUDA
        with TestClient(create_app(settings)) as client:
            info = client.get("/v1/models").json()["models"][0]
            r = client.post("/superresolve",
                            files={"image": ("lr.png", lr_png(astronaut_hr), "image/png")})
            metrics = client.get("/metrics").text
    assert r.status_code == 200
    assert info["provider"] == CPU and info["providers"] == [CPU]
    assert info["requested_providers"] == ([CUDA, CPU] if listed else [CPU])
    assert 'provider="CPUExecutionProvider"' in metrics
    warned = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    text = " ".join(rec.getMessage() for rec in warned)
    if listed:
        assert "asked for CUDAExecutionProvider but ONNX Runtime runs it on " \
               "CPUExecutionProvider (fallback)" in text, text
    else:
        assert "CUDAExecutionProvider" in text and "not in this onnxruntime build" in text, text


@pytest.mark.slow
def test_sigterm_under_overload_completes_what_was_accepted(tiny_model_dir, tmp_path,
                                                            astronaut_hr):
    """More clients than FACESR_MAX_IN_FLIGHT, then SIGTERM: each accepted request gets its
    200, each refused one its 503 with Retry-After; none is cut off; the exit is clean.

    test_sigterm_finishes_in_flight_requests covers queued micro-batches; this one covers
    overload (some clients refused) at the moment of SIGTERM.
    """
    port = free_port()
    log = tmp_path / "server.log"
    env = server_env(tiny_model_dir / "x8", port, FACESR_MAX_IN_FLIGHT="6")
    proc, url = start_service(env, port, log)
    try:
        image = lr_png(astronaut_hr)
        hr = io.BytesIO()
        Image.fromarray(astronaut_hr).save(hr, "PNG")
        files = {"image": ("lr.png", image, "image/png"),
                 "reference": ("hr.png", hr.getvalue(), "image/png")}

        async def run() -> tuple[list, float]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:

                async def post():
                    try:
                        return await client.post("/samples?n=64&seed=3", files=files)
                    except httpx.HTTPError as exc:
                        return exc

                tasks = [asyncio.create_task(post()) for _ in range(12)]
                in_flight = 0.0
                wait_until = time.monotonic() + 30
                while in_flight < 3 and time.monotonic() < wait_until:
                    text = (await client.get("/metrics")).text
                    in_flight = next(float(line.split()[1]) for line in text.splitlines()
                                     if line.startswith("facesr_requests_in_flight "))
                    await asyncio.sleep(0.02)
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks), in_flight

        results, in_flight = asyncio.run(run())
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert in_flight >= 3, text
    assert code in (0, -signal.SIGTERM), text
    assert all(isinstance(r, httpx.Response) for r in results), (results, text)
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= in_flight, (codes, in_flight)
    for r in results:
        if r.status_code == 503:
            assert r.headers["retry-after"] and r.json()["error"] in ("overloaded",
                                                                      "shutting_down")
        else:
            assert len(r.json()["samples"]) == 65
    assert "shut down cleanly" in text


# --- in-process: failures driven from the inside -----------------------------------------

def test_inference_failure_is_a_500_and_the_worker_lives_on(make_app, astronaut_hr):
    lr8 = lr_png(astronaut_hr)
    client, state = make_app()
    gated = gate_decoder(state, fail=True)
    gated.release.set()
    for path in ("/superresolve", "/samples?n=2", "/traverse?steps=2"):
        body = assert_error(client.post(path, files=upload(lr8)), 500, "inference_failed")
        assert "simulated ONNX Runtime failure" in body["detail"]
    state.runners[8].sessions["decoder"] = gated.session
    assert client.post("/superresolve", files=upload(lr8)).status_code == 200
    assert metric(client.get("/metrics").text, "facesr_errors_total",
                  kind="inference_failed") == 3



def test_request_timeout_is_a_504(make_app, astronaut_hr):
    lr8 = lr_png(astronaut_hr)
    client, state = make_app(request_timeout_s=0.5)
    gated = gate_decoder(state)
    start = time.monotonic()
    body = assert_error(client.post("/samples?n=2", files=upload(lr8)), 504, "timeout")
    assert "0.5 s" in body["detail"] and time.monotonic() - start < 5
    gated.release.set()
    state.runners[8].sessions["decoder"] = gated.session
    assert client.post("/superresolve", files=upload(lr8)).status_code == 200
    assert state.in_flight == 0



def test_a_corrupt_model_leaves_the_app_up_but_not_ready(tiny_model_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_model_dir / "x8", tmp_path / "x8")
    (tmp_path / "x8" / "icap.onnx").write_bytes(b"not onnx")
    with TestClient(create_app(settings_for(tmp_path))) as client:
        assert client.get("/health/live").status_code == 200
        body = assert_error(client.get("/health/ready"), 503)
        assert body["error"] == "not_ready" and "model error" in body["detail"], body
        assert str(tmp_path) not in body["detail"] and "sha256" not in body["detail"], body
        models = client.get("/v1/models").json()  # the cause, behind the API key when set
        assert models["models"] == [] and "sha256" in models["detail"], models



def test_int8_asked_for_but_absent_leaves_the_app_not_ready(tiny_model_dir, tmp_path):
    model_dir = model_copy_with_int8_loss(tiny_model_dir, tmp_path / "x8", None)
    with TestClient(create_app(settings_for(model_dir, precision="int8"))) as client:
        assert_error(client.get("/health/ready"), 503, "not_ready")
        models = client.get("/v1/models").json()  # the cause: in the log and /v1/models
        assert "FACESR_PRECISION=int8" in models["detail"], models
    with TestClient(create_app(settings_for(model_dir, warmup=False))) as client:
        wait_ready(client)  # auto: fp32, which needs no int8 file


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests(tiny_model_dir, tmp_path, astronaut_hr):
    """SIGTERM with /samples running and queued in the pool, and /superresolve waiting in the
    micro-batcher: every one of them gets its 200, then the process exits cleanly."""
    lr8, hr = lr_png(astronaut_hr), png(astronaut_hr)
    port = free_port()
    proc, url = start_service(server_env(tiny_model_dir / "x8", port, FACESR_MAX_STEPS="8"), port,
                              tmp_path / "server.log")
    try:
        def post(path, files):
            with httpx.Client(base_url=url, timeout=120) as c:
                return c.post(path, files=files)

        def wait_in_flight(count):
            deadline = time.monotonic() + 30
            while metric(httpx.get(f"{url}/metrics", timeout=10).text,
                         "facesr_requests_in_flight") < count:
                assert time.monotonic() < deadline and not any(f.done() for f in futures)
                time.sleep(0.01)

        with ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(post, "/samples?n=64&seed=2", upload(lr8, hr))
                       for _ in range(3)]
            wait_in_flight(3)  # the pool now runs one /samples and queues the others
            futures += [pool.submit(post, "/superresolve", upload(lr8)) for _ in range(2)]
            wait_in_flight(5)  # ...and two /superresolve wait in the micro-batcher
            proc.send_signal(signal.SIGTERM)
            results = [f.result(120) for f in futures]
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "server.log").read_text()
    assert [r.status_code for r in results] == [200] * 5, log
    assert all(len(r.json()["samples"]) == 65 for r in results[:3])
    assert all(pixels(r.content).shape == (128, 128, 3) for r in results[3:])
    assert "shut down cleanly" in log
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health/live", timeout=2)
