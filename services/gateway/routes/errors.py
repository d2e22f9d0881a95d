"""OpenAPI descriptions of the error answers the gateway's routes share."""

from __future__ import annotations

from typing import Any

from shared.schemas import ErrorOut


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the given statuses, all with the common error body."""
    described = {
        404: "MODEL_NOT_FOUND or VERSION_NOT_FOUND; the message names the models or versions that exist.",
        413: "FILE_TOO_LARGE: the upload is larger than the configured limit.",
        415: "INVALID_IMAGE: the upload is empty or not a decodable image.",
        422: "INVALID_REQUEST: e.g. no multipart `file` field, or a malformed or out-of-bounds parameter.",
        502: "UPSTREAM_ERROR: the inference (or explainer) service answered something unexpected.",
        503: "UPSTREAM_UNAVAILABLE (inference or explainer down), REGISTRY_UNAVAILABLE (MLflow down) or "
        "EXPLAINER_BUSY (every explanation slot stayed busy).",
    }
    return {status: {"model": ErrorOut, "description": described[status]} for status in statuses}
