"""Listing the registered models and classifying an image with one of them."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from services.inference.deps import ImageBytes, ModelDep, RegistryDep
from shared.errors import ErrorCode
from shared.schemas import ErrorOut, ModelsOut, PredictionOut

router = APIRouter(prefix="/v1/models", tags=["models"])

_REGISTRY_DOWN = {503: {"model": ErrorOut, "description": f"{ErrorCode.REGISTRY_UNAVAILABLE}: MLflow unreachable."}}


@router.get(
    "",
    response_model=ModelsOut,
    summary="List registered models",
    description="Every registered model with its versions (newest first), aliases, run metrics "
    "and the version served by default (alias `champion` if set, else the latest).",
    responses=_REGISTRY_DOWN,
)
def list_models(registry: RegistryDep) -> ModelsOut:
    return registry.list_models()


@router.post(
    "/{model}/predict",
    response_model=PredictionOut,
    summary="Classify one MRI image",
    description="Upload one image as the multipart field `file`. It is decoded to grayscale and "
    "prepared exactly as the model's embedded preprocessing contract says.",
    responses={
        404: {"model": ErrorOut, "description": "MODEL_NOT_FOUND or VERSION_NOT_FOUND; names what exists."},
        413: {"model": ErrorOut, "description": "FILE_TOO_LARGE."},
        415: {"model": ErrorOut, "description": "INVALID_IMAGE: empty or not a decodable image."},
        422: {"model": ErrorOut, "description": "INVALID_REQUEST, e.g. no `file` field."},
        **_REGISTRY_DOWN,
    },
)
async def predict_image(classifier: ModelDep, data: ImageBytes) -> PredictionOut:
    # Decoding and the ONNX run are CPU work: keep them off the event loop.
    result = await run_in_threadpool(classifier.classify, data)
    return PredictionOut(
        model=classifier.name,
        version=classifier.version,
        label=result.label,
        probabilities=result.probabilities,
        latency_ms=result.latency_ms,
    )
