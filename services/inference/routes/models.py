"""Listing the registered models and classifying an image with one of them."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response

from services.inference.deps import DataPlaneDep, MaskedUploadDep, ModelDep, ModelName, PixelBatch
from services.inference.guard_selector import NOT_MRI_422
from services.inference.listing import list_models as list_registered
from shared.kit.errors import ErrorCode
from shared.kit.params import FrameQuery, VersionQuery
from shared.kit.schemas import (
    CHAMPION_ALIAS,
    PIXELS_SHAPE_HEADER,
    ContractOut,
    MaskedPredictionOut,
    ModelsOut,
    PixelsPredictionOut,
    PredictionOut,
)
from shared.kit.service import error_responses, json_answer
from shared.kit.uploads import ImageBytes

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
def list_models(dataplane: DataPlaneDep) -> ModelsOut:
    return list_registered(dataplane.registry)


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
    dataplane: DataPlaneDep, model: ModelName, data: ImageBytes, version: VersionQuery = None, frame: FrameQuery = None
) -> Response:
    return json_answer(await dataplane.predict(model, version, data, frame))


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
async def predict_pixels(classifier: ModelDep, pixels: PixelBatch, dataplane: DataPlaneDep) -> PixelsPredictionOut:
    started = time.perf_counter()
    probabilities = await dataplane.predict_pixels(classifier, pixels)
    return PixelsPredictionOut(
        model=classifier.name,
        version=classifier.version,
        class_names=list(classifier.contract.class_names),
        probabilities=probabilities.astype(float).tolist(),
        latency_ms=round((time.perf_counter() - started) * 1000.0, 3),
    )


@router.post(
    "/{model}/predict-masked",
    response_model=MaskedPredictionOut,
    summary="Classify copies of one upload with regions hidden",
    description="For explanations: one upload asked about many times with parts of it hidden "
    "(`shared.core.masking`). Multipart parts: `file`, the upload exactly as sent to `/predict` (`frame` for a "
    "multi-frame DICOM file); `regions`, a label map PNG (0 = never hidden, 1..R = regions) at any size; `keep`, R "
    "bytes per copy (1 keeps the region, 0 hides it as `fill` says). The upload is decoded once; each model, and "
    "each member of an ensemble, resizes it to its own input size as `/predict` does, and the label map is resized "
    "to the same size by nearest neighbour, so a row that keeps every region answers `/predict`'s probabilities. "
    "No guard runs (the caller judges the upload with `/v1/ood`). One probability row per `keep` row, in order.",
    responses=error_responses(
        400,
        404,
        413,
        415,
        422,
        500,
        503,
        descriptions={
            413: "FILE_TOO_LARGE: the upload above the upload limit, the regions PNG above 4 MiB, or the body above "
            "their sum with the most copies.",
            422: "INVALID_REQUEST: a missing part, a label map or keep rows that do not fit (e.g. keep not R bytes a "
            "row, or bytes other than 0 and 1), more copies than `max_masked_copies`, or a bad parameter.",
            **_REGISTRY_DOWN,
        },
    ),
)
async def predict_masked(
    classifier: ModelDep, upload: MaskedUploadDep, dataplane: DataPlaneDep, frame: FrameQuery = None
) -> Response:
    started = time.perf_counter()
    probabilities = await dataplane.predict_masked(classifier, upload.data, frame, upload.masks)
    return json_answer(
        MaskedPredictionOut(
            model=classifier.name,
            version=classifier.version,
            fill=upload.masks.fill,
            class_names=list(classifier.contract.class_names),
            probabilities=probabilities.astype(float).tolist(),
            latency_ms=round((time.perf_counter() - started) * 1000.0, 3),
        )
    )
