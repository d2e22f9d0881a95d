"""The model catalogue."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from services.gateway.deps import InferenceDep
from services.gateway.replicas import ReplicaStatus
from shared.kit.schemas import ModelsOut
from shared.kit.service import RequestIdDep, error_responses

router = APIRouter(prefix="/v1", tags=["models"])


class GatewayModelsOut(ModelsOut):
    """The catalogue as an inference replica lists it, and which replicas the gateway is serving from."""

    replicas: list[ReplicaStatus] = Field(description="Every inference replica, up or down, as the gateway sees it.")


@router.get(
    "/models",
    response_model=GatewayModelsOut,
    summary="List the available models",
    description="Every registered model with its versions (newest first), aliases, test metrics "
    "and the version served by default (alias `champion` if set, else the latest); `replicas` says which "
    "inference replicas are up.",
    responses=error_responses(502, 503),
)
async def list_models(inference: InferenceDep, request_id: RequestIdDep) -> GatewayModelsOut:
    listing = await inference.list_models(request_id)
    return GatewayModelsOut(models=listing.models, replicas=inference.pool.statuses())
