"""Helpers shared by the tests: settings, uploads, answers and metrics of the service; the
command lines' --help; a tiny training configuration."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from facesr_core.degradation import degrade
from facesr_core.manifest import (
    MANIFEST_NAME,
    QuantizationLoss,
    load_manifest,
    write_manifest,
)
from service.settings import Settings
from training.config import TrainConfig

LIMITS = {  # small limits keep warm-up and the over-limit payloads cheap
    "FACESR_MAX_SAMPLES": "16", "FACESR_MAX_STEPS": "16", "FACESR_MAX_BATCH": "4",
    "FACESR_MAX_WAIT_MS": "30", "FACESR_MAX_UPLOAD_BYTES": "300000",
    "FACESR_MAX_PIXELS": "1000000", "FACESR_MAX_IN_FLIGHT": "4", "FACESR_REQUEST_TIMEOUT_S": "30",
}


def settings_for(model_dir: Path, env: dict[str, str] = LIMITS, **overrides) -> Settings:
    values = {k.removeprefix("FACESR_").lower(): v for k, v in env.items()}
    return Settings(model_dir=model_dir, **{**values, **overrides})


def png(img: Image.Image | np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    img = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def lr_png(hr: np.ndarray, scale: int = 8) -> bytes:
    """The LR face of an HR face (uint8 RGB), degraded as training does, as PNG bytes."""
    return png(degrade(Image.fromarray(hr), scale))


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def upload(data: bytes, reference: bytes | None = None) -> dict:
    files = {"image": ("face.png", data, "application/octet-stream")}
    if reference is not None:
        files["reference"] = ("hr.png", reference, "image/png")
    return files


def wait_ready(client: httpx.Client, proc: subprocess.Popen | None = None,
               timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if client.get("/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError("server not ready")


def metric(text: str, name: str, /, **labels) -> float:
    """The value of one sample in Prometheus exposition text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted(p for p in re.findall(r'\w+="[^"]*"', m.group(3) or "")
                              if p.split("=")[0] in labels))
        if got == want:
            return float(m.group(4))
    return 0.0


def assert_error(r: httpx.Response, status: int, error: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"} and body["detail"]
    if error:
        assert body["error"] == error, body
    return body


class Gated:
    """Wraps an ORT session: run() waits for `release` (and may fail)."""

    def __init__(self, session, fail: bool = False):
        self.session, self.fail = session, fail
        self.entered, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, *args, **kw):
        self.entered.set()
        self.release.wait(30)
        if self.fail:
            raise RuntimeError("simulated ONNX Runtime failure")
        return self.session.run(*args, **kw)


def gate_decoder(state, fail: bool = False) -> Gated:
    """Make the x8 model's decoder wait for `release` (and maybe fail)."""
    runner = state.runners[8]
    gated = Gated(runner.sessions["decoder"], fail)
    runner.sessions["decoder"] = gated
    return gated


def edit_manifest(folder: Path, **changes) -> None:
    """Overwrite top-level fields of folder's manifest.json (no validation: tests of refusals)."""
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def model_copy_with_int8_loss(tiny_model_dir: Path, out: Path, loss_db: float | None) -> Path:
    """A copy of the x8 model whose manifest records this int8 loss on two test splits (None:
    no int8 graphs in the manifest, and none on disk)."""
    shutil.copytree(tiny_model_dir / "x8", out)
    manifest = load_manifest(out)
    if loss_db is None:
        for f in manifest.int8.files.values():
            (out / f.path).unlink()
        int8 = None
    else:
        loss = QuantizationLoss(count=300, psnr_fp32=25.0, psnr_int8=25.0 - loss_db,
                                loss_db=loss_db)
        int8 = manifest.int8.model_copy(update={"loss": {"celeba_test": loss,
                                                         "utkface_test": loss}})
    write_manifest(out, manifest.model_copy(update={"int8": int8}))
    return out


FLAG_LINE = re.compile(r"^  (-\w, )?--[\w-]+")


def flags_without_help(help_text: str) -> list[str]:
    """Option lines of argparse's help with no text beside or under them."""
    lines = help_text.splitlines()
    bare = []
    for i, line in enumerate(lines):
        if not FLAG_LINE.match(line) or line.startswith("  -h, --help"):
            continue
        beside = re.search(r"\S\s{2,}\S", line.strip())
        under = i + 1 < len(lines) and re.match(r"^ {10,}\S", lines[i + 1])
        if not (beside or under):
            bare.append(line.strip())
    return bare


def tiny_cfg(pack: Path, out: Path, **kw) -> TrainConfig:
    """A training run of a few steps of the tiny preset on the test pack; kw overrides."""
    base = dict(data=str(pack), out=str(out), scale=8, preset="tiny", phase1_steps=3,
                phase2_steps=2, batch_size=4, log_every=1, ckpt_every=100, sample_every=100)
    return TrainConfig(**{**base, **kw})
