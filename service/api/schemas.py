"""The response bodies (pydantic models, which both build the JSON and document it) and the
error responses every inference route declares."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from service.errors import ErrorBody

BINARY = {"schema": {"type": "string", "format": "binary"}}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in {
        400: "Malformed multipart/form-data body (the parser could not read it)",
        401: "API key missing or wrong (only when FACESR_API_KEY is set)",
        408: "The body did not arrive within FACESR_BODY_TIMEOUT_S",
        413: "Upload larger than FACESR_MAX_UPLOAD_BYTES, or more pixels than FACESR_MAX_PIXELS",
        415: "Not a PNG, JPEG, WebP or BMP file, or not multipart/form-data",
        422: "Corrupt or truncated image, an input size the rules refuse, or bad parameters",
        500: "Inference failed",
        503: "Warming up, overloaded or shutting down (see Retry-After)",
        504: "Took longer than FACESR_REQUEST_TIMEOUT_S",
    }.items()
}


class SampleEntry(BaseModel):
    kind: Literal["mean", "sample"]
    draw: int | None  # which draw of the seed (None for the mean)
    log_density: float
    psnr: float | None
    ssim: float | None
    best: bool
    identity_distance: float | None = None  # to identity_reference (dlib; < 0.6: same person)
    same_person: bool | None = None
    image: str  # base64 PNG, 128x128


class UncertaintyMap(BaseModel):
    """Per-pixel standard deviation of the n samples, RMS over RGB (service/README.md)."""

    dtype: Literal["float16"]
    shape: list[int]  # [128, 128]
    unit: str
    data: str  # base64 of little-endian float16, row-major
    mean: float
    max: float
    colour_scale_max: float  # the value at the top of the PNG's scale bar
    png: str  # base64 PNG: the colour-mapped map with its scale bar


class SampledAnswer(BaseModel):
    """What every answer built from n samples of one seed starts with."""

    model: str
    version: str
    scale: int
    seed: int
    draws: str  # principal or icap (the paper's)
    temperature: float
    n: int


class SuperresolveUncertainty(SampledAnswer):
    format: str
    adjustments: list[str]
    image: str  # base64 of the SR face in `format`
    uncertainty: UncertaintyMap


class SamplesResponse(SampledAnswer):
    reference: bool
    best: int | None  # position of the best sample in `samples` (with a reference)
    adjustments: list[str]
    identity_reference: bool = False  # samples ordered by identity distance to it
    uncertainty: UncertaintyMap | None = None  # with ?uncertainty=true
    samples: list[SampleEntry]


class Frame(BaseModel):
    alpha: float
    image: str  # base64 PNG, 128x128


class TraverseResponse(BaseModel):
    model: str
    version: str
    scale: int
    seed: int
    seed_end: int | None
    draws: str
    temperature: float
    steps: int
    adjustments: list[str]
    frames: list[Frame]


class Liveness(BaseModel):
    status: Literal["alive"] = "alive"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    scales: list[int]


class ModelsResponse(BaseModel):
    ready: bool
    status: str
    detail: str  # why the service is not ready (empty when it is)
    scales_supported: list[int]
    models: list[dict[str, Any]]  # service.engine.Runner.info() of each model
