"""Liveness (the kit's ``/healthz``) and readiness of the explainer."""

from __future__ import annotations

from fastapi import APIRouter

from services.explainer.deps import InferenceDep
from shared.kit.service import HealthOut, RequestIdDep, error_responses

router = APIRouter()


@router.get(
    "/readyz",
    response_model=HealthOut,
    tags=["health"],
    summary="Readiness: the inference service is reachable and ready",
    responses=error_responses(503, descriptions={503: "UPSTREAM_UNAVAILABLE: the inference service is not ready."}),
)
def read_readiness(inference: InferenceDep, request_id: RequestIdDep) -> HealthOut:
    # A plain def: the blocking client waits in a worker thread, not on the event loop.
    inference.readiness(request_id)
    return HealthOut(status="ready")
