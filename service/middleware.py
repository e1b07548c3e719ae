"""The gate every HTTP request passes, before its body is read.

In order: request metrics, API key, readiness and in-flight limit (inference endpoints),
body size limit, per-request timeout. Pure ASGI, so a refused upload is never read.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.docs import DOCS_PATHS, is_docs_path
from service.errors import PayloadTooLarge, ServiceError, Unauthorized, Unavailable, error_response

if TYPE_CHECKING:
    from service.app import ServiceState

INFERENCE_PATHS = ("/superresolve", "/samples", "/traverse")
PUBLIC_PATHS = ("/health/live", "/health/ready", "/metrics", *DOCS_PATHS)
KNOWN_PATHS = (*INFERENCE_PATHS, *PUBLIC_PATHS, "/v1/models")
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, headers and small fields


def is_inference(scope: Scope) -> bool:
    return scope["method"] == "POST" and scope["path"] in INFERENCE_PATHS


def endpoint_label(path: str) -> str:
    """The metrics label of a path: itself when it is ours, 'other' otherwise (bounded)."""
    return path if path in KNOWN_PATHS else "other"


def before_last_body(send: Send, action: Callable[[], None]) -> Send:
    """`send`, running `action` just before the last body message, so that a client holding the
    whole response already sees its effect (e.g. on /metrics). Make `action` run-once."""
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            action()
        await send(message)
    return wrapped


class Gate:
    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app, self.state = app, state
        s = state.settings
        self.body_limit = 2 * s.max_upload_bytes + FORM_OVERHEAD  # image + reference
        self.api_key = s.api_key.get_secret_value()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_label(scope["path"])
        status = {"code": 500, "started": False}
        start = time.perf_counter()

        @functools.cache  # runs once: before the last body, or at the end when there was none
        def record() -> None:
            metrics = self.state.metrics
            metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()
            metrics.request_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - start)

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        try:
            await self._handle(scope, receive, before_last_body(send_tracked, record), status)
        finally:
            record()  # no complete response (an error, a disconnect): counted here

    async def _handle(self, scope: Scope, receive: Receive, send: Send, status: dict) -> None:
        try:
            self._admit(scope)
        except ServiceError as err:
            await self._refuse(err, scope, receive, send)
            return
        if not is_inference(scope):
            await self.app(scope, receive, send)
            return
        state = self.state
        state.in_flight += 1
        state.metrics.in_flight.inc()

        @functools.cache  # runs once
        def leave() -> None:
            state.in_flight -= 1
            state.metrics.in_flight.dec()

        send_leaving = before_last_body(send, leave)  # out of flight as the count moves
        try:
            await asyncio.wait_for(self.app(scope, self._limited(receive), send_leaving),
                                   state.settings.request_timeout_s)
        except asyncio.TimeoutError:
            if status["started"]:
                raise
            state.metrics.errors.labels(kind="timeout").inc()
            detail = f"the request took longer than {state.settings.request_timeout_s} s"
            await error_response(504, "timeout", detail)(scope, receive, send_leaving)
        finally:
            leave()

    def _admit(self, scope: Scope) -> None:
        """Raise the ServiceError that refuses this request, if any."""
        path, headers = scope["path"], Headers(scope=scope)
        if self.api_key and path not in PUBLIC_PATHS and not is_docs_path(path):
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")
        if not is_inference(scope):
            return
        state = self.state
        retry = state.settings.retry_after_s
        if not state.ready:
            raise Unavailable(f"not ready: {state.status}", retry, "not_ready")
        if state.in_flight >= state.settings.max_in_flight:
            raise Unavailable(f"overloaded: {state.in_flight} requests in flight (limit "
                              f"{state.settings.max_in_flight}); retry later", retry, "overloaded")
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.body_limit:
            raise PayloadTooLarge(f"request body is {length} bytes, the limit is "
                                  f"{self.body_limit} (two images of at most "
                                  f"{state.settings.max_upload_bytes} bytes)")

    async def _refuse(self, err: ServiceError, scope: Scope, receive: Receive,
                      send: Send) -> None:
        self.state.metrics.errors.labels(kind=err.code).inc()
        response = error_response(err.status_code, err.code, str(err.detail), err.headers)
        await response(scope, receive, send)

    def _limited(self, receive: Receive) -> Receive:
        """receive() that raises 413 once the body grows past the limit (chunked uploads)."""
        seen = 0
        limit = self.body_limit

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
            return message

        return limited
