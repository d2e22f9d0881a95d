"""Explaining one model's answer for one uploaded image."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from services.explainer.deps import InferenceDep, NumSamples, SettingsDep
from services.explainer.explaining import ExplainRequest, explain_upload
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.params import (
    FillQuery,
    FrameQuery,
    LabelQuery,
    MethodQuery,
    ModelQuery,
    RegionsQuery,
    SeedQuery,
    VersionQuery,
)
from shared.kit.schemas import ExplanationOut
from shared.kit.service import RequestIdDep, error_responses
from shared.kit.uploads import ImageBytes

router = APIRouter(prefix="/v1", tags=["explanations"])

# What this route's errors mean here; 404 and 500 are the inference service's, passed on as they came.
_MEANINGS = {
    404: "MODEL_NOT_FOUND or VERSION_NOT_FOUND, from the inference service.",
    422: "NOT_A_BRAIN_MRI, from the inference service's guard (refuse mode); INVALID_REQUEST: e.g. num_samples out "
    "of bounds, unknown label, unknown method or fill, no multipart `file` field.",
    500: "INVALID_MODEL, from the inference service: the registered model file cannot be served.",
    503: "UPSTREAM_UNAVAILABLE (inference down) or EXPLAINER_BUSY.",
}


@router.post(
    "/explain",
    response_model=ExplanationOut,
    summary="Explain a model's answer for one MRI image: the regions of the head for and against the class",
    description="Upload one image as the multipart field `file`. The head is divided into regions (the background "
    "outside it is never one) and the model classifies copies of the scan with regions hidden (`fill`: the head's "
    "mean grey by default, or blurred, or black). `method=occlusion` (the default unless configured): a patch "
    "slides over the head, on a grid and on the grid shifted by half a cell; a region (a quarter-cell tile) weighs "
    "the mean drop of the class's log-odds over the positions of the patch that hide it. "
    "Deterministic: no seed. "
    "`method=lime`: SLIC superpixels inside the head, `num_samples` copies with random regions hidden, and LIME's "
    "weighted linear model (its R^2 is `fit_r2`); the same `seed` gives the same answer. The class explained is "
    "`label` (default: the predicted one); `probabilities` are the model's answer for the upload itself, as "
    "`/v1/predict` gives it. Answers the regions that support the class and those that oppose it, strongest "
    "first, and an overlay PNG (base64) of the heat map over the scan. The inference service's guard judges the "
    "image first: its verdict is `ood`, and in refuse mode a non-MRI image is a 422 NOT_A_BRAIN_MRI.",
    responses=error_responses(400, 404, 413, 415, 422, 500, 502, 503, descriptions=_MEANINGS),
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
    method: MethodQuery = None,
    fill: FillQuery = None,
    seed: SeedQuery = 0,
    num_regions: RegionsQuery = 5,
    frame: FrameQuery = None,
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
        asked = ExplainRequest(
            model,
            version,
            label,
            method or settings.default_method,
            fill or settings.default_fill,
            seed,
            num_samples,
            num_regions,
            frame,
        )
        # Regions, the fit and the overlay are CPU work and the inference calls block: keep them off the event loop.
        return await run_in_threadpool(explain_upload, image, asked, inference, settings, request_id)
    finally:
        turns.release()
