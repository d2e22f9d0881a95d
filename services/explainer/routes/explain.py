"""Explaining one model's answer for one uploaded image."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from services.explainer.deps import (
    NAME_PATTERN,
    InferenceDep,
    NumSamples,
    RequestIdDep,
    SettingsDep,
)
from services.explainer.explaining import ExplainRequest, explain_upload
from shared.errors import ErrorCode, ServiceError
from shared.schemas import ErrorOut, ExplanationOut
from shared.uploads import ImageBytes

router = APIRouter(prefix="/v1", tags=["explanations"])

ModelQuery = Annotated[
    str, Query(pattern=NAME_PATTERN, description="Short model name: rf, snn, cnn or mobilenetv2.", examples=["cnn"])
]
VersionQuery = Annotated[
    str | None,
    Query(pattern=NAME_PATTERN, description="Version number or alias; default: the version /predict serves."),
]
LabelQuery = Annotated[
    str | None,
    Query(max_length=64, description="Class to explain (e.g. glioma); default: the class the model predicts."),
]
SeedQuery = Annotated[int, Query(ge=0, le=2**32 - 1, description="Seed of LIME's sampling; same seed, same answer.")]
RegionsQuery = Annotated[int, Query(ge=1, le=50, description="How many top regions to list (and outline).")]

_ERRORS: dict[int | str, dict] = {
    404: {"model": ErrorOut, "description": "MODEL_NOT_FOUND or VERSION_NOT_FOUND, from the inference service."},
    413: {"model": ErrorOut, "description": "FILE_TOO_LARGE."},
    415: {"model": ErrorOut, "description": "INVALID_IMAGE: empty or not a decodable image."},
    422: {"model": ErrorOut, "description": "INVALID_REQUEST: e.g. num_samples out of bounds, unknown label."},
    503: {"model": ErrorOut, "description": "UPSTREAM_UNAVAILABLE (inference down) or EXPLAINER_BUSY."},
}


@router.post(
    "/explain",
    response_model=ExplanationOut,
    summary="Explain a model's answer for one MRI image with LIME",
    description="Upload one image as the multipart field `file`. The scan is divided into superpixels (SLIC "
    "on the grayscale slice, inside the tissue), `num_samples` copies with random superpixels blacked out are "
    "classified by the model, and a weighted linear model says how much each region pushes towards the class "
    "(`label`, default: the predicted one). Answers the strongest regions with their weights and an overlay "
    "PNG (base64) of the heat map over the scan. The same `seed` gives the same answer.",
    responses=_ERRORS,
)
async def explain_image(
    request: Request,
    settings: SettingsDep,
    inference: InferenceDep,
    image: ImageBytes,
    request_id: RequestIdDep,
    num_samples: NumSamples,
    model: ModelQuery,
    version: VersionQuery = None,
    label: LabelQuery = None,
    seed: SeedQuery = 0,
    num_regions: RegionsQuery = 5,
) -> ExplanationOut:
    turns: asyncio.Semaphore = request.app.state.turns
    try:
        await asyncio.wait_for(turns.acquire(), timeout=settings.queue_timeout_s)
    except TimeoutError as exc:
        raise ServiceError(
            ErrorCode.EXPLAINER_BUSY,
            f"Every explanation slot stayed busy for {settings.queue_timeout_s:.0f} s; try again shortly.",
        ) from exc
    try:
        asked = ExplainRequest(model, version, label, seed, num_samples, num_regions)
        # LIME and the overlay are CPU work and the inference calls block: keep them off the event loop.
        return await run_in_threadpool(explain_upload, image, asked, inference, settings, request_id)
    finally:
        turns.release()
