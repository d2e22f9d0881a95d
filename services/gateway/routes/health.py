"""Liveness and readiness of the gateway."""

from __future__ import annotations

import asyncio
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
    summary="Readiness: the inference service is reachable and ready; says whether the explainer answers",
    responses=error_responses(503),
)
async def read_readiness(inference: InferenceDep, explainer: ExplainerDep, request_id: RequestIdDep) -> ReadyOut:
    inference_ready, explainer_status = await asyncio.gather(
        inference.readiness(request_id), explainer.status(request_id)
    )
    return ReadyOut(inference=inference_ready, explainer=explainer_status)
