"""FastAPI dependencies of the explainer: settings, the inference client, the upload, the bounds."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from services.explainer.config import Settings
from services.explainer.inference import InferenceBatchClient
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.service import get_settings


def get_inference(request: Request) -> InferenceBatchClient:
    return request.app.state.inference


SettingsDep = Annotated[Settings, Depends(get_settings)]
InferenceDep = Annotated[InferenceBatchClient, Depends(get_inference)]


def get_num_samples(
    settings: SettingsDep,
    num_samples: Annotated[
        int | None,
        Query(
            description="LIME only: copies of the image it classifies (more: steadier, slower); default and "
            "bounds come from the service's settings (500, 50..3000 unless configured). Occlusion classifies one "
            "copy per position of its patch."
        ),
    ] = None,
) -> int:
    """The requested number of samples within the configured bounds (422 outside), or the default."""
    if num_samples is None:
        return settings.default_num_samples
    if not settings.min_num_samples <= num_samples <= settings.max_num_samples:
        raise ServiceError(
            ErrorCode.INVALID_REQUEST,
            f"num_samples must be between {settings.min_num_samples} and {settings.max_num_samples}; "
            f"got {num_samples}.",
            {"min": settings.min_num_samples, "max": settings.max_num_samples},
        )
    return num_samples


NumSamples = Annotated[int, Depends(get_num_samples)]
