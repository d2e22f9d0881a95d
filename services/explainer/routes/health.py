"""Liveness and readiness of the explainer."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from services.explainer.deps import InferenceDep, RequestIdDep
from shared.errors import ErrorCode, ServiceError
from shared.schemas import ErrorOut
from shared.upstream import raise_for_error

router = APIRouter(tags=["health"])


class HealthOut(BaseModel):
    status: str = "ok"


@router.get("/healthz", response_model=HealthOut, summary="Liveness: the process answers")
async def read_health() -> HealthOut:
    return HealthOut()


@router.get(
    "/readyz",
    response_model=HealthOut,
    summary="Readiness: the inference service answers",
    responses={503: {"model": ErrorOut, "description": "UPSTREAM_UNAVAILABLE: the inference service is down."}},
)
def read_readiness(inference: InferenceDep, request_id: RequestIdDep) -> HealthOut:
    # A plain def: the blocking client waits in a worker thread, not on the event loop.
    response = inference.send("GET", "/healthz", request_id)
    try:
        raise_for_error(response, inference.service)
    except ServiceError as exc:
        raise ServiceError(
            ErrorCode.UPSTREAM_UNAVAILABLE, f"The inference service is not healthy: {exc.message}"
        ) from exc
    return HealthOut(status="ready")
