"""The model catalogue."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.deps import InferenceDep
from shared.schemas import ModelsOut
from shared.service import RequestIdDep, error_responses

router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models",
    response_model=ModelsOut,
    summary="List the available models",
    description="Every registered model with its versions (newest first), aliases, test metrics "
    "and the version served by default (alias `champion` if set, else the latest).",
    responses=error_responses(502, 503),
)
async def list_models(inference: InferenceDep, request_id: RequestIdDep) -> ModelsOut:
    return await inference.list_models(request_id)
