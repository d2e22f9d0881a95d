"""Readiness of the gateway; liveness (``/healthz``) comes with ``shared.service.build_app``."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.gateway.deps import ExplainerDep, InferenceDep
from shared.service import RequestIdDep, error_responses

router = APIRouter()


class ReadyOut(BaseModel):
    status: str = "ready"
    inference: dict[str, Any] = Field(description="The inference service's own readiness answer.")
    explainer: str = Field(
        description="'ready', or 'unavailable: <why>'. Only /v1/explain needs it, so it does not fail readiness."
    )


@router.get(
    "/readyz",
    response_model=ReadyOut,
    tags=["health"],
    summary="Readiness: the inference service is reachable and ready; says whether the explainer answers",
    responses=error_responses(
        503, descriptions={503: "UPSTREAM_UNAVAILABLE: the inference service is unreachable or not ready."}
    ),
)
async def read_readiness(inference: InferenceDep, explainer: ExplainerDep, request_id: RequestIdDep) -> ReadyOut:
    inference_ready, explainer_status = await asyncio.gather(
        inference.readiness(request_id), explainer.status(request_id)
    )
    return ReadyOut(inference=inference_ready, explainer=explainer_status)
