"""Liveness and readiness of the gateway."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.gateway.deps import ExplainerDep, InferenceDep, RequestIdDep
from services.gateway.routes.errors import error_responses

router = APIRouter(tags=["health"])


class HealthOut(BaseModel):
    status: str = "ok"


class ReadyOut(BaseModel):
    status: str = "ready"
    inference: dict[str, Any] = Field(description="The inference service's own readiness answer.")
    explainer: str = Field(
        description="'ready', or 'unavailable: <why>'. Only /v1/explain needs it, so it does not fail readiness."
    )


@router.get("/healthz", response_model=HealthOut, summary="Liveness: the gateway process answers")
async def read_health() -> HealthOut:
    return HealthOut()


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="Readiness: the inference service is reachable and ready",
    responses=error_responses(503),
)
async def read_readiness(inference: InferenceDep, explainer: ExplainerDep, request_id: RequestIdDep) -> ReadyOut:
    return ReadyOut(inference=await inference.readiness(request_id), explainer=await explainer.status(request_id))
