"""Readiness of the gateway; liveness (``/healthz``) comes with ``shared.kit.service.build_app``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.gateway.deps import ExplainerDep, InferenceDep
from services.gateway.replicas import ReplicaStatus
from shared.kit.service import RequestIdDep, error_responses

router = APIRouter()


class ReadyOut(BaseModel):
    status: str = "ready"
    inference: dict[str, Any] = Field(description="The readiness answer of the first inference replica that is up.")
    replicas: list[ReplicaStatus] = Field(description="Every inference replica, up or down, as the gateway sees it.")
    explainer: str = Field(
        description="'ready', or 'unavailable: <why>'. Only /v1/explain needs it, so it does not fail readiness."
    )


@router.get(
    "/readyz",
    response_model=ReadyOut,
    tags=["health"],
    summary="Readiness: at least one inference replica is ready; says which are, and whether the explainer answers",
    description="Ready (200) while at least one inference replica passed its last readiness check; the replicas' "
    "states come from the gateway's background checks (every `health_check_interval_s`) and from the calls "
    "it forwards, so this answer costs no call to inference.",
    responses=error_responses(
        503, descriptions={503: "UPSTREAM_UNAVAILABLE: no inference replica is reachable and ready."}
    ),
)
async def read_readiness(inference: InferenceDep, explainer: ExplainerDep, request_id: RequestIdDep) -> ReadyOut:
    inference_ready = inference.readiness()
    explainer_status = await explainer.status(request_id)
    return ReadyOut(inference=inference_ready, replicas=inference.pool.statuses(), explainer=explainer_status)
