"""Listing the registered models and classifying an image with one of them."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from services.inference.deps import ModelDep, OodGuardDep, PixelBatch, PredictorDep, RegistryDep, SettingsDep
from services.inference.ood import NOT_MRI_422
from services.inference.uploads import judge_and_prepare
from shared.errors import ErrorCode, ServiceError
from shared.onnx_classifier import OnnxClassifier
from shared.params import FrameQuery
from shared.schemas import (
    CHAMPION_ALIAS,
    PIXELS_SHAPE_HEADER,
    ContractOut,
    ModelsOut,
    PixelsPredictionOut,
    PredictionOut,
)
from shared.service import error_responses
from shared.uploads import ImageBytes

router = APIRouter(prefix="/v1/models", tags=["models"])

# Every route resolves a model through MLflow; none of them calls another service.
_REGISTRY_DOWN = {503: f"{ErrorCode.REGISTRY_UNAVAILABLE}: MLflow unreachable."}


@router.get(
    "",
    response_model=ModelsOut,
    summary="List registered models",
    description="Every registered model with its versions (newest first), aliases, run metrics "
    f"and the version served by default (alias `{CHAMPION_ALIAS}` if set, else the latest).",
    responses=error_responses(503, descriptions=_REGISTRY_DOWN),
)
def list_models(registry: RegistryDep) -> ModelsOut:
    return registry.list_models()


@router.post(
    "/{model}/predict",
    response_model=PredictionOut,
    summary="Classify one MRI image",
    description="Upload one image as the multipart field `file`. It is decoded to grayscale and "
    "prepared exactly as the model's embedded preprocessing contract says.",
    responses=error_responses(
        400,
        404,
        413,
        415,
        422,
        500,
        503,
        descriptions={
            503: f"{ErrorCode.REGISTRY_UNAVAILABLE}: MLflow unreachable; {ErrorCode.MODEL_NOT_READY}: the model "
            "is not loaded yet, or (with batching) too many requests are waiting for it.",
            422: f"{NOT_MRI_422}; INVALID_REQUEST: a bad parameter.",
        },
    ),
)
async def predict_image(
    classifier: ModelDep, data: ImageBytes, predictor: PredictorDep, guard: OodGuardDep, frame: FrameQuery = None
) -> PredictionOut:
    started = time.perf_counter()
    # Decoded once, the guard first: in refuse mode a non-MRI image is a 422 NOT_A_BRAIN_MRI, never run.
    tensor, ood = await run_in_threadpool(judge_and_prepare, classifier, guard, data, frame)
    # The run may be shared with concurrent requests (batching).
    label, probabilities = classifier.postprocess((await predictor.predict(classifier, tensor))[0])
    return PredictionOut(
        model=classifier.name,
        version=classifier.version,
        label=label,
        probabilities=probabilities,
        latency_ms=round((time.perf_counter() - started) * 1000.0, 3),
        members=getattr(classifier, "member_versions", None),  # the ensemble's members that answered
        ood=ood,
    )


@router.get(
    "/{model}/contract",
    response_model=ContractOut,
    summary="The preprocessing contract of a model version",
    description="Image size, scaling, layout and class order embedded in the version's ONNX file; "
    "`version` in the answer is the number the request resolved to (useful to pin an alias).",
    responses=error_responses(404, 422, 500, 503, descriptions=_REGISTRY_DOWN),
)
def read_contract(classifier: ModelDep) -> ContractOut:
    return ContractOut(model=classifier.name, version=classifier.version, contract=classifier.contract)


def _predict_batch(classifier: OnnxClassifier, pixels: np.ndarray, run_batch: int) -> tuple[list[list[float]], float]:
    started = time.perf_counter()
    probabilities = classifier.predict_pixels(pixels, max_batch=run_batch)
    return probabilities.astype(float).tolist(), round((time.perf_counter() - started) * 1000.0, 3)


@router.post(
    "/{model}/predict-pixels",
    response_model=PixelsPredictionOut,
    summary="Classify a batch of decoded images",
    description="For callers that already hold pixels, such as the explainer perturbing one scan many times. "
    "The body is raw uint8 grayscale pixels, image after image, row by row (`application/octet-stream`), "
    f"with their shape in the `{PIXELS_SHAPE_HEADER}: N,H,W` header; H and W must equal the model's "
    "contract size (`GET /v1/models/{model}/contract`). The same onnxruntime session as `/predict` answers.",
    responses=error_responses(
        404,
        413,
        422,
        500,
        503,
        descriptions={
            413: "FILE_TOO_LARGE: more bytes than one batch may hold.",
            422: "INVALID_REQUEST: bad shape header, image size or body length.",
            **_REGISTRY_DOWN,
        },
    ),
)
async def predict_pixels(classifier: ModelDep, pixels: PixelBatch, settings: SettingsDep) -> PixelsPredictionOut:
    size = classifier.contract.image_size
    if pixels.shape[1:] != (size, size):
        raise ServiceError(
            ErrorCode.INVALID_REQUEST,
            f"Model {classifier.key} takes {size}x{size} images (its preprocessing contract); "
            f"got {pixels.shape[1]}x{pixels.shape[2]}.",
            {"image_size": size},
        )
    rows, latency_ms = await run_in_threadpool(_predict_batch, classifier, pixels, settings.pixel_run_batch)
    return PixelsPredictionOut(
        model=classifier.name,
        version=classifier.version,
        class_names=list(classifier.contract.class_names),
        probabilities=rows,
        latency_ms=latency_ms,
    )
