"""The inference routes: POST /superresolve, /samples and /traverse. Handlers only validate,
schedule and encode; the work lives in service/engine.py and service/sampling.py, and what every
inference route gets (auth, readiness, admission, the deadline) in inference_route.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, Query, Request, UploadFile
from fastapi.responses import Response

from service import contact_sheet
from service.admission import Ticket
from service.api.inference_route import InferenceRouter, admit
from service.api.params import (
    DrawsParam,
    IdentityReferenceField,
    ImageField,
    ReferenceField,
    Scale,
    ScaleParam,
    SeedEndParam,
    SeedParam,
    TemperatureParam,
    sample_count,
    step_count,
    wants_uncertainty,
)
from service.api.schemas import (
    BINARY,
    Frame,
    SampleEntry,
    SamplesResponse,
    SuperresolveUncertainty,
    TraverseResponse,
    UncertaintyMap,
)
from service.engine import Runner, model_input
from service.errors import InvalidParameter, PayloadTooLarge
from service.imaging import (
    MEDIA_TYPES,
    LRInput,
    animation,
    encode,
    encode_b64,
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
    MAP_DRAWS,
    Draws,
    SampleSet,
    arrange,
    new_seed,
    sample_set,
    traverse_frames,
)
from service.state import ServiceState, StateDep

router = InferenceRouter()
SampleCount = Annotated[int, Depends(sample_count)]
StepCount = Annotated[int, Depends(step_count)]
Uncertainty = Annotated[bool, Depends(wants_uncertainty)]


def samples_cost(n: SampleCount) -> int:
    """/samples decodes the mean and n samples."""
    return n + 1


def superresolve_cost(n: SampleCount, uncertainty: Uncertainty) -> int:
    """/superresolve decodes one face, or with its uncertainty map the mean and n samples."""
    return n + 1 if uncertainty else 1


class Timings:
    """Stage durations of one request: each stage observed once in the histogram when the
    response is built (so failed requests do not count), and sent back as Server-Timing."""

    def __init__(self, request: Request, state: ServiceState) -> None:
        self.metrics, self.endpoint = state.metrics, request.scope["route"].path
        self.values: dict[str, float] = {}

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


async def prepare(state: ServiceState, image: UploadFile, scale: Scale | None,
                  timings: Timings) -> tuple[LRInput, np.ndarray]:
    """The uploaded LR face, validated, and its network input."""
    s = state.settings
    data = await read_upload(image, "image", s.max_upload_bytes)
    with timings.stage("decode"):
        return await asyncio.to_thread(decode_input, data, None if scale is None else int(scale),
                                       state.scales, s.max_pixels)


def request_draws(runner: Runner, kind: str | None, temperature: float | None,
                  uncertainty: bool = False) -> Draws:
    """The request's draws (Runner.draws; MAP_DRAWS when it asks for an uncertainty map and
    names none); 422 for principal draws on a model without a basis."""
    if kind is None and uncertainty:
        kind = MAP_DRAWS
    try:
        return runner.draws(kind, temperature)
    except LookupError as exc:
        raise InvalidParameter(f"query.draws: {exc}") from exc


async def draw_samples(state: ServiceState, work: Ticket, runner: Runner, x: np.ndarray,
                       seed: int | None, n: int, draws: Draws,
                       timings: Timings) -> tuple[SampleSet, int]:
    """The mean and n samples of x in the inference pool: (the set, its seed), a random seed
    where none was given."""
    seed = new_seed() if seed is None else seed
    state.metrics.samples.labels(endpoint=timings.endpoint).observe(n)
    result, queued, ran = await state.infer(work, sample_set, runner, x, seed, n, draws)
    timings.add("queue", queued)
    timings.add("inference", ran)
    return result, seed


def headers(runner: Runner, lr: LRInput, timings: Timings, **extra: Any) -> dict[str, str]:
    out = {"X-FaceSR-Model": runner.manifest.name, "X-FaceSR-Version": runner.manifest.version,
           "X-FaceSR-Scale": str(lr.scale), "Server-Timing": timings.header()}
    if lr.adjustments:
        out["X-FaceSR-Adjustment"] = "; ".join(lr.adjustments)
    out.update({f"X-FaceSR-{k.replace('_', '-').title()}": str(v)
                for k, v in extra.items() if v is not None})
    return out


@router.post(
    "/superresolve", response_class=Response,
    summary="Super-resolve an LR face (the ICAP mean)",
    responses={200: {"content": {**{MEDIA_TYPES[f]: BINARY for f in ("png", "jpeg", "webp")},
                                 "application/json": {"schema": {
                                     "$ref": "#/components/schemas/SuperresolveUncertainty"}}},
                     "model": SuperresolveUncertainty,
                     "description": "The 128x128 SR face, in the requested format; with "
                                    "?uncertainty=true, JSON: the face (base64) and its "
                                    "uncertainty map"}})
async def superresolve(
    request: Request,
    state: StateDep,
    work: Annotated[Ticket, admit(superresolve_cost)],
    image: ImageField,
    uncertainty: Uncertainty,
    n: SampleCount,
    scale: ScaleParam = None,
    fmt: Annotated[Literal["png", "jpeg", "webp"], Query(alias="format")] = "png",
    seed: SeedParam = None,
    temperature: TemperatureParam = None,
    draws: DrawsParam = None,
) -> Response:
    """With uncertainty=true, `n`, `seed`, `draws` and `temperature` set the samples behind the
    map."""
    timings = Timings(request, state)
    lr, x = await prepare(state, image, scale, timings)
    runner = state.runners[lr.scale]
    if uncertainty:  # n samples beside the mean: the /samples path, not the micro-batcher
        how = request_draws(runner, draws, temperature, uncertainty=True)
        result, seed = await draw_samples(state, work, runner, x, seed, n, how, timings)
        with timings.stage("encode"):
            body = await asyncio.to_thread(render_uncertain_face, runner, lr, result.images,
                                           seed, how, n, fmt)
        return Response(body, media_type="application/json",
                        headers=headers(runner, lr, timings, seed=seed, draws=how.kind))
    result = await state.batchers[lr.scale].submit(x, state.settings.retry_after_s)
    # encoding holds up no one's call
    work.ran_in_batch(result.started_at, result.batch_size, result.inference_s)
    timings.add("queue", result.queue_s)
    timings.add("inference", result.inference_s)
    with timings.stage("encode"):
        body = await asyncio.to_thread(encode, result.image, fmt)
    return Response(body, media_type=MEDIA_TYPES[fmt],
                    headers=headers(runner, lr, timings, batch=result.batch_size))


@router.post(
    "/samples", response_model=None,
    summary="The ICAP mean and n samples; best-of-n against an optional reference",
    responses={200: {"model": SamplesResponse, "content": {"image/png": BINARY},
                     "description": "JSON (default), or a PNG contact sheet (?format=png): "
                                    "mean first, then the samples by log-density"}})
async def samples(
    request: Request,
    state: StateDep,
    work: Annotated[Ticket, admit(samples_cost)],
    image: ImageField,
    n: SampleCount,
    uncertainty: Uncertainty,
    reference: ReferenceField = None,
    identity_reference: IdentityReferenceField = None,
    seed: SeedParam = None,
    temperature: TemperatureParam = None,
    draws: DrawsParam = None,
    scale: ScaleParam = None,
    fmt: Annotated[Literal["json", "png"], Query(alias="format")] = "json",
) -> Response:
    s = state.settings
    timings = Timings(request, state)
    if identity_reference is not None:
        require_identity()
    lr, x = await prepare(state, image, scale, timings)
    id_ref = None
    if identity_reference is not None:
        id_data = await read_upload(identity_reference, "identity_reference", s.max_upload_bytes)
        with timings.stage("decode"):
            id_ref = await asyncio.to_thread(prepare_identity_reference, id_data, s.max_pixels)
    ref = None
    if reference is not None:
        ref_data = await read_upload(reference, "reference", s.max_upload_bytes)
        with timings.stage("decode"):
            ref = await asyncio.to_thread(prepare_reference, ref_data, s.max_pixels)
    runner = state.runners[lr.scale]
    how = request_draws(runner, draws, temperature, uncertainty)
    result, seed = await draw_samples(state, work, runner, x, seed, n, how, timings)
    with timings.stage("encode"):
        body, media, extra = await asyncio.to_thread(
            render_samples, runner, lr, result, ref, seed, how, n, fmt, uncertainty, id_ref)
    return Response(body, media_type=media,
                    headers=headers(runner, lr, timings, seed=seed, draws=how.kind, **extra))


@router.post(
    "/traverse", response_model=None,
    summary="Latent traversal z_start + a (z_end - z_start), a from 0 to 1 (Eq. 8)",
    responses={200: {"model": TraverseResponse,
                     "content": {MEDIA_TYPES[f]: BINARY for f in ("gif", "webp", "png")},
                     "description": "JSON frames (default), a GIF or WebP animation, or a "
                                    "PNG strip"}})
async def traverse(
    request: Request,
    state: StateDep,
    work: Annotated[Ticket, admit(step_count)],
    image: ImageField,
    steps: StepCount,
    seed: SeedParam = None,
    seed_end: SeedEndParam = None,
    temperature: TemperatureParam = None,
    draws: DrawsParam = None,
    scale: ScaleParam = None,
    fmt: Annotated[Literal["json", "gif", "webp", "png"], Query(alias="format")] = "json",
    duration_ms: Annotated[int, Query(ge=20, le=10_000, description="per frame")] = 100,
) -> Response:
    timings = Timings(request, state)
    lr, x = await prepare(state, image, scale, timings)
    seed = new_seed() if seed is None else seed
    runner = state.runners[lr.scale]
    how = request_draws(runner, draws, temperature)
    state.metrics.samples.labels(endpoint=timings.endpoint).observe(steps)
    (alphas, frames), queued, ran = await state.infer(
        work, traverse_frames, runner, x, seed, seed_end, how, steps)
    timings.add("queue", queued)
    timings.add("inference", ran)
    with timings.stage("encode"):
        body, media = await asyncio.to_thread(
            render_traverse, runner, lr, alphas, frames, seed, seed_end, how, fmt, duration_ms)
    return Response(body, media_type=media,
                    headers=headers(runner, lr, timings, seed=seed, seed_end=seed_end,
                                    draws=how.kind))



def render_samples(runner: Runner, lr: LRInput, result: SampleSet, ref: np.ndarray | None,
                   seed: int, draws: Draws, n: int, fmt: str, uncertainty: bool = False,
                   id_ref: np.ndarray | None = None) -> tuple[bytes, str, dict[str, Any]]:
    """Order and score the samples (by identity when id_ref is given), then the JSON body (a
    SamplesResponse) or the contact sheet."""
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
    body = SamplesResponse(
        model=runner.manifest.name, version=runner.manifest.version, scale=lr.scale, seed=seed,
        draws=draws.kind, temperature=draws.temperature, n=n, reference=ref is not None,
        best=best,
        adjustments=lr.adjustments, identity_reference=id_ref is not None,
        uncertainty=UncertaintyMap(**uncertainty_body(result.images)) if uncertainty else None,
        samples=[SampleEntry(**{k: v for k, v in e.items() if k != "index"},
                             image=encode_b64(result.images[e["index"]])) for e in entries])
    return body.model_dump_json().encode(), "application/json", {}


def render_uncertain_face(runner: Runner, lr: LRInput, images: np.ndarray, seed: int,
                          draws: Draws, n: int, fmt: str) -> bytes:
    """/superresolve?uncertainty=true: the served face (images[0]) and the map of the samples."""
    body = SuperresolveUncertainty(
        model=runner.manifest.name, version=runner.manifest.version, scale=lr.scale, seed=seed,
        draws=draws.kind, temperature=draws.temperature, n=n, format=fmt,
        adjustments=lr.adjustments,
        image=encode_b64(images[0], fmt),
        uncertainty=UncertaintyMap(**uncertainty_body(images)))
    return body.model_dump_json().encode()


def render_traverse(runner: Runner, lr: LRInput, alphas: np.ndarray, frames: np.ndarray,
                    seed: int, seed_end: int | None, draws: Draws, fmt: str,
                    duration_ms: int) -> tuple[bytes, str]:
    """The animation, the strip, or the JSON body (a TraverseResponse)."""
    if fmt in ("gif", "webp"):
        return animation(frames, fmt, duration_ms), MEDIA_TYPES[fmt]
    if fmt == "png":
        return encode_pil(strip(frames), "png"), "image/png"
    body = TraverseResponse(
        model=runner.manifest.name, version=runner.manifest.version, scale=lr.scale, seed=seed,
        seed_end=seed_end, draws=draws.kind, temperature=draws.temperature, steps=len(frames),
        adjustments=lr.adjustments,
        frames=[Frame(alpha=float(a), image=encode_b64(f))
                for a, f in zip(alphas, frames, strict=True)])
    return body.model_dump_json().encode(), "application/json"
