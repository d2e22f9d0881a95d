"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from services.inference.deps import RegistryDep
from shared.errors import ErrorCode, ServiceError
from shared.schemas import ErrorOut

router = APIRouter(tags=["health"])


class HealthOut(BaseModel):
    status: str = "ok"


class ReadyOut(BaseModel):
    status: str = "ready"
    models: dict[str, bool] = Field(description="Loaded versions (name/version) and their ready flags.")


@router.get("/healthz", response_model=HealthOut, summary="Liveness: the process answers")
async def read_health() -> HealthOut:
    return HealthOut()


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="Readiness: default models preloaded and the MLflow registry reachable",
    responses={503: {"model": ErrorOut, "description": "Still loading, or MLflow unreachable."}},
)
def read_readiness(request: Request, registry: RegistryDep) -> ReadyOut:
    # A plain def: the registry check may wait on MLflow, which must not block the event loop.
    if not request.app.state.preload_done.is_set():
        raise ServiceError(ErrorCode.MODEL_NOT_READY, "The default models are still being loaded.")
    registry.ping()
    return ReadyOut(models=registry.loaded())
