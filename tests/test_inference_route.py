"""service/api/inference_route.py: a route declared with the documented pattern (an
InferenceRouter, and `work: Annotated[Ticket, admit(cost)]`) gets readiness, admission, the
deadline, the API key, the body limit and its own metrics label, with no list to edit. The
route here exists only in this test."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import pytest
from fastapi.responses import Response
from helpers import assert_error, metric

from service.admission import Ticket
from service.api.inference_route import InferenceRouter, admit
from service.api.params import ImageField
from service.state import StateDep

PATH = "/throwaway"


def throwaway_router(hold: threading.Event) -> InferenceRouter:
    """POST /throwaway: the image's size in bytes, computed in the inference pool once `hold`
    is set."""
    router = InferenceRouter()

    def size_when_released(data: bytes) -> int:
        hold.wait(30)
        return len(data)

    @router.post(PATH, response_class=Response)
    async def throwaway(state: StateDep, work: Annotated[Ticket, admit()],
                        image: ImageField) -> Response:
        size, _, _ = await state.infer(work, size_when_released, await image.read())
        return Response(str(size), media_type="text/plain")

    return router


def files(size: int = 100) -> dict:
    return {"image": ("f.bin", b"\0" * size, "application/octet-stream")}


@pytest.fixture
def released():
    hold = threading.Event()
    hold.set()
    return hold


def test_it_serves_and_counts_under_its_own_label(make_app, released):
    client, state = make_app(routers=[throwaway_router(released)])
    r = client.post(PATH, files=files(100))
    assert r.status_code == 200 and r.text == "100"
    text = client.get("/metrics").text
    assert metric(text, "facesr_requests_total", endpoint=PATH, status="200") == 1
    assert metric(text, "facesr_request_duration_seconds_count", endpoint=PATH) == 1
    assert metric(text, "facesr_requests_in_flight") == 0 and state.in_flight == 0


def test_not_ready_is_a_503(make_app, released, tmp_path):
    client, _ = make_app(routers=[throwaway_router(released)], model_dir=tmp_path / "none")
    r = client.post(PATH, files=files())
    assert_error(r, 503, "not_ready")
    assert r.headers["retry-after"] == "1"
    assert metric(client.get("/metrics").text, "facesr_requests_total", endpoint=PATH,
                  status="503") == 1


def test_overload_is_a_503_and_the_deadline_a_504(make_app):
    hold = threading.Event()
    client, state = make_app(routers=[throwaway_router(hold)], max_in_flight=1,
                             request_timeout_s=2, retry_after_s=3)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, PATH, files=files())
        deadline = time.monotonic() + 10
        while state.in_flight < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = client.post(PATH, files=files())
        assert_error(r, 503, "overloaded")
        assert r.headers["retry-after"] == "3"  # FACESR_RETRY_AFTER_S
        body = assert_error(first.result(30), 504, "timeout")
    assert "2.0 s" in body["detail"]
    hold.set()
    assert state.in_flight == 0
    assert metric(client.get("/metrics").text, "facesr_errors_total", kind="timeout") == 1


def test_api_key_is_a_401(make_app, released):
    client, _ = make_app(routers=[throwaway_router(released)], api_key="s3cret")
    assert_error(client.post(PATH, files=files()), 401, "unauthorized")
    r = client.post(PATH, files=files(), headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200, r.text


def test_body_limit_is_a_413(make_app, released):
    client, state = make_app(routers=[throwaway_router(released)], max_upload_bytes=1024)
    too_big = state.settings.max_body_bytes + 1
    assert_error(client.post(PATH, files=files(too_big)), 413, "payload_too_large")
    assert metric(client.get("/metrics").text, "facesr_requests_total", endpoint=PATH,
                  status="413") == 1


def test_a_route_without_admission_cannot_be_declared():
    router = InferenceRouter()
    with pytest.raises(TypeError, match="does not take the admission dependency"):
        @router.post("/sneaky")
        async def sneaky(image: ImageField) -> Response:
            return Response()
