"""The gate every HTTP request passes.

In order: request metrics, API key, readiness and the declared body size (inference endpoints),
then the whole body is read under its own short deadline (FACESR_BODY_TIMEOUT_S), and only
then is the request admitted to inference (service/admission.py: cost in decodes, refused with
503 + Retry-After when it cannot finish before its deadline). A slow or stalled upload therefore
holds no inference slot; the per-request timeout covers the whole request. Pure ASGI, so a
refused upload is never read.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.admission import Refusal, Ticket
from service.docs import DOCS_PATHS, is_docs_path
from service.errors import (
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    Unavailable,
    UploadTimeout,
    error_response,
)

if TYPE_CHECKING:
    from service.app import ServiceState

TRUE_WORDS = ("1", "true", "t", "yes", "y", "on")  # what FastAPI's bool query reads as true
INFERENCE_PATHS = ("/superresolve", "/samples", "/traverse")
PUBLIC_PATHS = ("/health/live", "/health/ready", "/metrics", *DOCS_PATHS)
KNOWN_PATHS = (*INFERENCE_PATHS, *PUBLIC_PATHS, "/v1/models")
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, headers and small fields


def is_inference(scope: Scope) -> bool:
    return scope["method"] == "POST" and scope["path"] in INFERENCE_PATHS


def endpoint_label(path: str) -> str:
    """The metrics label of a path: itself when it is ours, 'other' otherwise (bounded)."""
    return path if path in KNOWN_PATHS else "other"


def request_cost(scope: Scope, max_samples: int, max_steps: int) -> int:
    """The work of an inference request in decodes, from its path and query (n, steps); an
    unreadable value counts as its default (the route then answers 422)."""
    path = scope["path"]
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    uncertain = (query.get("uncertainty") or [""])[-1].lower() in TRUE_WORDS
    if path == "/superresolve" and not uncertain:
        return 1
    name, limit, default = (("steps", max_steps, 8) if path == "/traverse"
                            else ("n", max_samples, 10))
    value = (query.get(name) or [""])[-1]
    count = int(value) if value.isdigit() else default
    count = max(1, min(count, limit))
    return count if path == "/traverse" else count + 1  # the mean and n samples


def bearer_token(authorization: str) -> str | None:
    """The token of an 'Authorization: Bearer <token>' header (the scheme in any case, RFC
    7235), or None."""
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


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
        start = time.monotonic()
        try:
            self._check(scope)
        except ServiceError as err:
            await self._refuse(err, scope, receive, send)
            return
        if not is_inference(scope):
            await self.app(scope, receive, send)
            return
        settings = self.state.settings
        try:
            body = await asyncio.wait_for(self._read_body(receive), settings.body_timeout_s)
        except asyncio.TimeoutError:
            err = UploadTimeout(f"the upload did not arrive within {settings.body_timeout_s} s: "
                                "send the whole body at once (behind a buffering proxy)")
            await self._refuse(err, scope, receive, send)
            return
        except ServiceError as err:
            await self._refuse(err, scope, receive, send)
            return
        if body is None:
            return  # the client went away
        deadline = start + settings.request_timeout_s
        admitted = self.state.admission.admit(
            request_cost(scope, settings.max_samples, settings.max_steps), deadline,
            settings.retry_after_s)
        if isinstance(admitted, Refusal):
            err = Unavailable(admitted.detail, admitted.retry_after_s, "overloaded")
            await self._refuse(err, scope, receive, send)
            return
        await self._serve(scope, replay(body, receive), send, status, admitted)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, status: dict,
                     ticket: Ticket) -> None:
        """Run the app for an admitted request, within what is left of its timeout."""
        state = self.state
        state.metrics.in_flight.inc()
        scope.setdefault("state", {})["ticket"] = ticket

        @functools.cache  # runs once
        def leave() -> None:
            ticket.release()
            state.metrics.in_flight.dec()

        send_leaving = before_last_body(send, leave)  # out of flight as the count moves
        timeout = state.settings.request_timeout_s
        try:
            await asyncio.wait_for(self.app(scope, receive, send_leaving),
                                   max(ticket.deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            if status["started"]:
                raise
            state.metrics.errors.labels(kind="timeout").inc()
            detail = f"the request took longer than {timeout} s"
            await error_response(504, "timeout", detail)(scope, receive, send_leaving)
        finally:
            leave()

    def _check(self, scope: Scope) -> None:
        """Raise the ServiceError that refuses this request before its body is read, if any."""
        path, headers = scope["path"], Headers(scope=scope)
        if self.api_key and path not in PUBLIC_PATHS and not is_docs_path(path):
            token = bearer_token(headers.get("authorization", ""))
            if token is None or not hmac.compare_digest(token.encode(), self.api_key.encode()):
                raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")
        if not is_inference(scope):
            return
        state = self.state
        if not state.ready:
            raise Unavailable(f"not ready: {state.status}", state.settings.retry_after_s,
                              "not_ready")
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
