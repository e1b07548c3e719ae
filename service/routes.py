"""The HTTP endpoints. Handlers only validate, schedule and encode; the work lives elsewhere.

No `from __future__ import annotations` here: FastAPI reads the parameter annotations at
runtime, and some of them close over the settings.
"""

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel

from service import contact_sheet
from service.admission import Ticket
from service.engine import Runner, model_input
from service.errors import ErrorBody, InvalidParameter, PayloadTooLarge, Unavailable
from service.imaging import (
    MEDIA_TYPES,
    LRInput,
    animation,
    encode,
    encode_pil,
    prepare_lr,
    prepare_reference,
    strip,
)
from service.insight import (
    identity_distances,
    prepare_identity_reference,
    rank_by_identity,
    require_identity,
    uncertainty_body,
)
from service.sampling import (
    SEED_MAX,
    SampleSet,
    arrange,
    new_seed,
    sample_set,
    traverse_frames,
)

if TYPE_CHECKING:
    from service.app import ServiceState


class Scale(IntEnum):
    """The scale factors (an IntEnum: query strings like '4' validate, unlike a Literal)."""

    x4 = 4
    x8 = 8
    x16 = 16


MAX_TEMPERATURE = 10.0
BINARY = {"schema": {"type": "string", "format": "binary"}}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in {
        400: "Malformed multipart/form-data body (the parser could not read it)",
        401: "API key missing or wrong (only when FACESR_API_KEY is set)",
        413: "Upload larger than FACESR_MAX_UPLOAD_BYTES, or more pixels than FACESR_MAX_PIXELS",
        415: "Not a PNG, JPEG, WebP or BMP file, or not multipart/form-data",
        422: "Corrupt or truncated image, an input size the rules refuse, or bad parameters",
        500: "Inference failed",
        503: "Warming up, overloaded or shutting down (see Retry-After)",
        504: "Took longer than FACESR_REQUEST_TIMEOUT_S",
    }.items()
}
IMAGE_HELP = ("LR face crop: PNG, JPEG, WebP or BMP; 8, 16 or 32 px square infers the scale "
              "(x16, x8, x4)")
ImageField = Annotated[UploadFile, File(description=IMAGE_HELP)]
ScaleParam = Annotated[Scale | None, Query(description="4, 8 or 16; default: from the size")]
SeedParam = Annotated[int | None, Query(ge=0, le=SEED_MAX, description=(
    "samples: draws 0..n-1 of this seed; traverse: z_start = draw 0, z_end = draw 1 (unless "
    "seed_end); default: random, returned in X-FaceSR-Seed"))]
TemperatureParam = Annotated[float | None, Query(ge=0.0, le=MAX_TEMPERATURE, description=(
    "scales sigma; 0 gives the mean; default: the model's calibrated temperature "
    "(sample_temperature in /v1/models)"))]
UncertaintyParam = Annotated[bool, Query(description=(
    "add the uncertainty map: the per-pixel RMS difference of the n samples from the served "
    "face, as float16 base64 and a colour-mapped PNG with a scale bar"))]


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
    """Per-pixel RMS difference of the n samples from the served face (service/README.md)."""

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
    temperature: float
    steps: int
    adjustments: list[str]
    frames: list[Frame]


class Timings:
    """Stage durations of one request: each stage observed once in the histogram when the
    response is built (so failed requests do not count), and sent back as Server-Timing."""

    def __init__(self, state: "ServiceState", endpoint: str) -> None:
        self.metrics, self.endpoint, self.values = state.metrics, endpoint, {}

    def add(self, stage: str, seconds: float) -> None:
        self.values[stage] = self.values.get(stage, 0.0) + seconds

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def header(self) -> str:
        """The Server-Timing header; observes the stages (call once, at the end)."""
        for stage, seconds in self.values.items():
            self.metrics.observe_stage(self.endpoint, stage, seconds)
        return ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in self.values.items())


async def read_upload(upload: UploadFile, field: str, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"{field} is larger than the limit of {limit} bytes")
    return data


def decode_input(data: bytes, scale: int | None, scales: tuple[int, ...],
                 max_pixels: int) -> tuple[LRInput, np.ndarray]:
    """Upload bytes to the validated LR face and the network input x (3,128,128)."""
    lr = prepare_lr(data, scale, scales, max_pixels)
    return lr, model_input(lr.image)


async def admitted_work(request: Request) -> Ticket:
    """The admission ticket the gate gave this request (service/middleware.py), once the form
    is known to hold each file field at most once (a second `image` would silently win)."""
    form = await request.form()  # the form FastAPI parsed already (cached on the request)
    for name in ("image", "reference", "identity_reference"):
        if len(form.getlist(name)) > 1:
            raise InvalidParameter(f"the form holds {len(form.getlist(name))} '{name}' fields: "
                                   "send exactly one")
    return request.state.ticket


Work = Annotated[Ticket, Depends(admitted_work)]


def b64png(image: np.ndarray) -> str:
    return base64.b64encode(encode(image, "png")).decode("ascii")


def build_router(state: "ServiceState") -> APIRouter:
    s = state.settings
    router = APIRouter()
    protected = [Depends(HTTPBearer(auto_error=False))] if s.api_key.get_secret_value() else []

    def runner_for(lr: LRInput) -> Runner:
        return state.runners[lr.scale]

    async def prepare(image: UploadFile, scale: Scale | None,
                      timings: Timings) -> tuple[LRInput, np.ndarray]:
        data = await read_upload(image, "image", s.max_upload_bytes)
        scale = None if scale is None else int(scale)
        with timings.stage("decode"):
            return await asyncio.to_thread(decode_input, data, scale, state.scales, s.max_pixels)

    def headers(runner: Runner, lr: LRInput, timings: Timings, **extra: Any) -> dict[str, str]:
        out = {"X-FaceSR-Model": runner.manifest.name, "X-FaceSR-Version": runner.manifest.version,
               "X-FaceSR-Scale": str(lr.scale), "Server-Timing": timings.header()}
        if lr.adjustments:
            out["X-FaceSR-Adjustment"] = "; ".join(lr.adjustments)
        out.update({f"X-FaceSR-{k.replace('_', '-').title()}": str(v)
                    for k, v in extra.items() if v is not None})
        return out

    @router.post(
        "/superresolve", response_class=Response, dependencies=protected, tags=["inference"],
        summary="Super-resolve an LR face (the ICAP mean)",
        responses={200: {"content": {**{MEDIA_TYPES[f]: BINARY for f in ("png", "jpeg", "webp")},
                                     "application/json": {"schema": {
                                         "$ref": "#/components/schemas/SuperresolveUncertainty"}}},
                         "model": SuperresolveUncertainty,
                         "description": "The 128x128 SR face, in the requested format; with "
                                        "?uncertainty=true, JSON: the face (base64) and its "
                                        "uncertainty map"},
                   **ERRORS})
    async def superresolve(
        image: ImageField,
        work: Work,
        scale: ScaleParam = None,
        fmt: Annotated[Literal["png", "jpeg", "webp"], Query(alias="format")] = "png",
        uncertainty: UncertaintyParam = False,
        n: Annotated[int, Query(ge=1, le=s.max_samples, description=(
            "samples behind the uncertainty map (only with uncertainty=true)"))] = min(
                10, s.max_samples),
        seed: SeedParam = None,
        temperature: TemperatureParam = None,
    ) -> Response:
        timings = Timings(state, "/superresolve")
        lr, x = await prepare(image, scale, timings)
        if uncertainty:  # n samples beside the mean: the /samples path, not the micro-batcher
            seed = new_seed() if seed is None else seed
            runner = runner_for(lr)
            temperature = (runner.manifest.sample_temperature if temperature is None
                           else temperature)
            result, queued, ran = await state.infer(work, sample_set, runner, x, seed, n,
                                                    temperature)
            timings.add("queue", queued)
            timings.add("inference", ran)
            with timings.stage("encode"):
                body = await asyncio.to_thread(render_uncertain_face, runner, lr, result.images,
                                               seed, temperature, n, fmt)
            return Response(body, media_type="application/json",
                            headers=headers(runner, lr, timings, seed=seed))
        result = await state.batchers[lr.scale].submit(x, s.retry_after_s)
        work.finish()  # its batch has run: encoding its answer holds up no one's call
        timings.add("queue", result.queue_s)
        timings.add("inference", result.inference_s)
        with timings.stage("encode"):
            body = await asyncio.to_thread(encode, result.image, fmt)
        return Response(body, media_type=MEDIA_TYPES[fmt],
                        headers=headers(runner_for(lr), lr, timings, batch=result.batch_size))

    @router.post(
        "/samples", response_model=None, dependencies=protected, tags=["inference"],
        summary="The ICAP mean and n samples; best-of-n against an optional reference",
        responses={200: {"model": SamplesResponse, "content": {"image/png": BINARY},
                         "description": "JSON (default), or a PNG contact sheet (?format=png): "
                                        "mean first, then the samples by log-density"},
                   **ERRORS})
    async def samples(
        image: ImageField,
        work: Work,
        reference: Annotated[UploadFile | None,
                             File(description="HR face, exactly 128x128")] = None,
        identity_reference: Annotated[UploadFile | None, File(description=(
            "another photo of the same person (a face crop, centred; any size): samples are "
            "ordered by identity distance to it (needs the server's identity extra, else 422)"
        ))] = None,
        n: Annotated[int, Query(ge=1, le=s.max_samples,
                                description="samples")] = min(10, s.max_samples),
        seed: SeedParam = None,
        temperature: TemperatureParam = None,
        scale: ScaleParam = None,
        fmt: Annotated[Literal["json", "png"], Query(alias="format")] = "json",
        uncertainty: UncertaintyParam = False,
    ) -> Response:
        timings = Timings(state, "/samples")
        if identity_reference is not None:
            require_identity()
        lr, x = await prepare(image, scale, timings)
        id_ref = None
        if identity_reference is not None:
            id_data = await read_upload(identity_reference, "identity_reference",
                                        s.max_upload_bytes)
            with timings.stage("decode"):
                id_ref = await asyncio.to_thread(prepare_identity_reference, id_data,
                                                 s.max_pixels)
        ref = None
        if reference is not None:
            ref_data = await read_upload(reference, "reference", s.max_upload_bytes)
            with timings.stage("decode"):
                ref = await asyncio.to_thread(prepare_reference, ref_data, s.max_pixels)
        seed = new_seed() if seed is None else seed
        runner = runner_for(lr)
        temperature = runner.manifest.sample_temperature if temperature is None else temperature
        state.metrics.samples.labels(endpoint="/samples").observe(n)
        result, queued, ran = await state.infer(work, sample_set, runner, x, seed, n, temperature)
        timings.add("queue", queued)
        timings.add("inference", ran)
        with timings.stage("encode"):
            body, media, extra = await asyncio.to_thread(
                render_samples, runner, lr, result, ref, seed, temperature, n, fmt,
                uncertainty, id_ref)
        return Response(body, media_type=media,
                        headers=headers(runner, lr, timings, seed=seed, **extra))

    @router.post(
        "/traverse", response_model=None, dependencies=protected, tags=["inference"],
        summary="Latent traversal z_start + a (z_end - z_start), a from 0 to 1 (Eq. 8)",
        responses={200: {"model": TraverseResponse,
                         "content": {MEDIA_TYPES[f]: BINARY for f in ("gif", "webp", "png")},
                         "description": "JSON frames (default), a GIF or WebP animation, or a "
                                        "PNG strip"},
                   **ERRORS})
    async def traverse(
        image: ImageField,
        work: Work,
        steps: Annotated[int, Query(ge=2, le=s.max_steps,
                                    description="frames, ends incl.")] = min(8, s.max_steps),
        seed: SeedParam = None,
        seed_end: Annotated[int | None, Query(ge=0, le=SEED_MAX,
                                              description="z_end: draw 0 of this seed")] = None,
        temperature: TemperatureParam = None,
        scale: ScaleParam = None,
        fmt: Annotated[Literal["json", "gif", "webp", "png"], Query(alias="format")] = "json",
        duration_ms: Annotated[int, Query(ge=20, le=10_000, description="per frame")] = 100,
    ) -> Response:
        timings = Timings(state, "/traverse")
        lr, x = await prepare(image, scale, timings)
        seed = new_seed() if seed is None else seed
        runner = runner_for(lr)
        temperature = runner.manifest.sample_temperature if temperature is None else temperature
        state.metrics.samples.labels(endpoint="/traverse").observe(steps)
        (alphas, frames), queued, ran = await state.infer(
            work, traverse_frames, runner, x, seed, seed_end, temperature, steps)
        timings.add("queue", queued)
        timings.add("inference", ran)
        with timings.stage("encode"):
            body, media = await asyncio.to_thread(
                render_traverse, runner, lr, alphas, frames, seed, seed_end, temperature, fmt,
                duration_ms)
        return Response(body, media_type=media,
                        headers=headers(runner, lr, timings, seed=seed, seed_end=seed_end))

    @router.get("/health/live", tags=["health"], summary="The process is up")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/health/ready", tags=["health"], responses={503: {"model": ErrorBody}},
                summary="200 once every model is loaded and warmed up, 503 before")
    async def ready() -> dict[str, Any]:
        if not state.ready:
            raise Unavailable(f"not ready: {state.status}", s.retry_after_s, "not_ready")
        return {"status": "ready", "scales": list(state.scales)}

    @router.get("/v1/models", dependencies=protected, tags=["models"],
                summary="Loaded models: scale, version, hashes, provider, manifest metrics")
    async def models() -> dict[str, Any]:
        return {"ready": state.ready, "status": state.status, "detail": state.detail,
                "scales_supported": list(state.scales),
                "models": [state.runners[k].info() for k in state.scales]}

    @router.get("/metrics", tags=["health"], response_class=Response,
                responses={200: {"content": {"text/plain": {}}}}, summary="Prometheus metrics")
    async def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    return router


def json_bytes(payload: dict[str, Any]) -> bytes:
    """Compact JSON, as Starlette's JSONResponse writes it (but off the event loop)."""
    return json.dumps(payload, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")


def render_samples(runner: Runner, lr: LRInput, result: SampleSet, ref: np.ndarray | None,
                   seed: int, temperature: float, n: int, fmt: str, uncertainty: bool = False,
                   id_ref: np.ndarray | None = None) -> tuple[bytes, str, dict[str, Any]]:
    """Order and score the samples (by identity when id_ref is given), then the JSON body or
    the contact sheet."""
    entries = arrange(result, ref)
    if id_ref is not None:
        entries = rank_by_identity(entries, identity_distances(result.images, id_ref))
    best = next((k for k, e in enumerate(entries) if e["best"]), None)
    if fmt == "png":
        images = result.images[[e["index"] for e in entries]]
        tiles = [*contact_sheet.input_tiles(lr.image, lr.scale, ref, images.shape[1]),
                 *contact_sheet.result_tiles(images, entries)]
        if uncertainty:
            tiles.append(contact_sheet.uncertainty_tile(result.images))
        return encode_pil(contact_sheet.render(tiles), "png"), "image/png", {"best": best}
    items = [{**{k: v for k, v in e.items() if k != "index"},
              "image": b64png(result.images[e["index"]])} for e in entries]
    payload = {"model": runner.manifest.name, "version": runner.manifest.version,
               "scale": lr.scale, "seed": seed, "temperature": temperature, "n": n,
               "reference": ref is not None, "best": best, "adjustments": lr.adjustments,
               "identity_reference": id_ref is not None,
               "uncertainty": uncertainty_body(result.images) if uncertainty else None,
               "samples": items}
    return json_bytes(payload), "application/json", {}


def render_uncertain_face(runner: Runner, lr: LRInput, images: np.ndarray, seed: int,
                          temperature: float, n: int, fmt: str) -> bytes:
    """/superresolve?uncertainty=true: the served face (images[0]) and the map of the samples."""
    payload = {"model": runner.manifest.name, "version": runner.manifest.version,
               "scale": lr.scale, "seed": seed, "temperature": temperature, "n": n,
               "format": fmt, "adjustments": lr.adjustments,
               "image": base64.b64encode(encode(images[0], fmt)).decode("ascii"),
               "uncertainty": uncertainty_body(images)}
    return json_bytes(payload)


def render_traverse(runner: Runner, lr: LRInput, alphas: np.ndarray, frames: np.ndarray,
                    seed: int, seed_end: int | None, temperature: float, fmt: str,
                    duration_ms: int) -> tuple[bytes, str]:
    """The animation, the strip, or the JSON body."""
    if fmt in ("gif", "webp"):
        return animation(frames, fmt, duration_ms), MEDIA_TYPES[fmt]
    if fmt == "png":
        return encode_pil(strip(frames), "png"), "image/png"
    payload = {"model": runner.manifest.name, "version": runner.manifest.version,
               "scale": lr.scale, "seed": seed, "seed_end": seed_end,
               "temperature": temperature, "steps": len(frames), "adjustments": lr.adjustments,
               "frames": [{"alpha": float(a), "image": b64png(f)}
                          for a, f in zip(alphas, frames, strict=True)]}
    return json_bytes(payload), "application/json"
