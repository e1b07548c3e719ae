"""Errors are exceptions with an HTTP status, turned into `{"error", "detail"}` JSON in one place.

ServiceError subclasses Starlette's HTTPException on purpose: FastAPI re-raises HTTPExceptions
that happen while it parses the body (the upload limit fires there) instead of wrapping them in
a generic 400.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("facesr.errors")

# Error codes of plain HTTPExceptions (routing, body parsing) by status.
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "upload_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str
    detail: str


class ServiceError(StarletteHTTPException):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=self.status, detail=detail, headers=headers)


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMedia(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidImage(ServiceError):
    status, code = 422, "invalid_image"


class InvalidParameter(ServiceError):
    status, code = 422, "invalid_parameter"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"

    def __init__(self, detail: str):
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Unavailable(ServiceError):
    """503 with Retry-After: overloaded, warming up or shutting down."""

    status, code = 503, "unavailable"

    def __init__(self, detail: str, retry_after_s: int, code: str | None = None):
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})
        self.code = code or self.code


class UploadTimeout(ServiceError):
    """408: the request body did not arrive within FACESR_BODY_TIMEOUT_S."""

    status, code = 408, "upload_timeout"


class RequestTimeout(ServiceError):
    """504: the request did not finish within FACESR_REQUEST_TIMEOUT_S."""

    status, code = 504, "timeout"


class InferenceFailed(ServiceError):
    status, code = 500, "inference_failed"


def error_code(exc: StarletteHTTPException) -> str:
    if isinstance(exc, ServiceError):
        return exc.code
    return _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")


def error_response(status: int, code: str, detail: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI, count_error: Callable[[str], None]) -> None:
    """One handler per exception family, all answering ErrorBody JSON."""

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = error_code(exc)
        count_error(code)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, code, detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and not ctype.startswith("multipart/form-data"):
            count_error("unsupported_media_type")
            return error_response(415, "unsupported_media_type",
                                  f"got Content-Type {ctype or 'none'!r}: send multipart/form-data "
                                  "with the image file in the field 'image'")
        count_error("invalid_parameter")
        return error_response(422, "invalid_parameter", _validation_detail(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        count_error("internal_error")
        return error_response(500, "internal_error", f"{type(exc).__name__}: unexpected error")
