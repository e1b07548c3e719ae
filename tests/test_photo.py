"""Whole photos: detection, crops, scale choice, one batched call, feathered paste, /photo and
facesr-photo. Scenes are composited at test time from scikit-image's astronaut (bench/scene.py)."""

import base64
import io
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from bench.scene import compose, matches
from service import photo as pipeline
from service.app import create_app
from service.engine import load_models
from service.faces import Face, FaceDetector
from service.photo import PhotoOptions, choose_scale, cut, feather, process
from service.photo_cli import main as photo_cli
from service.settings import Settings

with warnings.catch_warnings():  # starlette's notice about httpx2, not about our code
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

WIDTHS = list(np.geomspace(12, 40, 10))  # face widths in the photo, px
SHIPPED = pipeline.__file__.rsplit("/service/", 1)[0] + "/models"


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def scene(astronaut_hr):
    """Ten astronaut faces 12-40 px wide (every other one mirrored), original at 4x."""
    faces = [astronaut_hr if k % 2 == 0 else astronaut_hr[:, ::-1].copy() for k in range(10)]
    return compose(faces, WIDTHS, factor=4, seed=3)


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


@pytest.fixture(scope="module")
def tiny_runners(tiny_model_dir):
    return load_models(Settings(model_dir=tiny_model_dir, cpu_chunk=64))


def test_detector_finds_small_faces(scene, detector):
    faces, up = detector.detect(scene.photo)
    assert up == 4  # a small photo is searched at the full upscale
    found = matches(scene.boxes, np.asarray([f.box for f in faces]).reshape(-1, 4))
    assert sum(k is not None for k in found) >= 9, found  # >= 90% of the 12-40 px faces
    assert len(faces) <= len(scene.boxes) + 2  # and few false positives
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)


def test_detector_finds_nothing_in_a_faceless_photo(detector):
    smooth = np.asarray(Image.fromarray(np.random.default_rng(0).integers(
        0, 255, (6, 8, 3), dtype=np.uint8)).resize((160, 120), Image.Resampling.BICUBIC))
    assert detector.detect(smooth)[0] == []


def test_crop_frames_the_face_like_the_training_crops():
    face = Face((100.0, 50.0, 130.0, 80.0), 1.0)  # 30 px box
    left, top, side = face.crop()
    assert side == pytest.approx(50.0)  # the box is 0.6 of the crop
    assert left == pytest.approx(90.0)
    assert top + 0.578 * side == pytest.approx(65.0)  # the box centre sits 0.578 down


@pytest.mark.parametrize(("side", "scale", "want"), [
    (32, None, 4), (24, None, 4), (16, None, 8), (18, None, 8), (8, None, 16), (10, None, 16),
    (41, None, None), (3, None, None), (24, 8, None), (20, 8, 8), (24, 4, 4)])
def test_scale_from_the_crop_size_or_the_callers(side, scale, want):
    chosen, why = choose_scale(side, scale, (4, 8, 16))
    assert chosen == want
    assert (why is None) == (want is not None)


def test_cut_pads_with_the_edge_outside_the_photo():
    photo = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    out = cut(photo, -2, 3, 4)
    assert out.shape == (4, 4, 3)
    assert (out[:2, 2:] == photo[3:5, 0:2]).all()
    assert (out[:2, 0] == photo[3:5, 0]).all()  # left padding repeats column 0
    assert (out[2:] == out[1]).all()  # bottom padding repeats the last row


def test_feather_is_zero_at_the_edge_and_one_inside():
    w = feather(100)[..., 0]
    assert w[0, 50] < 0.01 and w[50, 0] < 0.01
    assert w[20:80, 20:80].min() == 1.0
    assert (np.diff(w[50, :16]) >= 0).all()  # rises smoothly into the face


def test_pipeline_is_one_batched_call_per_scale(scene, detector, tiny_runners, monkeypatch):
    calls = []
    for scale, runner in tiny_runners.items():
        original = runner._run
        monkeypatch.setattr(runner, "_run", lambda graph, feeds, s=scale, f=original: (
            calls.append((s, graph, len(next(iter(feeds.values()))))), f(graph, feeds))[1])
    result = process(scene.photo, detector, tiny_runners, PhotoOptions(upscale=4))
    h, w = scene.photo.shape[:2]
    assert result.image.shape == (h * 4, w * 4, 3)
    per_scale = {}
    for p in result.faces:
        if p.scale is not None:
            per_scale[p.scale] = per_scale.get(p.scale, 0) + 1
            assert p.image.shape == (128, 128, 3)
            assert p.lr.shape[0] == 128 // p.scale
    assert sum(per_scale.values()) >= 5
    assert sorted(calls) == sorted((s, g, n) for s, n in per_scale.items()
                                   for g in ("icap", "encoder", "decoder"))


def test_paste_leaves_the_photo_bicubic_away_from_faces_and_at_crop_edges(scene, detector,
                                                                          tiny_runners):
    result = process(scene.photo, detector, tiny_runners, PhotoOptions(upscale=4))
    h, w = scene.photo.shape[:2]
    bicubic = np.asarray(Image.fromarray(scene.photo).resize((w * 4, h * 4),
                                                             Image.Resampling.BICUBIC))
    touched = np.zeros((h * 4, w * 4), bool)
    for p in result.faces:
        if p.image is None:
            continue
        left, top, side = (v * 4 for v in p.crop)
        touched[max(top, 0):top + side, max(left, 0):left + side] = True
        ring = np.zeros_like(touched)  # the crop's outermost pixels: weight ~0, no seam
        ring[max(top, 0):top + side, max(left, 0):left + side] = True
        ring[max(top + 1, 0):top + side - 1, max(left + 1, 0):left + side - 1] = False
        diff = np.abs(result.image[ring].astype(int) - bicubic[ring].astype(int))
        assert diff.max() <= 2, p.crop
    assert (result.image[~touched] == bicubic[~touched]).all()
    assert (result.image[touched] != bicubic[touched]).any()


@pytest.mark.slow
def test_shipped_models_beat_bicubic_on_the_face_regions(scene, detector):
    """The done-when, on a test-time composite: the faces of the returned photo are closer to
    the original (PSNR) than the bicubic upscale's."""
    runners = load_models(Settings(model_dir=SHIPPED))
    result = process(scene.photo, detector, runners, PhotoOptions(upscale=4))
    h, w = scene.photo.shape[:2]
    bicubic = np.asarray(Image.fromarray(scene.photo).resize((w * 4, h * 4),
                                                             Image.Resampling.BICUBIC))
    found = matches(scene.boxes, np.asarray([p.face.box for p in result.faces]).reshape(-1, 4))
    done = [box for box, k in zip(scene.boxes, found, strict=True)
            if k is not None and result.faces[k].scale is not None]
    assert len(done) >= 4

    def error(img: np.ndarray) -> float:
        return float(np.mean([np.mean((img[y0:y1, x0:x1].astype(float)
                                       - scene.original[y0:y1, x0:x1]) ** 2)
                              for x0, y0, x1, y1 in (np.rint(np.asarray(done) * 4)
                                                     .astype(int))]))

    assert error(result.image) < error(bicubic)


@pytest.fixture(scope="module")
def app_client(tiny_model_dir):
    settings = Settings(model_dir=tiny_model_dir, api_key="k3y", max_samples=4, max_faces=16,
                        max_output_pixels=4_000_000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = "Bearer k3y"
        for _ in range(600):
            if client.get("/health/ready").status_code == 200:
                break
            import time
            time.sleep(0.1)
        yield client


def test_photo_endpoint_returns_the_upscaled_photo(app_client, scene):
    r = app_client.post("/photo?upscale=4", files={"image": ("s.png", png(scene.photo))})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    h, w = scene.photo.shape[:2]
    assert pixels(r.content).shape == (h * 4, w * 4, 3)
    assert int(r.headers["x-facesr-faces"]) >= 9
    assert "detect;dur=" in r.headers["server-timing"]
    metrics = app_client.get("/metrics").text
    assert 'facesr_requests_total{endpoint="/photo",status="200"}' in metrics


def test_photo_json_has_boxes_scores_scales_and_crops(app_client, scene):
    r = app_client.post("/photo?format=json&samples=2&seed=5",
                        files={"image": ("s.png", png(scene.photo))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["faces_found"] == len(body["faces"]) >= 9
    assert body["upscale"] == min(f["scale"] for f in body["faces"] if f["scale"])
    for face in body["faces"]:
        assert len(face["box"]) == 4 and isinstance(face["score"], float)
        if face["scale"] is None:
            assert face["skipped"] and face["image"] is None
            continue
        assert pixels(base64.b64decode(face["image"])).shape == (128, 128, 3)
        lr = 128 // face["scale"]
        assert pixels(base64.b64decode(face["input"])).shape == (lr, lr, 3)
        assert len(face["samples"]) == 2
    used = {str(f["scale"]) for f in body["faces"] if f["scale"]}
    assert body["draws"] == {s: "icap" for s in used}  # the test models ship no basis
    assert set(body["temperature"]) == used
    again = app_client.post("/photo?format=json&samples=2&seed=5",
                            files={"image": ("s.png", png(scene.photo))})
    assert again.content == r.content  # the seed replays the draws


@pytest.mark.parametrize(("query", "status"), [
    ("samples=2", 422), ("upscale=17", 422), ("max_faces=17", 422), ("scale=3", 422),
    ("upscale=16", 413), ("format=json&samples=2&draws=principal", 422),
    ("draws=sideways", 422)])
def test_photo_refusals(app_client, scene, query, status):
    r = app_client.post(f"/photo?{query}", files={"image": ("s.png", png(scene.photo))})
    assert r.status_code == status, r.text
    assert r.json()["error"]


def test_photo_needs_the_api_key_and_is_in_the_schema(app_client):
    r = app_client.post("/photo", files={"image": ("s.png", b"x")},
                        headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    schema = app_client.get("/openapi.json").json()
    params = {p["name"] for p in schema["paths"]["/photo"]["post"]["parameters"]}
    assert {"scale", "upscale", "samples", "seed", "temperature", "draws", "max_faces",
            "format"} <= params


def test_cli_writes_what_the_endpoint_returns(app_client, scene, tiny_model_dir, tmp_path,
                                              capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "group.png").write_bytes(png(scene.photo))
    (folder / "empty.png").write_bytes(png(np.full((40, 50, 3), 128, np.uint8)))
    photo_cli([str(folder), "--out", str(tmp_path / "out"), "--model-dir", str(tiny_model_dir),
               "--upscale", "4"])
    assert "photos" in capsys.readouterr().err  # the progress bar
    http = app_client.post("/photo?upscale=4", files={"image": ("s.png", png(scene.photo))})
    assert (pixels((tmp_path / "out" / "group.png").read_bytes())
            == pixels(http.content)).all()
    http_json = app_client.post("/photo?upscale=4&format=json",
                                files={"image": ("s.png", png(scene.photo))})
    assert (tmp_path / "out" / "group.json").read_bytes() == http_json.content
    empty = json.loads((tmp_path / "out" / "empty.json").read_text())
    assert empty["faces"] == [] and empty["output_width"] == 200


def test_cli_refuses_principal_draws_where_a_model_ships_no_basis(scene, tiny_model_dir,
                                                                  tmp_path):
    (tmp_path / "group.png").write_bytes(png(scene.photo))
    with pytest.raises(SystemExit, match="--draws: x.*ships no principal basis"):
        photo_cli([str(tmp_path / "group.png"), "--out", str(tmp_path / "out"),
                   "--model-dir", str(tiny_model_dir), "--samples", "1", "--draws", "principal"])
    assert not (tmp_path / "out").exists()  # refused before any work
