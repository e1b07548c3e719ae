"""GET /v1/models: the loaded models, and why the service is not ready (behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.schemas import ModelsResponse
from service.api.security import authorized
from service.state import StateDep

router = APIRouter(tags=["models"], dependencies=[Depends(authorized)])


@router.get("/v1/models",
            summary="Loaded models: scale, version, hashes, provider, manifest metrics")
async def models(state: StateDep) -> ModelsResponse:
    return ModelsResponse(ready=state.ready, status=state.status, detail=state.detail,
                          scales_supported=list(state.scales),
                          models=[state.runners[k].info() for k in state.scales])
