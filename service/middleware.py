"""The gate every HTTP request passes before the app sees it: only what must happen before the
body is read. Pure ASGI, so a refused upload is never read.

- Its metrics (facesr_requests_total, facesr_request_duration_seconds), labelled with the path
  template of the route it matches in the app's route table (`other` when none does).
- Its arrival time (`request.state.arrived_at`), from which the inference deadline counts.
- Its whole body, read under its own short deadline (FACESR_BODY_TIMEOUT_S, else 408) and the
  body limit (413, from Content-Length before reading, or while reading), then replayed to the
  app. A slow or stalled upload therefore holds no inference slot: admission, auth and the
  request deadline are the inference routes' dependency (service/api/inference_route.py).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator, Sequence

from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, ServiceError, UploadTimeout, error_response
from service.state import ServiceState

OTHER = "other"  # the label of a request that matches no route (bounded label values)


def flat_routes(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route of a route table, those of included routers too (FastAPI >= 0.16x keeps an
    included router as one entry, with its routes in `original_router`)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from flat_routes(inner.routes)
        else:
            yield route


def route_label(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The path template of the route that serves `scope` (a route that matches the path but
    not the method counts, as the router answers 405 from it), or 'other'."""
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route.path
        if match is Match.PARTIAL and partial is None:
            partial = route.path
    return partial or OTHER


def before_last_body(send: Send, action: Callable[[], None]) -> Send:
    """`send`, running `action` just before the last body message, so that a client holding the
    whole response already sees its effect (e.g. on /metrics). Make `action` run-once."""
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            action()
        await send(message)
    return wrapped


class Gate:
    def __init__(self, app: ASGIApp, state: ServiceState, router: Router) -> None:
        self.app, self.state, self.router = app, state, router
        self.body_limit = state.settings.max_body_bytes

    @functools.cached_property
    def routes(self) -> list[BaseRoute]:
        """The app's route table, flat (read at the first request, once every route is in)."""
        return list(flat_routes(self.router.routes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        scope.setdefault("state", {})["arrived_at"] = start
        endpoint = route_label(self.routes, scope)
        status = {"code": 500}

        @functools.cache  # runs once: before the last body, or at the end when there was none
        def record() -> None:
            metrics = self.state.metrics
            metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()
            metrics.request_seconds.labels(endpoint=endpoint).observe(time.monotonic() - start)

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, before_last_body(send_tracked, record))
        finally:
            record()  # no complete response (an error, a disconnect): counted here

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        timeout = self.state.settings.body_timeout_s
        try:
            self._check_length(scope)
            body = await asyncio.wait_for(self._read_body(receive), timeout)
        except asyncio.TimeoutError:
            err = UploadTimeout(f"the upload did not arrive within {timeout} s: send the whole "
                                "body at once (behind a buffering proxy)")
            await self._refuse(err, scope, receive, send)
            return
        except ServiceError as err:
            await self._refuse(err, scope, receive, send)
            return
        if body is None:
            return  # the client went away
        await self.app(scope, replay(body, receive), send)

    def _check_length(self, scope: Scope) -> None:
        length = Headers(scope=scope).get("content-length")
        if length and length.isdigit() and int(length) > self.body_limit:
            raise PayloadTooLarge(f"request body is {length} bytes, the limit is "
                                  f"{self.body_limit} (two images of at most "
                                  f"{self.state.settings.max_upload_bytes} bytes)")

    async def _refuse(self, err: ServiceError, scope: Scope, receive: Receive,
                      send: Send) -> None:
        self.state.metrics.errors.labels(kind=err.code).inc()
        response = error_response(err.status_code, err.code, str(err.detail), err.headers)
        await response(scope, receive, send)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole request body (None if the client disconnected); 413 past the limit."""
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.body_limit:
                raise PayloadTooLarge(f"request body is over the limit of {self.body_limit} "
                                      "bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """receive() that returns the body already read as one message, then defers to `receive`
    (which then only reports the disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
