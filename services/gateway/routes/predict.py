"""Classifying one image with one model."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.deps import InferenceDep
from shared.params import ModelQuery, VersionQuery
from shared.schemas import PredictionOut
from shared.service import RequestIdDep, error_responses
from shared.uploads import ImageBytes

router = APIRouter(prefix="/v1", tags=["predictions"])


@router.post(
    "/predict",
    response_model=PredictionOut,
    summary="Classify one MRI image with one model",
    description="Upload one image as the multipart field `file`; choose the model with `model` and "
    "optionally a `version` (number or alias). Answers the label (glioma, meningioma, notumor or "
    "pituitary), the probability of every class and the model's latency.",
    responses=error_responses(404, 413, 415, 422, 502, 503),
)
async def predict_image(
    inference: InferenceDep,
    image: ImageBytes,
    request_id: RequestIdDep,
    model: ModelQuery,
    version: VersionQuery = None,
) -> PredictionOut:
    return await inference.predict(model, version, image, request_id)
