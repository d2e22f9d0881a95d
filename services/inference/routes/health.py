"""Liveness (the kit's ``/healthz``) and readiness of the inference service."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from services.inference.deps import DataPlaneDep, require_ready
from shared.kit.service import error_responses, health_router

# The kit's router carries the "health" tag; tagging this router too would list /healthz under it twice.
router = APIRouter()


class ReadyOut(BaseModel):
    status: str = "ready"
    models: dict[str, bool] = Field(description="Loaded versions (name/version) and their ready flags.")
    registry: str = Field(
        "reachable",
        description='"reachable", or "unreachable since <ISO time>" while MLflow is down and the last catalogue '
        "and the verified cached files are served.",
    )


@router.get(
    "/readyz",
    response_model=ReadyOut,
    tags=health_router.tags,
    summary="Readiness: the default version of every model loaded (from MLflow or the verified cache)",
    responses=error_responses(
        503,
        descriptions={
            503: "MODEL_NOT_READY: the default models are still loading, or one cannot be loaded; "
            "REGISTRY_UNAVAILABLE: MLflow down and no catalogue kept from before."
        },
    ),
)
def read_readiness(request: Request, dataplane: DataPlaneDep) -> ReadyOut:
    state = require_ready(request)  # a plain def: the check may load a model, off the event loop
    return ReadyOut(models=dataplane.registry.loaded.states(), registry=state)
