"""Explaining one model's answer (occlusion or LIME), computed by the explainer service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.gateway.auditing import record_explanation
from services.gateway.deps import ExplainerDep, InferenceDep
from services.gateway.routes.predict import NOT_A_BRAIN_MRI_422
from shared.kit.audit.requests import AuditorDep
from shared.kit.auth import CALLER_RESPONSES
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

# The explainer checks the bounds from its own settings; the gateway only refuses what can never be valid.
SamplesQuery = Annotated[
    int | None,
    Query(
        ge=1,
        description="LIME: perturbed copies to classify; default 500, bounds 50..3000 (the explainer's settings).",
    ),
]


@router.post(
    "/explain",
    response_model=ExplanationOut,
    summary="Explain a model's answer for one MRI image (occlusion or LIME)",
    description="Upload one image as the multipart field `file`; choose the model with `model` and optionally "
    "a `version`. The head is divided into regions (the background outside it is never one) and the served "
    "model classifies copies of the scan with regions hidden (`fill`: the head's mean grey by default, or "
    "blurred, or black). `method=occlusion` (the default) slides a patch over the head, on a grid and on the grid "
    "shifted by half a cell: a region (a quarter-cell tile) weighs the mean drop in the class's log-odds when the "
    "patch hides it; it draws nothing at random. `method=lime` hides random sets "
    "of superpixels (`num_samples` copies, `seed`) and fits LIME's weighted linear model; `fit_r2` says how well "
    "it fits. `regions` lists the regions that support `label` (default: the predicted class), strongest first; "
    "`opposing_regions` those that argue against it. `probabilities` equal `/v1/predict`'s for the same file. "
    "`overlay_png` is a base64 PNG of the weights over the scan (warm: supports the class, cool: opposes it). "
    "The guard judges the image first: its verdict is `ood`, and an image it refuses is a 422 NOT_A_BRAIN_MRI, "
    "never explained.",
    responses={
        **CALLER_RESPONSES,
        **error_responses(404, 413, 415, 422, 502, 503, descriptions={422: NOT_A_BRAIN_MRI_422}),
    },
)
async def explain_image(
    explainer: ExplainerDep,
    inference: InferenceDep,
    auditor: AuditorDep,
    image: ImageBytes,
    request_id: RequestIdDep,
    model: ModelQuery,
    version: VersionQuery = None,
    method: MethodQuery = None,
    fill: FillQuery = None,
    label: LabelQuery = None,
    seed: SeedQuery = 0,
    num_samples: SamplesQuery = None,
    num_regions: RegionsQuery = 5,
    frame: FrameQuery = None,
) -> ExplanationOut:
    given = {"model": model, "version": version, "method": method, "fill": fill, "label": label,
             "num_samples": num_samples, "frame": frame}  # fmt: skip
    params: dict[str, str | int] = {key: value for key, value in given.items() if value is not None}
    params.update(seed=seed, num_regions=num_regions)
    answer = await explainer.explain(image, params, request_id)
    await record_explanation(auditor, inference, image, answer)
    return answer
