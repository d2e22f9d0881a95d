"""Liveness (the kit's ``/healthz``) and readiness of the inference service."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from services.inference.deps import RegistryDep, require_ready
from shared.service import error_responses, health_router

# The kit's router carries the "health" tag; tagging this router too would list /healthz under it twice.
router = APIRouter()


class ReadyOut(BaseModel):
    status: str = "ready"
    models: dict[str, bool] = Field(description="Loaded versions (name/version) and their ready flags.")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    tags=health_router.tags,
    summary="Readiness: default models preloaded and the MLflow registry reachable",
    responses=error_responses(
        503,
        descriptions={503: "MODEL_NOT_READY: the default models are still loading; REGISTRY_UNAVAILABLE: MLflow down."},
    ),
)
def read_readiness(request: Request, registry: RegistryDep) -> ReadyOut:
    require_ready(request)  # a plain def: the check may wait on MLflow, off the event loop
    return ReadyOut(models=registry.loaded())
