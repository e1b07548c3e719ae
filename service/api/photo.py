"""POST /photo: the whole-photo pipeline (service/photo.py) as an inference route. Decoding and
detection run in a thread (stages `decode` and `detect`); the super-resolution of every face is
one call in the inference pool (one batched model call per scale); pasting and encoding run in a
thread (stage `encode`).

Admission counts `max_faces` x (`samples` + 1) decodes, since the faces are not known before
detection; once they are found, the ticket counts their real decodes.

No `from __future__ import annotations`: FastAPI reads the annotations at runtime.
"""

import asyncio
import functools
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, File, Query, Request, UploadFile
from fastapi.responses import Response

from service.admission import Ticket
from service.api.inference import Timings, read_upload
from service.api.inference_route import InferenceRouter, admit
from service.api.params import (
    DrawsParam,
    ScaleParam,
    SeedParam,
    TemperatureParam,
    within_limit,
)
from service.api.schemas import BINARY
from service.errors import ErrorBody, InvalidParameter
from service.faces import FaceDetector
from service.imaging import MEDIA_TYPES, encode
from service.photo import (
    DEFAULT_MAX_FACES,
    MAX_UPSCALE,
    PhotoOptions,
    check_draws,
    decode_photo,
    describe_json,
    find_faces,
    paste,
    superresolve,
)
from service.sampling import new_seed
from service.state import StateDep

router = InferenceRouter()
PHOTO_HELP = "A photo with faces in it: PNG, JPEG, WebP or BMP, any size within the limits"


@functools.cache
def detector() -> FaceDetector:
    """One detector per process (501 detector_missing without OpenCV)."""
    return FaceDetector()


def draw_count(state: StateDep, samples: Annotated[int | None, Query(ge=0, description=(
        "draws per face besides the ICAP mean (format=json only); at most "
        "FACESR_MAX_SAMPLES"))] = None) -> int:
    """`samples` of /photo."""
    return within_limit("samples", samples, 0, state.settings.max_samples,
                        "FACESR_MAX_SAMPLES")


def face_limit(state: StateDep, max_faces: Annotated[int | None, Query(ge=1, description=(
        f"faces super-resolved, the best-scoring first; default {DEFAULT_MAX_FACES}, at most "
        "FACESR_MAX_FACES"))] = None) -> int:
    """`max_faces` of /photo."""
    return within_limit("max_faces", max_faces, DEFAULT_MAX_FACES, state.settings.max_faces,
                        "FACESR_MAX_FACES")


DrawCount = Annotated[int, Depends(draw_count)]
FaceLimit = Annotated[int, Depends(face_limit)]


def photo_cost(samples: DrawCount, max_faces: FaceLimit) -> int:
    """The most work a /photo request may need: every face with its mean and its draws."""
    return max_faces * (samples + 1)


@router.post(
    "/photo", response_model=None,
    summary="Find every face in a photo, super-resolve it and paste it back",
    responses={200: {"content": {**{MEDIA_TYPES[f]: BINARY for f in ("png", "jpeg", "webp")},
                                 "application/json": {}},
                     "description": "The photo upscaled by `upscale` (bicubic) with every face "
                                    "super-resolved and blended in; or, with ?format=json, the "
                                    "boxes, scores, scale per face and the face crops as base64 "
                                    "PNG"},
               501: {"model": ErrorBody,
                     "description": "OpenCV (the face detector) is not installed"}})
async def photo(
    request: Request,
    state: StateDep,
    work: Annotated[Ticket, admit(photo_cost)],
    image: Annotated[UploadFile, File(description=PHOTO_HELP)],
    samples: DrawCount,
    max_faces: FaceLimit,
    scale: ScaleParam = None,
    upscale: Annotated[int | None, Query(ge=1, le=MAX_UPSCALE, description=(
        "the returned photo's factor; default: scale, else the smallest scale used for a "
        "face"))] = None,
    seed: SeedParam = None,
    temperature: TemperatureParam = None,
    draws: DrawsParam = None,
    fmt: Annotated[Literal["png", "jpeg", "webp", "json"], Query(alias="format")] = "png",
) -> Response:
    if samples and fmt != "json":
        raise InvalidParameter("samples are returned in the JSON answer only: add format=json, "
                               "or leave samples out")
    s = state.settings
    options = PhotoOptions(
        scale=None if scale is None else int(scale), upscale=upscale, samples=samples,
        seed=new_seed() if seed is None else seed, temperature=temperature,
        draws=draws, max_faces=max_faces, max_output_pixels=s.max_output_pixels)
    try:
        check_draws(state.runners, options)
    except LookupError as exc:
        raise InvalidParameter(f"query.draws: {exc}") from exc
    timings = Timings(request, state)
    faces_detector = detector()
    data = await read_upload(image, "image", s.max_upload_bytes)
    with timings.stage("decode"):
        pixels, adjustments = await asyncio.to_thread(decode_photo, data, s.max_pixels)
    with timings.stage("detect"):
        result = await asyncio.to_thread(find_faces, pixels, faces_detector, options,
                                         state.scales)
    decodes = sum(p.scale is not None for p in result.faces) * (samples + 1)
    work.revise(max(decodes, 1))  # the faces are known now: admission counts their work
    state.metrics.samples.labels(endpoint=timings.endpoint).observe(decodes)
    result, queued, ran = await state.infer(work, superresolve, result, state.runners, options)
    timings.add("queue", queued)
    timings.add("inference", ran)
    with timings.stage("encode"):
        body, media = await asyncio.to_thread(render, pixels, result, state.runners, options,
                                              fmt)
    headers = {"X-FaceSR-Faces": str(len(result.faces)),
               "X-FaceSR-Upscale": str(result.upscale), "Server-Timing": timings.header()}
    if samples:
        headers["X-FaceSR-Seed"] = str(options.seed)
    if adjustments:
        headers["X-FaceSR-Adjustment"] = "; ".join(adjustments)
    return Response(body, media_type=media, headers=headers)


def render(pixels: np.ndarray, result: Any, runners: dict, options: PhotoOptions,
           fmt: str) -> tuple[bytes, str]:
    """The pasted photo in its format, or the JSON description."""
    if fmt == "json":
        return describe_json(result, runners, options), "application/json"
    return encode(paste(pixels, result), fmt), MEDIA_TYPES[fmt]
