"""Answers that hold several items, each with its own error: one image with several models (``/v1/compare``)
and several images with one model (``/v1/models/{model}/predict-batch``). The work is the data plane's
(``dataplane.compare``, ``dataplane.predict_files``): one decoding and one verdict per file, each model's
runs side by side.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Response, UploadFile
from pydantic import StringConstraints

from services.inference.deps import DataPlaneDep, ModelName, SettingsDep
from services.inference.guard_selector import NOT_MRI_422
from shared.kit.errors import ErrorCode
from shared.kit.params import NAME_PATTERN, FrameQuery, VersionQuery
from shared.kit.schemas import (
    COMPARE_MAX_MODELS,
    PREDICT_BATCH_MAX_FILES,
    BatchPredictionOut,
    CompareOut,
)
from shared.kit.service import error_responses, json_answer
from shared.kit.uploads import ImageBytes, read_uploads

router = APIRouter(prefix="/v1", tags=["models"])

_REGISTRY_DOWN = {503: f"{ErrorCode.REGISTRY_UNAVAILABLE}: MLflow unreachable."}

ModelsQuery = Annotated[
    list[Annotated[str, StringConstraints(pattern=NAME_PATTERN)]],
    Query(
        min_length=1,
        max_length=COMPARE_MAX_MODELS,
        description=f"A model name, repeated for each model (at most {COMPARE_MAX_MODELS}): `models=rf&models=cnn`.",
    ),
]
BatchFiles = Annotated[
    list[UploadFile],
    File(description=f"The images, one `files` part each (at most {PREDICT_BATCH_MAX_FILES})."),
]


@router.post(
    "/compare",
    response_model=CompareOut,
    summary="Classify one MRI image with several models",
    description="Upload one image as the multipart field `file` and name the models with repeated `models` "
    "parameters. The image is decoded once and resized once per contract size; every model's default version "
    "(alias `champion` if set, else the latest) runs on it, the models concurrently, each run shared with "
    "concurrent requests for that model when batching is on. A model that cannot answer (unknown, no version, "
    "cannot be loaded) gets its own `error` entry (code, message, status) while the others answer; a file that "
    "is not an image is one 415 for the request. The guard judges the image once: every answer carries its "
    "`ood` verdict, and in refuse mode an image that is not a brain MRI slice is one 422 NOT_A_BRAIN_MRI.",
    responses=error_responses(
        400,
        413,
        415,
        422,
        503,
        descriptions={422: f"{NOT_MRI_422}; INVALID_REQUEST: a bad parameter (e.g. no `models`, a bad name)."},
    ),
)
async def compare_models(
    dataplane: DataPlaneDep, data: ImageBytes, models: ModelsQuery, frame: FrameQuery = None
) -> Response:
    return json_answer(CompareOut.from_items(await dataplane.compare(list(dict.fromkeys(models)), data, frame)))


@router.post(
    "/models/{model}/predict-batch",
    response_model=BatchPredictionOut,
    summary="Classify several MRI images with one model",
    description=f"Upload up to {PREDICT_BATCH_MAX_FILES} images as repeated multipart fields `files`; choose the "
    "version with `version` (number or alias; default: the default version). Answers one entry per file, in "
    "order: a prediction, or that file's own error (e.g. INVALID_IMAGE, 415) while the others answer. The good "
    "files run through the model together. The whole body is bounded by the service's upload limit. The guard "
    "judges each file: every prediction carries its `ood` verdict, and in refuse mode a file that is not a "
    "brain MRI slice gets its own NOT_A_BRAIN_MRI (422) error entry.",
    responses=error_responses(
        400,
        404,
        413,
        422,
        500,
        503,
        descriptions={
            **_REGISTRY_DOWN,
            422: "INVALID_REQUEST: no `files` field, too many files, or a malformed parameter. (A file the guard "
            f"refuses is not a 422 for the request: its own entry says {ErrorCode.NOT_A_BRAIN_MRI}.)",
        },
    ),
)
async def predict_batch(
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    model: ModelName,
    files: BatchFiles,
    version: VersionQuery = None,
    frame: FrameQuery = None,
) -> BatchPredictionOut:
    data = await read_uploads(files, PREDICT_BATCH_MAX_FILES, settings.max_upload_bytes)
    return BatchPredictionOut(results=await dataplane.predict_files(model, version, data, frame))
