"""Shared fixtures: a tiny exported model directory and a real face photo."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before any test imports onnxruntime


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """models/x4, x8, x16: one tiny exported StochasticSR (random weights) per scale, with its
    int8 graphs.

    The decoder's last conv is zero-initialised (global residual); it gets small random weights
    so that different latents give different images. x4 and x16 are copies of the x8 graphs
    with their own manifests (exporting three times costs ~3 s each).
    """
    import torch

    from facesr_core.degradation import lr_size
    from facesr_core.manifest import MANIFEST_NAME
    from training.config import ModelConfig
    from training.export import export_model
    from training.models import StochasticSR
    from training.quantize import add_int8

    torch.manual_seed(0)
    model = StochasticSR(ModelConfig.preset("tiny"))
    with torch.no_grad():
        conv = model.sr.decoder.ConvBlock3
        conv.weight.normal_(0.0, 0.05)
        conv.bias.normal_(0.0, 0.01)
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.normal_(0.0, 0.05)
            bn.running_var.uniform_(0.8, 1.2)
    root = tmp_path_factory.mktemp("models")
    export_model(model, root / "x8", scale=8, preset="tiny", version="test-1",
                 metrics={"psnr": 20.0, "note": "random weights"})
    # int8 graphs calibrated on the fallback photos: no pack, so no loss recorded (auto: fp32)
    manifest = add_int8(root / "x8", count=16)
    for scale in (4, 16):
        shutil.copytree(root / "x8", root / f"x{scale}")
        copy = manifest.model_copy(update={"name": f"x{scale}", "scale": scale,
                                           "lr_size": lr_size(scale)})
        (root / f"x{scale}" / MANIFEST_NAME).write_text(copy.model_dump_json(indent=2))
    return root


@pytest.fixture(scope="session")
def pack(tmp_path_factory) -> Path:
    """A pack of 24 synthetic faces (training/data.py format), 4 test and 4 val."""
    from synthetic import blob_face

    from training.data import collect_faces, write_pack

    root = tmp_path_factory.mktemp("faces")
    (root / "imgs").mkdir()
    for k in range(24):
        blob_face(k).save(root / "imgs" / f"{k:03d}.png")
    faces = collect_faces(utkface=root / "imgs", n_test=4, n_val=4)
    write_pack(faces, root / "pack.npz", progress=False)
    return root / "pack.npz"


@pytest.fixture(scope="session")
def astronaut_hr() -> np.ndarray:
    """A real 128x128 face: the astronaut (Eileen Collins) from scikit-image, uint8 RGB."""
    from PIL import Image
    from skimage import data

    from facesr_core.degradation import to_hr

    return np.asarray(to_hr(Image.fromarray(data.astronaut()[25:205, 150:330])))


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A copy of the tiny x8 model in tmp_path/models/x8, free to edit."""
    root = tmp_path / "models"
    shutil.copytree(tiny_model_dir / "x8", root / "x8")
    return root / "x8"


@pytest.fixture
def make_app(tiny_model_dir):
    """In-process apps on the x8 model alone, no warm-up: make(routers, **settings) ->
    (client, state), with these extra routers; closed at the end of the test."""
    import warnings

    from helpers import settings_for

    from service.app import create_app

    with warnings.catch_warnings():  # starlette's notice about httpx2, not about our code
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    clients = []

    def make(routers=(), model_dir=tiny_model_dir / "x8", **overrides):
        settings = settings_for(model_dir, **{"warmup": False, **overrides})
        app = create_app(settings)
        for router in routers:
            app.include_router(router)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client, client.app.state.svc

    yield make
    for c in clients:
        c.__exit__(None, None, None)
