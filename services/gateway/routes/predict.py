"""Classifying images with one model: one file, or a batch of files with one answer each."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from services.gateway.auditing import record_batch, record_prediction
from services.gateway.batch import BatchFiles, predict_files
from services.gateway.deps import InferenceDep, SettingsDep
from services.gateway.forwarding import ForwardedUpload, json_passthrough, multipart_upload
from shared.kit.audit.requests import AuditorDep
from shared.kit.auth import CALLER_RESPONSES
from shared.kit.errors import ErrorCode
from shared.kit.params import FrameQuery, ModelQuery, VersionQuery
from shared.kit.schemas import BatchPredictionOut, PredictionOut
from shared.kit.service import RequestIdDep, error_responses

router = APIRouter(prefix="/v1", tags=["predictions"])

UPLOAD_DESCRIPTION = "The MRI image (JPEG, PNG, BMP, TIFF..., or a DICOM file)."

# Inference's guard (docs/ood-guard.md) refuses an image that is not a brain MRI slice; relayed unchanged.
NOT_A_BRAIN_MRI_422 = (
    f"{ErrorCode.NOT_A_BRAIN_MRI}: the inference service's guard scored the image above its threshold, or the "
    "DICOM file declares another modality than MR (BT_INFERENCE_OOD_MODE=refuse); `details.ood` holds the "
    "verdict. INVALID_REQUEST: a missing field or a malformed parameter."
)


@router.post(
    "/predict",
    response_model=PredictionOut,
    summary="Classify one MRI image with one model",
    description="Upload one image as the multipart field `file`; choose the model with `model` and "
    "optionally a `version` (number or alias). Answers the label (glioma, meningioma, notumor or "
    "pituitary), the probability of every class and the model's latency, and `ood`, the inference service's "
    "verdict on whether the image looks like a brain MRI slice (null without a registered guard); an image "
    "the guard refuses is a 422 NOT_A_BRAIN_MRI.",
    responses={
        **CALLER_RESPONSES,
        **error_responses(404, 413, 415, 422, 502, 503, descriptions={422: NOT_A_BRAIN_MRI_422}),
    },
    openapi_extra=multipart_upload("file", UPLOAD_DESCRIPTION),
)
async def predict_image(
    inference: InferenceDep,
    auditor: AuditorDep,
    upload: ForwardedUpload,
    request_id: RequestIdDep,
    model: ModelQuery,
    version: VersionQuery = None,
    frame: FrameQuery = None,
) -> Response:
    content = await inference.predict(model, version, upload, request_id, frame)
    await record_prediction(auditor, content, upload)
    return json_passthrough(content)


@router.post(
    "/predict/batch",
    response_model=BatchPredictionOut,
    summary="Classify several MRI images with one model",
    description="Upload the images as repeated multipart fields `files` (at most `max_batch_files`, 32 by "
    "default, each within the upload limit); choose the model with `model` and optionally a `version`. Answers "
    "one entry per file, in the order sent: `result` as `/v1/predict` answers it, or that file's own `error` "
    "(code, message, status; e.g. INVALID_IMAGE 415, FILE_TOO_LARGE 413, NOT_A_BRAIN_MRI 422 for a file the "
    "inference service's guard refuses) while the other files still answer; each `result` carries its file's "
    "`ood` verdict. An unknown model or version fails the whole request (404).",
    responses={
        **CALLER_RESPONSES,
        **error_responses(
            400,
            404,
            413,
            422,
            502,
            503,
            descriptions={
                400: "INVALID_REQUEST: the multipart body could not be parsed (or holds more than 1000 parts).",
                413: "FILE_TOO_LARGE: the body is larger than max_batch_files files at the upload limit.",
                422: "INVALID_REQUEST: no `files` field, more files than max_batch_files, or a malformed parameter.",
            },
        ),
    },
)
async def predict_batch(
    inference: InferenceDep,
    auditor: AuditorDep,
    files: BatchFiles,
    settings: SettingsDep,
    request_id: RequestIdDep,
    model: ModelQuery,
    version: VersionQuery = None,
    frame: FrameQuery = None,
) -> BatchPredictionOut:
    answer = await predict_files(inference, model, version, files, settings.max_upload_bytes, request_id, frame)
    await record_batch(auditor, files, answer)
    return answer
