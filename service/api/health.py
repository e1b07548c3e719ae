"""Health and metrics: GET /health/live, /health/ready and /metrics (never behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.api.inference_route import check_ready
from service.api.schemas import Liveness, Readiness
from service.errors import ErrorBody
from service.state import StateDep

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="The process is up")
async def live() -> Liveness:
    return Liveness()


@router.get("/health/ready", responses={503: {"model": ErrorBody}},
            summary="200 once every model is loaded and warmed up, 503 before")
async def ready(state: StateDep) -> Readiness:
    check_ready(state)
    return Readiness(scales=list(state.scales))


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}}, summary="Prometheus metrics")
async def metrics(state: StateDep) -> Response:
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
