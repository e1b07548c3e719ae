"""POST /photo: the whole-photo pipeline (service/photo.py) behind the same gate, limits,
errors, metrics and auth as /superresolve. Decoding and detection run in a thread (stages
`decode` and `detect`); the super-resolution of every face is one call in the inference pool
(one batched model call per scale); pasting and encoding run in a thread (stage `encode`).

No `from __future__ import annotations`: FastAPI reads the annotations at runtime.
"""

import asyncio
import functools
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import parse_qs

import numpy as np
from fastapi import APIRouter, Depends, File, Query, UploadFile
from fastapi.responses import Response
from fastapi.security import HTTPBearer

from service.errors import ErrorBody, InvalidParameter
from service.faces import FaceDetector
from service.imaging import MEDIA_TYPES, encode
from service.photo import (
    DEFAULT_MAX_FACES,
    MAX_UPSCALE,
    PhotoOptions,
    decode_photo,
    describe_json,
    find_faces,
    paste,
    superresolve,
)
from service.routes import (
    BINARY,
    ERRORS,
    ScaleParam,
    SeedParam,
    TemperatureParam,
    Timings,
    Work,
    read_upload,
)
from service.sampling import new_seed

if TYPE_CHECKING:
    from service.app import ServiceState

PATH = "/photo"
PHOTO_HELP = "A photo with faces in it: PNG, JPEG, WebP or BMP, any size within the limits"


@functools.cache
def detector() -> FaceDetector:
    """One detector per process (501 detector_missing without OpenCV)."""
    return FaceDetector()


def admission_cost(query_string: bytes, max_samples: int, max_faces: int) -> int:
    """The work admitted for a /photo request, in decodes, before its faces are known: at most
    max_faces faces, each with its mean and `samples` draws."""
    query = parse_qs(query_string.decode("latin-1"))

    def value(name: str, default: int, limit: int) -> int:
        text = (query.get(name) or [""])[-1]
        return max(0, min(int(text) if text.isdigit() else default, limit))

    faces = max(1, value("max_faces", min(DEFAULT_MAX_FACES, max_faces), max_faces))
    return faces * (value("samples", 0, max_samples) + 1)


def build_photo_router(state: "ServiceState") -> APIRouter:
    s = state.settings
    router = APIRouter()
    protected = [Depends(HTTPBearer(auto_error=False))] if s.api_key.get_secret_value() else []

    @router.post(
        PATH, response_model=None, dependencies=protected, tags=["inference"],
        summary="Find every face in a photo, super-resolve it and paste it back",
        responses={200: {"content": {**{MEDIA_TYPES[f]: BINARY for f in ("png", "jpeg", "webp")},
                                     "application/json": {}},
                         "description": "The photo upscaled by `upscale` (bicubic) with every "
                                        "face super-resolved and blended in; or, with "
                                        "?format=json, the boxes, scores, scale per face and "
                                        "the face crops as base64 PNG"},
                   501: {"model": ErrorBody,
                         "description": "OpenCV (the face detector) is not installed"},
                   **ERRORS})
    async def photo(
        image: Annotated[UploadFile, File(description=PHOTO_HELP)],
        work: Work,
        scale: ScaleParam = None,
        upscale: Annotated[int | None, Query(ge=1, le=MAX_UPSCALE, description=(
            "the returned photo's factor; default: scale, else the smallest scale used for a "
            "face"))] = None,
        samples: Annotated[int, Query(ge=0, le=s.max_samples, description=(
            "draws per face besides the ICAP mean (format=json only)"))] = 0,
        seed: SeedParam = None,
        temperature: TemperatureParam = None,
        max_faces: Annotated[int, Query(ge=1, le=s.max_faces, description=(
            "faces super-resolved, the best-scoring first"))] = min(DEFAULT_MAX_FACES,
                                                                    s.max_faces),
        fmt: Annotated[Literal["png", "jpeg", "webp", "json"], Query(alias="format")] = "png",
    ) -> Response:
        if samples and fmt != "json":
            raise InvalidParameter("samples are returned in the JSON answer only: add "
                                   "format=json, or leave samples out")
        timings = Timings(state, PATH)
        faces_detector = detector()
        data = await read_upload(image, "image", s.max_upload_bytes)
        options = PhotoOptions(
            scale=None if scale is None else int(scale), upscale=upscale, samples=samples,
            seed=new_seed() if seed is None else seed, temperature=temperature,
            max_faces=max_faces, max_output_pixels=s.max_output_pixels)
        with timings.stage("decode"):
            pixels, adjustments = await asyncio.to_thread(decode_photo, data, s.max_pixels)
        with timings.stage("detect"):
            result = await asyncio.to_thread(find_faces, pixels, faces_detector, options,
                                             state.scales)
        decodes = sum(p.scale is not None for p in result.faces) * (samples + 1)
        work.cost = max(decodes, 1)  # the faces are known now: admission counts their work
        state.metrics.samples.labels(endpoint=PATH).observe(decodes)
        result, queued, ran = await state.infer(work, superresolve, result, state.runners,
                                                options)
        timings.add("queue", queued)
        timings.add("inference", ran)
        with timings.stage("encode"):
            body, media = await asyncio.to_thread(render, pixels, result, state.runners,
                                                  options, fmt)
        headers = {"X-FaceSR-Faces": str(len(result.faces)),
                   "X-FaceSR-Upscale": str(result.upscale), "Server-Timing": timings.header()}
        if samples:
            headers["X-FaceSR-Seed"] = str(options.seed)
        if adjustments:
            headers["X-FaceSR-Adjustment"] = "; ".join(adjustments)
        return Response(body, media_type=media, headers=headers)

    return router


def render(pixels: np.ndarray, result: Any, runners: dict, options: PhotoOptions,
           fmt: str) -> tuple[bytes, str]:
    """The pasted photo in its format, or the JSON description."""
    if fmt == "json":
        return describe_json(result, runners, options), "application/json"
    return encode(paste(pixels, result), fmt), MEDIA_TYPES[fmt]
