"""Classifying one image with several models side by side."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.gateway.deps import InferenceDep
from services.gateway.upstream import InferenceClient
from shared.errors import ErrorCode, ServiceError
from shared.params import NAME_PATTERN
from shared.schemas import MODEL_FAMILIES, CompareItem, CompareOut
from shared.service import RequestIdDep, error_responses
from shared.uploads import ImageBytes
from shared.upstream import UpstreamError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["predictions"])

MAX_MODELS = 16
_NAME = re.compile(NAME_PATTERN)

ModelsQuery = Annotated[
    str | None,
    Query(
        max_length=1024,
        description=f"Comma-separated model names; default: all of {','.join(MODEL_FAMILIES)}.",
        examples=["rf,cnn"],
    ),
]


def parse_models(models: str | None) -> list[str]:
    """``"rf, cnn,rf"`` -> ``["rf", "cnn"]``; nothing -> the four families; malformed -> 422."""
    names = [name.strip() for name in (models or "").split(",") if name.strip()]
    if not names:
        return list(MODEL_FAMILIES)
    unique = list(dict.fromkeys(names))
    bad = [name for name in unique if not _NAME.match(name)]
    if bad or len(unique) > MAX_MODELS:
        raise ServiceError(
            ErrorCode.INVALID_REQUEST,
            f"`models` must list at most {MAX_MODELS} model names separated by commas, e.g. rf,cnn; "
            f"{len(bad)} name(s) are not valid model names.",
        )
    return unique


def _error_entry(error: ServiceError) -> dict[str, Any]:
    entry: dict[str, Any] = {"code": error.code.value, "message": error.message, "status": error.status}
    if error.details:
        entry["details"] = error.details
    return entry


async def _predict_one(inference: InferenceClient, model: str, image: bytes, request_id: str) -> CompareItem:
    try:
        result = await inference.predict(model, None, image, request_id)
    except ServiceError as exc:
        return CompareItem(model=model, ok=False, error=_error_entry(exc))
    except Exception:  # one model's surprise must not cost the others their answers
        logger.exception("compare: %s failed unexpectedly", model)
        internal = ServiceError(ErrorCode.INTERNAL, "Internal error; see the gateway log.")
        return CompareItem(model=model, ok=False, error=_error_entry(internal))
    return CompareItem(model=model, ok=True, result=result)


@router.post(
    "/compare",
    response_model=CompareOut,
    summary="Classify one MRI image with several models side by side",
    description="Upload one image as the multipart field `file`. Every model named in `models` "
    "(default: all four) classifies it concurrently with its default version. A model that fails "
    "gets its own `error` entry (code, message, status) while the others still answer; `agree` "
    "is true when at least one model answered and all that answered gave the same label. When "
    "every model fails for the same reason (e.g. the file is not an image), that error is returned.",
    responses=error_responses(404, 413, 415, 422, 503),
)
async def compare_models(
    inference: InferenceDep, image: ImageBytes, request_id: RequestIdDep, models: ModelsQuery = None
) -> CompareOut:
    names = parse_models(models)
    items = await asyncio.gather(*(_predict_one(inference, name, image, request_id) for name in names))
    labels = {item.model: item.result.label for item in items if item.ok and item.result is not None}
    if not labels:
        errors = [item.error or {} for item in items]
        if len({error.get("code") for error in errors}) == 1:
            first = errors[0]
            raise UpstreamError(ErrorCode(first["code"]), first["message"], first.get("details"), first["status"])
    return CompareOut(results=list(items), agree=len(set(labels.values())) == 1, labels=labels)
