"""Classifying one image with several models side by side."""

from __future__ import annotations

import json
import re
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from services.gateway.auditing import record_prediction
from services.gateway.deps import InferenceDep
from services.gateway.forwarding import ForwardedUpload, json_passthrough, multipart_upload
from services.gateway.routes.predict import NOT_A_BRAIN_MRI_422, UPLOAD_DESCRIPTION
from shared.kit.audit.requests import AuditorDep
from shared.kit.auth import CALLER_RESPONSES
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.params import NAME_PATTERN, FrameQuery
from shared.kit.schemas import COMPARE_MAX_MODELS, MODEL_FAMILIES, CompareOut, ItemError
from shared.kit.service import RequestIdDep, error_responses
from shared.kit.upstream import UpstreamError

router = APIRouter(prefix="/v1", tags=["predictions"])

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
    if bad or len(unique) > COMPARE_MAX_MODELS:
        raise ServiceError(
            ErrorCode.INVALID_REQUEST,
            f"`models` must list at most {COMPARE_MAX_MODELS} model names separated by commas, e.g. rf,cnn; "
            f"{len(bad)} name(s) are not valid model names.",
        )
    return unique


def raise_if_all_failed_alike(content: bytes) -> None:
    """When no model answered and all failed with one code (e.g. every name unknown), that error for the request.
    The answer is only read when none answered (its ``labels`` are empty)."""
    try:
        if json.loads(content).get("labels"):
            return
        answer = CompareOut.model_validate_json(content)
    except (ValueError, AttributeError) as exc:  # pydantic's ValidationError is a ValueError
        raise ServiceError(ErrorCode.UPSTREAM_ERROR, "The inference service answered with an unexpected body.") from exc
    errors = [item.error or {} for item in answer.results]
    if len({error.get("code") for error in errors}) != 1:
        return
    try:
        first = ItemError.model_validate(errors[0])
        code = ErrorCode(first.code)
    except ValueError as exc:  # pydantic's ValidationError is one too
        raise ServiceError(ErrorCode.UPSTREAM_ERROR, "The inference service answered with an unexpected body.") from exc
    raise UpstreamError(code, first.message, first.details, first.status)


@router.post(
    "/compare",
    response_model=CompareOut,
    summary="Classify one MRI image with several models side by side",
    description="Upload one image as the multipart field `file`. Every model named in `models` "
    "(default: all four) classifies it with its default version; the image is sent to the inference service "
    "once and decoded there once. A model that fails gets its own `error` entry (code, message, status) while "
    "the others still answer; `agree` is true when at least one model answered and all that answered gave the "
    "same label. A file that is not an image is one 415; when every model fails for the same reason (e.g. none "
    "of the names exists), that error is returned. The inference service's guard judges the image once: every "
    "result carries its `ood` verdict, and an image it refuses is one 422 NOT_A_BRAIN_MRI.",
    responses={
        **CALLER_RESPONSES,
        **error_responses(404, 413, 415, 422, 502, 503, descriptions={422: NOT_A_BRAIN_MRI_422}),
    },
    openapi_extra=multipart_upload("file", UPLOAD_DESCRIPTION),
)
async def compare_models(
    inference: InferenceDep,
    auditor: AuditorDep,
    upload: ForwardedUpload,
    request_id: RequestIdDep,
    models: ModelsQuery = None,
    frame: FrameQuery = None,
) -> Response:
    content = await inference.compare(parse_models(models), upload, request_id, frame)
    raise_if_all_failed_alike(content)
    await record_prediction(auditor, content, upload)
    return json_passthrough(content)
