"""Judging an image with the guard alone: is it a brain MRI slice? (services/inference/guard_selector.py)

The explainer asks here before it explains an upload, so an explanation is guarded like a prediction."""

from __future__ import annotations

from fastapi import APIRouter

from services.inference.deps import DataPlaneDep
from services.inference.guard_selector import NOT_MRI_422
from shared.kit.params import FrameQuery
from shared.kit.schemas import OodCheckOut
from shared.kit.service import error_responses
from shared.kit.uploads import ImageBytes

router = APIRouter(prefix="/v1", tags=["guard"])


@router.post(
    "/ood",
    response_model=OodCheckOut,
    summary="Judge whether one image is a brain MRI slice",
    description="Upload one image as the multipart field `file` (or a DICOM file; `frame` for a multi-frame "
    "one). It is decoded as for a prediction (a file that is not an image is a 415, guard or not), then the guard "
    "against non-MRI input scores it; no model runs. Answers the verdict (`ood` is null when no "
    "guard is registered or the mode is off); in refuse mode an image above the threshold is a 422 "
    "NOT_A_BRAIN_MRI, as on the prediction routes.",
    responses=error_responses(
        400, 413, 415, 422, 503, descriptions={422: f"{NOT_MRI_422}; INVALID_REQUEST: a bad parameter."}
    ),
)
async def judge_image(dataplane: DataPlaneDep, data: ImageBytes, frame: FrameQuery = None) -> OodCheckOut:
    return OodCheckOut(mode=dataplane.guards.mode, ood=await dataplane.judge(data, frame))
