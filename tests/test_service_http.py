"""The service over HTTP: every endpoint, against an in-process client and a real uvicorn on
127.0.0.1, with the tiny exported model and a real face (the scikit-image astronaut)."""

import base64
import io
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from helpers import (
    LIMITS,
    assert_error,
    gate_decoder,
    metric,
    model_copy_with_int8_loss,
    pixels,
    png,
    settings_for,
    upload,
    wait_ready,
)
from images import png_claiming
from PIL import Image
from servers import ServiceProcess, free_port, service_env
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from facesr_core.degradation import bicubic_upsample, degrade, from_model_range, to_model_range
from facesr_core.manifest import load_manifest
from service import contact_sheet, engine
from service.app import create_app

with warnings.catch_warnings():  # starlette's notice about httpx2, not about our code
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
BODY_LIMIT = 2 * 300000 + 64 * 1024
CLEAN_EXIT = (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a graceful shutdown
INT8_MIN_PSNR = 40.0  # dB, int8 against fp32 output of the tiny model on the astronaut (52 seen)


def b64pixels(text: str) -> np.ndarray:
    return pixels(base64.b64decode(text))


@contextmanager
def real_server(env: dict[str, str], log: Path, uvicorn: bool = False) -> Iterator[ServiceProcess]:
    """A real server process on 127.0.0.1 (`python -m service`, or the uvicorn CLI), ready, with
    an httpx `client`; SIGTERM on exit."""
    port = free_port()
    env = service_env(Path(env["FACESR_MODEL_DIR"]), port, env)
    args = ("--factory", "service.app:create_app", "--host", "127.0.0.1", "--port", str(port))
    server = (ServiceProcess(env, port, log, args, module="uvicorn") if uvicorn
              else ServiceProcess(env, port, log))
    server.client = httpx.Client(base_url=server.url, timeout=60)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop(30)
        server.client.close()


@pytest.fixture(scope="module")
def hr(astronaut_hr) -> Image.Image:
    return Image.fromarray(astronaut_hr)


@pytest.fixture(scope="module")
def lr8(hr) -> bytes:
    return png(degrade(hr, 8))


@pytest.fixture(scope="module")
def inprocess(tiny_model_dir):
    settings = settings_for(tiny_model_dir, pad_batches="always")  # uvicorn: auto (no padding)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def uvicorn_server(tiny_model_dir, tmp_path_factory):
    env = {**LIMITS, "FACESR_MODEL_DIR": str(tiny_model_dir)}
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    with real_server(env, log, uvicorn=True) as server:
        yield server
    assert server.proc.returncode in CLEAN_EXIT, log.read_text()


@pytest.fixture(params=["inprocess", "uvicorn"])
def client(request):
    if request.param == "inprocess":
        return request.getfixturevalue("inprocess")
    return request.getfixturevalue("uvicorn_server").client


class Reference:
    """The model run directly in ONNX Runtime, independent of service/."""

    def __init__(self, model_dir: Path, lr: Image.Image):
        self.s = {g: ort.InferenceSession(str(model_dir / f"{g}.onnx"),
                                          providers=["CPUExecutionProvider"])
                  for g in ("icap", "encoder", "decoder")}
        self.x = to_model_range(bicubic_upsample(lr))[None]
        self.mu, self.logvar = self.s["icap"].run(None, {"x": self.x})
        (self.features,) = self.s["encoder"].run(None, {"x": self.x})

    def decode(self, z: np.ndarray) -> np.ndarray:
        (y,) = self.s["decoder"].run(None, {"features": self.features, "z": z[None].astype(
            np.float32), "x": self.x})
        return from_model_range(y[0])

    def sample_z(self, seed: int, draw: int, temperature: float = 1.0) -> np.ndarray:
        eps = np.random.default_rng(seed).standard_normal((draw + 1, *self.mu.shape[1:]),
                                                          dtype=np.float32)[draw]
        return self.mu[0] + np.float32(temperature) * np.exp(0.5 * self.logvar[0]) * eps


# --- endpoints ----------------------------------------------------------------------------

def test_health(client):
    assert client.get("/health/live").json() == {"status": "alive"}
    r = client.get("/health/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready", "scales": [4, 8, 16]}


@pytest.mark.parametrize("scale", [4, 8, 16])
def test_superresolve_infers_the_scale_and_matches_onnxruntime(client, hr, tiny_model_dir,
                                                               scale):
    lr = degrade(hr, scale)
    r = client.post("/superresolve", files=upload(png(lr)))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-facesr-scale"] == str(scale) and "x-facesr-adjustment" not in r.headers
    assert r.headers["x-facesr-model"] == f"x{scale}"
    assert all(s in r.headers["server-timing"] for s in ("decode", "queue", "inference",
                                                         "encode"))
    ref = Reference(tiny_model_dir / f"x{scale}", lr)
    np.testing.assert_array_equal(pixels(r.content), ref.decode(ref.mu[0]))


@pytest.mark.parametrize("fmt, media", [("jpeg", "image/jpeg"), ("webp", "image/webp"),
                                        ("png", "image/png")])
def test_superresolve_output_formats(client, lr8, fmt, media):
    r = client.post(f"/superresolve?format={fmt}", files=upload(lr8))
    assert r.status_code == 200 and r.headers["content-type"] == media
    img = Image.open(io.BytesIO(r.content))
    assert img.format == fmt.upper() and img.size == (128, 128)


def test_superresolve_input_variants(client, hr):
    lr = degrade(hr, 8)
    rgba = lr.convert("RGBA")
    rgba.putalpha(128)
    exif = Image.Exif()
    exif[0x0112] = 3  # upside down
    cases = {
        "gray": (png(lr.convert("L")), None),
        "rgba": (png(rgba), "alpha composited onto white"),
        "bmp": (png(lr, "BMP"), None),
        "webp": (png(lr, "WEBP", lossless=True), None),
        "jpeg+exif": (png(lr.rotate(180), "JPEG", exif=exif, quality=95),
                      "exif-orientation 3 applied"),
    }
    for name, (data, note) in cases.items():
        r = client.post("/superresolve", files=upload(data))
        assert r.status_code == 200, (name, r.text)
        assert r.headers.get("x-facesr-adjustment") == note, name
        assert pixels(r.content).shape == (128, 128, 3)


def test_superresolve_adjustments_are_reported(client, hr):
    wide = Image.fromarray(np.asarray(hr.resize((20, 16), Image.Resampling.BICUBIC)))
    r = client.post("/superresolve", files=upload(png(wide)))
    assert r.status_code == 200 and r.headers["x-facesr-scale"] == "8"
    assert r.headers["x-facesr-adjustment"] == "center-crop 20x16 to 16x16"
    odd = png(hr.resize((24, 24)))
    r = client.post("/superresolve?scale=4", files=upload(odd))
    assert r.status_code == 200 and r.headers["x-facesr-scale"] == "4"
    assert r.headers["x-facesr-adjustment"] == "resize 24x24 to 32x32 (bicubic) for scale 4"
    body = assert_error(client.post("/superresolve", files=upload(odd)), 422, "invalid_image")
    assert "cannot infer the scale" in body["detail"]
    body = assert_error(client.post("/superresolve?scale=8", files=upload(png(hr))), 422)
    assert "looks like an HR image" in body["detail"] and "x8: 8-20 px" in body["detail"]


def test_samples_json(client, lr8):
    r = client.post("/samples?n=6&seed=3", files=upload(lr8))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["n"], body["seed"], body["scale"], body["reference"], body["best"]) == (
        6, 3, 8, False, None)
    assert r.headers["x-facesr-seed"] == "3"
    entries = body["samples"]
    assert len(entries) == 7 and entries[0]["kind"] == "mean" and entries[0]["draw"] is None
    assert sorted(e["draw"] for e in entries[1:]) == list(range(6))
    dens = [e["log_density"] for e in entries]
    assert dens == sorted(dens, reverse=True)
    assert all(e["psnr"] is None and not e["best"] for e in entries)
    mean = client.post("/superresolve", files=upload(lr8))
    np.testing.assert_array_equal(b64pixels(entries[0]["image"]), pixels(mean.content))
    images = [b64pixels(e["image"]) for e in entries[1:]]
    assert len({im.tobytes() for im in images}) == 6  # distinct samples


def test_samples_match_onnxruntime_draws(client, hr, tiny_model_dir):
    lr = degrade(hr, 8)
    body = client.post("/samples?n=4&seed=11&temperature=0.7", files=upload(png(lr))).json()
    ref = Reference(tiny_model_dir / "x8", lr)
    for e in body["samples"][1:]:
        want = ref.decode(ref.sample_z(11, e["draw"], 0.7))
        np.testing.assert_array_equal(b64pixels(e["image"]), want)


def test_same_seed_same_bytes(client, lr8):
    def post(path):
        r = client.post(path, files=upload(lr8))
        assert r.status_code == 200, r.text
        return r.content

    for path in ("/samples?n=5&seed=42", "/samples?n=5&seed=42&format=png",
                 "/traverse?steps=4&seed=42&format=gif", "/traverse?steps=4&seed=42"):
        assert post(path) == post(path), path
    assert post("/samples?n=5&seed=42") != post("/samples?n=5&seed=43")
    unseeded = client.post("/samples?n=2", files=upload(lr8))
    seed = int(unseeded.headers["x-facesr-seed"])
    assert unseeded.json()["seed"] == seed
    assert post(f"/samples?n=2&seed={seed}") == unseeded.content


def test_best_of_n_picks_the_highest_psnr(client, hr, astronaut_hr):
    r = client.post("/samples?n=12&seed=5", files=upload(png(degrade(hr, 8)), png(hr)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reference"] is True
    entries = body["samples"]
    images = [b64pixels(e["image"]) for e in entries]
    psnrs = [peak_signal_noise_ratio(astronaut_hr, im, data_range=255) for im in images]
    for e, p, im in zip(entries, psnrs, images, strict=True):
        assert abs(e["psnr"] - p) < 1e-6
        want = structural_similarity(astronaut_hr, im, channel_axis=-1, gaussian_weights=True,
                                     sigma=1.5, use_sample_covariance=False, data_range=255)
        assert abs(e["ssim"] - want) < 1e-3
    best = 1 + int(np.argmax(psnrs[1:]))  # among the samples; the mean is not a sample
    assert body["best"] == best and entries[best]["best"]
    assert sum(e["best"] for e in entries) == 1
    sheet = client.post("/samples?n=12&seed=5&format=png",
                        files=upload(png(degrade(hr, 8)), png(hr)))
    assert sheet.headers["content-type"] == "image/png"
    assert sheet.headers["x-facesr-best"] == str(best)
    grid = pixels(sheet.content)
    cell_h = 128 + contact_sheet.CAPTION_HEIGHT + 4
    assert grid.shape == (2 * cell_h + 4, 8 * 132 + 4, 3)  # LR, reference, mean, 12 samples

    def tile(i):
        y, x = 4 + (i // 8) * cell_h, 4 + (i % 8) * 132
        return grid[y:y + 128, x:x + 128]

    np.testing.assert_array_equal(tile(1), astronaut_hr)
    for k, im in enumerate(images):
        np.testing.assert_array_equal(tile(2 + k), im)
    framed = 2 + best
    y, x = 4 + (framed // 8) * cell_h, 4 + (framed % 8) * 132
    assert tuple(grid[y - 2, x - 2]) == contact_sheet.BEST_COLOUR


def test_traverse_ends_are_the_decodes_of_z_start_and_z_end(client, hr, tiny_model_dir):
    lr = degrade(hr, 8)
    r = client.post("/traverse?steps=5&seed=21", files=upload(png(lr)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [f["alpha"] for f in body["frames"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    frames = [b64pixels(f["image"]) for f in body["frames"]]
    ref = Reference(tiny_model_dir / "x8", lr)
    np.testing.assert_array_equal(frames[0], ref.decode(ref.sample_z(21, 0)))
    np.testing.assert_array_equal(frames[-1], ref.decode(ref.sample_z(21, 1)))
    z_mid = 0.5 * ref.sample_z(21, 0) + 0.5 * ref.sample_z(21, 1)
    assert np.abs(frames[2].astype(int) - ref.decode(z_mid)).max() <= 1
    # the same draws as /samples with that seed
    samples = client.post("/samples?n=2&seed=21", files=upload(png(lr))).json()["samples"]
    by_draw = {e["draw"]: b64pixels(e["image"]) for e in samples}
    np.testing.assert_array_equal(frames[0], by_draw[0])
    np.testing.assert_array_equal(frames[-1], by_draw[1])
    two = client.post("/traverse?steps=3&seed=21&seed_end=99", files=upload(png(lr))).json()
    np.testing.assert_array_equal(b64pixels(two["frames"][-1]["image"]),
                                  ref.decode(ref.sample_z(99, 0)))
    assert two["seed_end"] == 99


@pytest.mark.parametrize("fmt, media", [("gif", "image/gif"), ("webp", "image/webp"),
                                        ("png", "image/png")])
def test_traverse_image_formats(client, lr8, fmt, media):
    r = client.post(f"/traverse?steps=6&seed=1&format={fmt}", files=upload(lr8))
    assert r.status_code == 200 and r.headers["content-type"] == media
    img = Image.open(io.BytesIO(r.content))
    if fmt == "png":
        assert img.size == (6 * 128, 128)
    else:
        assert img.n_frames == 6 and img.size == (128, 128)


def test_models(client, tiny_model_dir):
    models = client.get("/v1/models").json()["models"]
    assert [m["scale"] for m in models] == [4, 8, 16]
    for m in models:
        manifest = load_manifest(tiny_model_dir / f"x{m['scale']}")
        assert m["version"] == manifest.version == "test-1"
        assert m["provider"] == "CPUExecutionProvider"
        assert m["precision"] == "fp32"  # auto, and the int8 graphs have no measured loss
        assert m["int8"]["loss"] == {} and m["int8"]["files"]["icap"]["path"] == "icap.int8.onnx"
        assert m["metrics"] == {"psnr": 20.0, "note": "random weights"}
        for name, f in {**manifest.files, **manifest.weights}.items():
            assert m["files"][name] == {"path": f.path, "sha256": f.sha256}
        assert m["batch_buckets"]["decoder"] == [1, 2, 4, 8, 16, 17]
        assert m["padded_to_buckets"] is (client.base_url.host == "testserver")
        assert m["warmup_seconds"] > 0


def test_docs_declare_the_image_media_types(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]

    def media(path):
        return set(paths[path]["post"]["responses"]["200"]["content"])

    assert media("/superresolve") == {"image/png", "image/jpeg", "image/webp",
                                     "application/json"}  # ?uncertainty=true
    assert media("/samples") == {"application/json", "image/png"}
    assert media("/traverse") == {"application/json", "image/gif", "image/webp", "image/png"}
    errors = paths["/samples"]["post"]["responses"]
    assert {"413", "415", "422", "503"} <= set(errors)


def test_metrics_move(client, lr8, hr):
    before = client.get("/metrics").text
    for _ in range(2):
        assert client.post("/superresolve", files=upload(lr8)).status_code == 200
    assert client.post("/samples?n=3&seed=1", files=upload(lr8, png(hr))).status_code == 200
    assert client.post("/superresolve?scale=5", files=upload(lr8)).status_code == 422
    after = client.get("/metrics").text

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("facesr_requests_total", endpoint="/superresolve", status="200") == 2
    assert delta("facesr_requests_total", endpoint="/superresolve", status="422") == 1
    assert delta("facesr_errors_total", kind="invalid_parameter") == 1
    for stage in ("decode", "queue", "inference", "encode"):
        assert delta("facesr_stage_duration_seconds_count", endpoint="/samples",
                     stage=stage) == 1
    assert delta("facesr_batch_size_requests_count", scale="8") == 2
    assert delta("facesr_samples_per_request_sum", endpoint="/samples") == 3
    assert delta("facesr_request_duration_seconds_count", endpoint="/superresolve") == 3
    assert metric(after, "facesr_model_info", name="x8", scale="8", version="test-1",
                  provider="CPUExecutionProvider") == 1
    assert metric(after, "facesr_requests_in_flight") == 0
    assert metric(after, "facesr_ready") == 1


# --- bad input: status, JSON, and the server still answers ------------------------------

def noise(side: int) -> bytes:
    return png(np.random.default_rng(side).integers(0, 256, (side, side, 3), np.uint8))


BAD_REQUESTS = {
    # name: (path, files or raw body, status, error)
    "upload over MAX_UPLOAD_BYTES": ("/superresolve", {"image": noise(330)}, 413,
                                     "payload_too_large"),
    "body over the limit": ("/superresolve", {"image": b"\0" * (BODY_LIMIT + 10)}, 413,
                            "payload_too_large"),
    "pixels over MAX_PIXELS": ("/superresolve", {"image": png(Image.new("L", (1200, 1000)))},
                               413, "payload_too_large"),
    "decompression bomb": ("/superresolve", {"image": png_claiming(90_000, 90_000)}, 413,
                           "payload_too_large"),
    "not an image": ("/superresolve", {"image": b"%PDF-1.4 not an image"}, 415,
                     "unsupported_media_type"),
    "gif": ("/samples", {"image": png(Image.new("RGB", (16, 16)), "GIF")}, 415,
            "unsupported_media_type"),
    "truncated png": ("/superresolve", {"image": noise(16)[:300]}, 422, "invalid_image"),
    "corrupt pixel data": ("/superresolve", {"image": png_claiming(16, 16)}, 422,
                           "invalid_image"),
    "empty file": ("/traverse", {"image": b""}, 422, "invalid_image"),
    "no multipart": ("/superresolve", b"raw bytes", 415, "unsupported_media_type"),
    "missing image field": ("/superresolve", {"picture": noise(16)}, 422, "invalid_parameter"),
    "reference not 128": ("/samples", {"image": noise(16), "reference": noise(64)}, 422,
                          "invalid_image"),
    "n=0": ("/samples?n=0", {"image": noise(16)}, 422, "invalid_parameter"),
    "n over MAX_SAMPLES": ("/samples?n=17", {"image": noise(16)}, 422, "invalid_parameter"),
    "n not a number": ("/samples?n=ten", {"image": noise(16)}, 422, "invalid_parameter"),
    "negative seed": ("/samples?seed=-1", {"image": noise(16)}, 422, "invalid_parameter"),
    "temperature": ("/samples?temperature=-0.5", {"image": noise(16)}, 422,
                    "invalid_parameter"),
    "steps=1": ("/traverse?steps=1", {"image": noise(16)}, 422, "invalid_parameter"),
    "steps over MAX_STEPS": ("/traverse?steps=17", {"image": noise(16)}, 422,
                             "invalid_parameter"),
    "scale=3": ("/superresolve?scale=3", {"image": noise(16)}, 422, "invalid_parameter"),
    "format=bmp": ("/superresolve?format=bmp", {"image": noise(16)}, 422, "invalid_parameter"),
    "path-like format": ("/traverse?format=../../etc/passwd", {"image": noise(16)}, 422,
                         "invalid_parameter"),
    "hr-sized input": ("/superresolve", {"image": noise(128)}, 422, "invalid_image"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_gets_its_status_and_json(client, lr8, name):
    path, payload, status, error = BAD_REQUESTS[name]
    if isinstance(payload, bytes):
        r = client.post(path, content=payload, headers={"content-type": "image/png"})
    else:
        r = client.post(path, files={k: ("f.bin", v, "application/octet-stream")
                                     for k, v in payload.items()})
    assert_error(r, status, error)
    assert client.get("/health/live").status_code == 200
    assert client.post("/superresolve", files=upload(lr8)).status_code == 200


def test_chunked_upload_over_the_limit(client, lr8):
    boundary = "facesrboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"f.png\"\r\nContent-Type: image/png\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(BODY_LIMIT // 65536 + 2):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/superresolve", content=body(),
                    headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert_error(r, 413, "payload_too_large")
    assert client.post("/superresolve", files=upload(lr8)).status_code == 200


def test_unknown_path_and_method(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/superresolve"), 405, "method_not_allowed")
    assert_error(client.post("/v1/models"), 405, "method_not_allowed")


def test_micro_batching_and_warm_buckets(uvicorn_server, inprocess, hr):
    """Concurrent /superresolve requests share decoder calls, with unchanged outputs."""
    faces = [png(degrade(hr.rotate(a), 8)) for a in (0, 5, 10, 15, 20, 25, 30, 35)]
    alone = [pixels(inprocess.post("/superresolve", files=upload(f)).content) for f in faces]

    def post(face):
        with httpx.Client(base_url=uvicorn_server.url, timeout=60) as c:
            return c.post("/superresolve", files=upload(face))

    before = uvicorn_server.client.get("/metrics").text
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, faces))
    after = uvicorn_server.client.get("/metrics").text
    assert all(r.status_code in (200, 503) for r in results)
    for r, want in zip(results, alone, strict=True):
        if r.status_code == 200:
            np.testing.assert_array_equal(pixels(r.content), want)
    assert max(int(r.headers.get("x-facesr-batch", 0)) for r in results) > 1
    batches = (metric(after, "facesr_batch_size_requests_count", scale="8")
               - metric(before, "facesr_batch_size_requests_count", scale="8"))
    assert 0 < batches < sum(r.status_code == 200 for r in results)
    # every graph call the in-process service made used a warmed-up bucket
    for runner in inprocess.app.state.svc.runners.values():
        for graph, sizes in runner.calls.items():
            warmed = runner.encoder_buckets if graph != "decoder" else runner.decoder_buckets
            assert sizes <= set(warmed), (graph, sizes)


def test_overload_gets_503_not_a_hang(uvicorn_server, lr8, hr):
    def post(_):
        with httpx.Client(base_url=uvicorn_server.url, timeout=60) as c:
            return c.post("/samples?n=16&seed=1", files=upload(lr8, png(hr)))

    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(post, range(16)))
    assert time.monotonic() - start < 60
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 503} and codes.count(503) >= 1 and codes.count(200) >= 1, codes
    for r in results:
        if r.status_code == 503:
            assert_error(r, 503, "overloaded")
            assert r.headers["retry-after"] == "1"
    assert uvicorn_server.client.post("/superresolve", files=upload(lr8)).status_code == 200


def test_overload_is_refused_while_full(make_app, lr8):
    client, state = make_app(max_in_flight=1)
    gated = gate_decoder(state)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/superresolve", files=upload(lr8))
        assert gated.entered.wait(10)
        r = client.post("/samples", files=upload(lr8))
        assert_error(r, 503, "overloaded")
        assert r.headers["retry-after"] == "1"
        assert client.get("/health/live").status_code == 200  # health is never refused
        gated.release.set()
        assert first.result(30).status_code == 200
    assert client.post("/superresolve", files=upload(lr8)).status_code == 200


def test_ready_only_after_warm_up(tiny_model_dir, monkeypatch, lr8):
    release = threading.Event()
    real = engine.Runner.warmup

    def slow_warmup(self, stop):
        release.wait(30)
        return real(self, stop)

    monkeypatch.setattr(engine.Runner, "warmup", slow_warmup)
    settings = settings_for(tiny_model_dir / "x8")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        r = client.get("/health/ready")
        assert_error(r, 503, "not_ready")
        assert "warming up" in r.json()["detail"] and r.headers["retry-after"] == "1"
        assert client.get("/health/live").status_code == 200
        assert_error(client.post("/superresolve", files=upload(lr8)), 503, "not_ready")
        assert client.get("/v1/models").json()["ready"] is False
        release.set()
        wait_ready(client, timeout=20)
        assert client.post("/superresolve", files=upload(lr8)).status_code == 200


def test_api_key(make_app, lr8):
    client, _ = make_app(api_key="s3cret")
    body = assert_error(client.post("/superresolve", files=upload(lr8)), 401, "unauthorized")
    assert "Bearer" in body["detail"]
    assert_error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    ok = {"Authorization": "Bearer s3cret"}
    assert client.post("/superresolve", files=upload(lr8), headers=ok).status_code == 200
    assert client.get("/v1/models", headers=ok).status_code == 200
    for scheme in ("bearer", "BEARER"):  # the scheme is case-insensitive (RFC 7235)
        assert client.get("/v1/models", headers={"Authorization": f"{scheme} s3cret"}
                          ).status_code == 200
    assert_error(client.get("/v1/models", headers={"Authorization": "Basic s3cret"}), 401)
    for path in ("/health/live", "/health/ready", "/metrics", "/docs"):
        assert client.get(path).status_code == 200, path
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"


def test_scale_without_a_model(make_app, hr):
    client, _ = make_app()
    body = assert_error(client.post("/superresolve", files=upload(png(degrade(hr, 4)))), 422)
    assert "no model for scale 4; loaded scales: 8" in body["detail"]


@pytest.mark.parametrize("loss_db, want", [(0.01, "int8"), (0.03, "fp32")])
def test_auto_serves_int8_on_the_cpu_only_within_the_loss(tiny_model_dir, tmp_path, loss_db,
                                                         want):
    model_dir = model_copy_with_int8_loss(tiny_model_dir, tmp_path / "x8", loss_db)
    with TestClient(create_app(settings_for(model_dir, warmup=False))) as client:
        wait_ready(client)
        (info,) = client.get("/v1/models").json()["models"]
        assert info["precision"] == want
        assert metric(client.get("/metrics").text, "facesr_model_info", name="x8",
                      precision=want) == 1


def test_int8_is_served_and_close_to_fp32(tiny_model_dir, lr8):
    outputs = {}
    for precision in ("fp32", "int8"):
        settings = settings_for(tiny_model_dir / "x8", warmup=False, precision=precision)
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            (info,) = client.get("/v1/models").json()["models"]
            assert info["precision"] == precision
            r = client.post("/superresolve", files=upload(lr8))
            assert r.status_code == 200, r.text
            outputs[precision] = pixels(r.content)
    assert not np.array_equal(outputs["fp32"], outputs["int8"])  # really another graph
    assert peak_signal_noise_ratio(outputs["fp32"], outputs["int8"]) > INT8_MIN_PSNR


# --- real processes: python -m service, SIGTERM, several workers, REQUIRE_GPU ------------

@pytest.mark.slow
def test_several_workers_share_metrics(tiny_model_dir, tmp_path, lr8):
    prom = tmp_path / "prom"
    env = {"FACESR_MODEL_DIR": str(tiny_model_dir / "x8"), "FACESR_WORKERS": "2",
           "FACESR_MAX_SAMPLES": "4", "FACESR_MAX_STEPS": "4", "FACESR_MAX_BATCH": "2",
           "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    with real_server(env, tmp_path / "server.log") as server:
        deadline = time.monotonic() + 30
        while len({p.stem.rsplit("_", 1)[-1] for p in prom.glob("gauge_livemax_*.db")}) < 2:
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.1)
        for _ in range(2):  # the other worker may still be warming up
            wait_ready(server.client)
        for _ in range(6):
            with httpx.Client(base_url=server.url, timeout=30) as c:  # new connection each
                r = c.post("/superresolve", files=upload(lr8))
                assert r.status_code in (200, 503), r.text
        text = server.client.get("/metrics").text
        served = metric(text, "facesr_requests_total", endpoint="/superresolve", status="200")
        refused = metric(text, "facesr_requests_total", endpoint="/superresolve", status="503")
        assert served + refused == 6 and served >= 1
        assert metric(text, "facesr_model_info", name="x8", scale="8", version="test-1",
                      provider="CPUExecutionProvider") == 1
    assert server.proc.returncode == -signal.SIGTERM  # 143 in a shell, as with one worker


def test_main_rejects_bad_flags(capsys):
    from service.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--port", "one"])
    assert exc.value.code == 2
    assert "invalid setting: port" in capsys.readouterr().err



def test_samples_default_to_the_manifests_calibrated_temperature(tiny_model_dir, hr, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from facesr_core.manifest import MANIFEST_NAME

    shutil.copytree(tiny_model_dir / "x8", tmp_path / "x8")
    manifest = load_manifest(tmp_path / "x8")
    (tmp_path / "x8" / MANIFEST_NAME).write_text(
        manifest.model_copy(update={"sample_temperature": 0.3}).model_dump_json())
    lr = degrade(hr, 8)
    ref = Reference(tmp_path / "x8", lr)
    with TestClient(create_app(settings_for(tmp_path)), raise_server_exceptions=False) as client:
        wait_ready(client)
        assert client.get("/v1/models").json()["models"][0]["sample_temperature"] == 0.3
        body = client.post("/samples?n=2&seed=5", files=upload(png(lr))).json()
        assert body["temperature"] == 0.3
        explicit = client.post("/samples?n=2&seed=5&temperature=1", files=upload(png(lr))).json()
        assert explicit["temperature"] == 1.0
        frames = client.post("/traverse?steps=2&seed=5", files=upload(png(lr))).json()
        assert frames["temperature"] == 0.3
    for e in body["samples"][1:]:
        want = ref.decode(ref.sample_z(5, e["draw"], 0.3))
        np.testing.assert_array_equal(b64pixels(e["image"]), want)
    assert body["samples"][1]["image"] != explicit["samples"][1]["image"]


def test_principal_draws_are_the_default_where_the_model_ships_a_basis(tiny_model_dir, hr,
                                                                       tmp_path):
    """A basis in the manifest makes /samples and /traverse draw z = mu + T eps @ basis (with
    its own temperature); draws=icap still gives the paper's draws at sample_temperature; a
    model without a basis refuses draws=principal with a 422."""
    import shutil

    from fastapi.testclient import TestClient

    from facesr_core.manifest import MANIFEST_NAME, PRINCIPAL_BASIS, ModelFile, PrincipalDraws
    from facesr_core.manifest import sha256_of as sha

    shutil.copytree(tiny_model_dir / "x8", tmp_path / "x8")
    manifest = load_manifest(tmp_path / "x8")
    basis = np.random.default_rng(0).standard_normal((3, *manifest.latent_shape),
                                                     dtype=np.float32)
    np.save(tmp_path / "x8" / PRINCIPAL_BASIS, basis)
    draws = PrincipalDraws(file=ModelFile(path=PRINCIPAL_BASIS,
                                          sha256=sha(tmp_path / "x8" / PRINCIPAL_BASIS)),
                           rank=3, temperature=0.6)
    (tmp_path / "x8" / MANIFEST_NAME).write_text(manifest.model_copy(
        update={"principal_draws": draws, "sample_temperature": 0.3}).model_dump_json())
    lr = degrade(hr, 8)
    ref = Reference(tmp_path / "x8", lr)
    with TestClient(create_app(settings_for(tmp_path)), raise_server_exceptions=False) as client:
        wait_ready(client)
        info = client.get("/v1/models").json()["models"][0]
        assert info["default_draws"] == "principal"
        assert info["principal_draws"]["rank"] == 3
        r = client.post("/samples?n=3&seed=5", files=upload(png(lr)))
        body = r.json()
        assert (body["draws"], body["temperature"]) == ("principal", 0.6)
        assert r.headers["x-facesr-draws"] == "principal"
        icap = client.post("/samples?n=3&seed=5&draws=icap", files=upload(png(lr))).json()
        assert (icap["draws"], icap["temperature"]) == ("icap", 0.3)
        frames = client.post("/traverse?steps=2&seed=5", files=upload(png(lr))).json()
        assert (frames["draws"], frames["temperature"]) == ("principal", 0.6)
        # an uncertainty map is drawn from the ICAP's Gaussian unless the request says otherwise
        for path in ("/samples?n=3&seed=5&uncertainty=true",
                     "/superresolve?n=3&seed=5&uncertainty=true"):
            mapped = client.post(path, files=upload(png(lr))).json()
            assert (mapped["draws"], mapped["temperature"]) == ("icap", 0.3), path
        mapped = client.post("/samples?n=3&seed=5&uncertainty=true&draws=principal",
                             files=upload(png(lr))).json()
        assert mapped["draws"] == "principal"
        assert mapped["samples"][1]["image"] == body["samples"][1]["image"]
    eps = np.random.default_rng(5).standard_normal((3, 3), dtype=np.float32)
    z = ref.mu[0] + np.float32(0.6) * np.tensordot(eps, basis, axes=1)
    for e in body["samples"][1:]:
        np.testing.assert_array_equal(b64pixels(e["image"]), ref.decode(z[e["draw"]]))
    for e in icap["samples"][1:]:
        np.testing.assert_array_equal(b64pixels(e["image"]),
                                      ref.decode(ref.sample_z(5, e["draw"], 0.3)))
    np.testing.assert_array_equal(b64pixels(frames["frames"][0]["image"]),
                                  b64pixels(next(e for e in body["samples"]
                                                 if e["draw"] == 0)["image"]))


def test_principal_draws_on_a_model_without_a_basis_are_refused(inprocess, lr8):
    r = inprocess.post("/samples?n=2&draws=principal", files=upload(lr8))
    assert r.status_code == 422 and "principal" in r.json()["detail"]
    r = inprocess.post("/samples?n=2&seed=1", files=upload(lr8))
    assert r.json()["draws"] == "icap"
    assert inprocess.get("/v1/models").json()["models"][0]["default_draws"] == "icap"


def test_a_basis_that_does_not_fit_the_latent_stops_the_load(tiny_model_dir, tmp_path):
    import shutil

    from facesr_core.manifest import MANIFEST_NAME, PRINCIPAL_BASIS, ModelFile, PrincipalDraws
    from facesr_core.manifest import sha256_of as sha
    from service.engine import ModelError, load_runner
    from service.settings import Settings

    shutil.copytree(tiny_model_dir / "x8", tmp_path / "x8")
    manifest = load_manifest(tmp_path / "x8")
    np.save(tmp_path / "x8" / PRINCIPAL_BASIS, np.zeros((2, 3, 4, 4), np.float32))
    draws = PrincipalDraws(file=ModelFile(path=PRINCIPAL_BASIS,
                                          sha256=sha(tmp_path / "x8" / PRINCIPAL_BASIS)),
                           rank=2, temperature=0.5)
    (tmp_path / "x8" / MANIFEST_NAME).write_text(
        manifest.model_copy(update={"principal_draws": draws}).model_dump_json())
    with pytest.raises(ModelError, match="basis is float32 \\(2, 3, 4, 4\\)"):
        load_runner(tmp_path / "x8", Settings(), ["CPUExecutionProvider"])
    (tmp_path / "x8" / PRINCIPAL_BASIS).write_bytes(b"changed")
    with pytest.raises(ModelError, match="principal basis file .* has sha256"):
        load_runner(tmp_path / "x8", Settings(), ["CPUExecutionProvider"])
