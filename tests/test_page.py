"""The web page at / in a real browser (headless Chromium, bench/browser.py), against a real
service with an API key: a face crop (before/after, samples with PSNR, traversal), a whole photo
(boxes, crops, the pasted photo), and the service's errors as the page shows them.

Without Playwright or a Chromium the tests skip, except under CI=true, where they fail."""

import os

import httpx
import numpy as np
import pytest
from helpers import lr_png, png
from PIL import Image
from servers import running_service

from bench import browser
from bench.scene import compose

KEY = "page-test-key"
N = 4  # samples per face


@pytest.fixture(scope="module", autouse=True)
def chromium():
    reason = browser.missing_browser()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"the page test must run in CI: {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("page") / "server.log"
    with running_service(tiny_model_dir, {"FACESR_API_KEY": KEY}, log) as server:
        yield server


@pytest.fixture(scope="module")
def page(server):
    with browser.open_page(server.url + "/") as page:
        yield page


@pytest.fixture(scope="module")
def files(astronaut_hr, tmp_path_factory):
    root = tmp_path_factory.mktemp("uploads")
    faces = [astronaut_hr if k % 2 == 0 else astronaut_hr[:, ::-1].copy() for k in range(4)]
    scene = compose(faces, [14, 18, 22, 30], factor=4, seed=5)
    images = {"lr16.png": lr_png(astronaut_hr, 8), "hr128.png": png(astronaut_hr),
              "face20.png": png(Image.fromarray(astronaut_hr).resize((20, 20))),
              "hr_as_lr.png": png(astronaut_hr), "scene.png": png(scene.photo)}
    for name, data in images.items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """Screenshots of the page, kept with the test run's temporary files."""
    return tmp_path_factory.mktemp("page-screenshots")


def canvas_pixels(page, element: str) -> np.ndarray:
    data = page.evaluate("""(id) => {
        const c = document.getElementById(id);
        return [c.width, c.height,
                Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data)];
    }""", element)
    width, height, rgba = data
    return np.asarray(rgba, np.uint8).reshape(height, width, 4)[..., :3]


def natural_size(page, selector: str) -> tuple[int, int]:
    return tuple(page.eval_on_selector(selector, "img => [img.naturalWidth, img.naturalHeight]"))


def test_without_the_key_the_page_shows_the_services_401(page, files):
    error = browser.run(page, files / "lr16.png", "face")
    assert error is not None and "unauthorized (HTTP 401)" in error, error
    assert "API key" in error
    assert page.locator("#compare-section").is_hidden()


def test_face_crop_before_after_samples_and_traversal(page, files, artefacts):
    error = browser.run(page, files / "lr16.png", "face", KEY, reference=files / "hr128.png",
                        fields={"n": str(N), "steps": "6", "seed": "7"})
    page.screenshot(path=str(artefacts / "face.png"), full_page=True)
    assert error is None, error
    assert natural_size(page, "#after") == (128, 128)  # the SR face
    figures = page.locator("#samples figure")
    assert figures.count() == N + 1  # the ICAP mean and N samples
    captions = figures.all_inner_texts()
    assert captions[0].startswith("ICAP mean") and all(" dB" in c for c in captions), captions
    assert page.locator("#samples figure.best").count() == 1
    assert "seed 7" in page.inner_text("#samples-summary")
    assert natural_size(page, "#traverse") == (128, 128)  # the GIF's frames
    assert page.eval_on_selector("#traverse", "img => img.src").startswith("blob:")


def test_the_slider_compares_with_bicubic_as_pillow_computes_it(page, files):
    """The 'before' side is the LR face the model saw, upscaled as the service would: a 20 px
    face at x8 is resized to 16 px, then to 128 px (Pillow bicubic both times)."""
    page.select_option("#scale", "8")
    assert browser.run(page, files / "face20.png", "face", KEY, fields={"n": "1"}) is None
    lr = Image.open(files / "face20.png").resize((16, 16), Image.Resampling.BICUBIC)
    want = np.asarray(lr.resize((128, 128), Image.Resampling.BICUBIC), np.int16)
    got = canvas_pixels(page, "before").astype(np.int16)
    assert got.shape == want.shape
    # identical here; one level of slack, as Pillow rounds its weights to fixed point
    assert np.abs(got - want).max() <= 1
    page.select_option("#scale", "")


def test_whole_photo_boxes_crops_and_the_pasted_photo(page, files, server, artefacts):
    error = browser.run(page, files / "scene.png", "photo", KEY)
    page.screenshot(path=str(artefacts / "photo.png"), full_page=True)
    assert error is None, error
    headers = {"Authorization": f"Bearer {KEY}"}
    data = (files / "scene.png").read_bytes()
    answer = httpx.post(server.url + "/photo", params={"format": "json"}, headers=headers,
                        files={"image": ("scene.png", data)}, timeout=60).json()
    found = [face for face in answer["faces"] if face["scale"]]
    assert found, "the tiny model's service found no face to super-resolve"
    assert page.inner_text("#faces-summary").startswith(f"{answer['faces_found']} faces found")
    assert page.locator("#faces figure").count() == len(found)
    photo = Image.open(files / "scene.png")
    assert natural_size(page, "#after") == (answer["output_width"], answer["output_height"])
    assert answer["output_width"] == photo.width * answer["upscale"]
    boxes = canvas_pixels(page, "boxes")  # the input enlarged, with the boxes drawn over it
    zoom = boxes.shape[1] // photo.width
    x0, y0, _, _ = (int(v * zoom) for v in found[0]["box"])
    assert tuple(boxes[y0, x0 + 3]) == (0x1F, 0xD1, 0x4B)  # green: super-resolved


def test_service_errors_reach_the_page_in_its_words(page, files):
    error = browser.run(page, files / "hr_as_lr.png", "face", KEY)
    assert error is not None and error.startswith("/superresolve: invalid_image (HTTP 422): ")
    assert "128" in error  # the service's detail: a 128 px image is an HR face, not an LR one
    assert page.locator("#compare-section").is_hidden()

