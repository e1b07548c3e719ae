"""schemathesis against the service's own /openapi.json (the short run; the long one is
scripts/schemathesis_long.sh): generated requests for every operation, and not one 5xx.

Checks: not_a_server_error, plus the response conformance checks (status code, content type,
headers, body schema). Not run: positive_data_acceptance (the schema cannot say "a decodable
image", so schema-valid random bytes are rightly refused). The hooks in
bench/schemathesis_hooks.py let some cases carry real images, so parameters reach the models.
The schemathesis run needs schemathesis (skipped without it); the other tests do not.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from servers import running_service

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance")
# Small limits keep the run fast (defaults below the limits: test_defaults_respect_small_limits).
ENV = {"FACESR_MAX_SAMPLES": "12", "FACESR_MAX_STEPS": "8", "FACESR_MAX_BATCH": "4",
       "FACESR_LOG_LEVEL": "warning"}
MIN_CASES = 500  # the long run (scripts/schemathesis_long.sh) needs >= 1000


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """`python -m service` on 127.0.0.1 with the tiny models; yields its base URL."""
    log = tmp_path_factory.mktemp("schema") / "server.log"
    with running_service(tiny_model_dir, ENV, log) as server:
        yield server.url


def server_errors(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(int(float(m.group(1))) for m in re.finditer(
        r'^facesr_requests_total\{[^}]*status="5\d\d"[^}]*\} (\S+)$', text, re.M))


@pytest.mark.slow
def test_schemathesis_short_run(server):
    pytest.importorskip("schemathesis")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "bench.schemathesis_hooks",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{server}/openapi.json",
           "--checks", CHECKS, "--max-examples", "100", "--seed", "1", "--workers", "1",
           "--request-timeout", "30", "--no-color"]
    before = server_errors(server)  # the fixture's polling saw 503 not_ready during warm-up
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    m = re.search(r"(\d+) generated, (\d+) passed", out)
    assert m, out[-3000:]
    generated, passed = int(m.group(1)), int(m.group(2))
    assert generated == passed >= MIN_CASES, out[-3000:]
    assert server_errors(server) == before  # the server counted no 5xx either
    models = httpx.get(f"{server}/metrics", timeout=10).text
    for path in ("/superresolve", "/samples", "/traverse", "/photo"):  # real images reached them
        assert f'facesr_requests_total{{endpoint="{path}",status="200"}}' in models, path


def test_malformed_multipart_status_is_documented(server):
    boundary = "b1"
    r = httpx.post(f"{server}/superresolve", content=f"--{boundary}\r\nNone--{boundary}--\r\n",
                   headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    documented = httpx.get(f"{server}/openapi.json").json()["paths"]["/superresolve"]["post"][
        "responses"]
    assert r.status_code < 500
    assert str(r.status_code) in documented, (r.status_code, r.text, sorted(documented))


def test_defaults_respect_small_limits(tiny_model_dir, astronaut_hr):
    """Without ?n or ?steps, the defaults must stay within the configured limits."""
    import io
    import warnings

    from PIL import Image

    from facesr_core.degradation import degrade
    from service.app import create_app
    from service.settings import Settings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    buf = io.BytesIO()
    degrade(Image.fromarray(astronaut_hr), 8).save(buf, "PNG")
    files = {"image": ("lr.png", buf.getvalue(), "image/png")}
    settings = Settings(model_dir=tiny_model_dir / "x8", max_samples=4, max_steps=4,
                        max_batch=2, warmup=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        samples = client.post("/samples?seed=1", files=files)
        frames = client.post("/traverse?seed=1", files=files)
    assert samples.status_code < 500, samples.text
    assert frames.status_code < 500, frames.text
