"""The Open Inference Protocol (KServe V2) over REST: health, metadata and infer under ``/v2``.

What tritonclient, KServe's and MLServer's clients call. Models are the short names (``cnn``); a version
is a number or an alias, and without one the default version answers (as on ``/v1``). Errors have the
protocol's body ``{"error": "<message>"}`` (shared.kit.errors maps them on these paths).

The guard against non-MRI input (``services.inference.guard``) judges every image file of the ``image`` input: in
refuse mode one refused file is a 422 for the request (the protocol has no per-element errors; the message names
the element), otherwise the response's parameters carry the verdicts (``ood_score``, ``ood_flag``: one value per
element, comma-separated like ``class_names``; ``ood_threshold``, ``ood_guard_version``). The model's FP32 tensor
is not judged: it is already the model's input (resized, scaled, perhaps by its own maximum), not the decoded file the
guard's thumbnail is defined on; inverting it would score a resize of a resize against a threshold fitted on
something else, so the caller that decoded the image owns that check (docs/ood-guard.md).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from services.inference.auditing import record_inference
from services.inference.config import Settings
from services.inference.dataplane import DataPlane
from services.inference.deps import DataPlaneDep, ModelName, SettingsDep, require_ready
from services.inference.oip_schemas import (
    BINARY_HEADER,
    IMAGE_INPUT_NAME,
    PROBABILITIES_OUTPUT,
    InferResponse,
    LiveOut,
    MetadataTensor,
    ModelMetadataOut,
    ModelReadyOut,
    OipErrorOut,
    Parameters,
    ReadyOut,
    ServerMetadataOut,
    infer_request_body,
    oip_error_responses,
)
from services.inference.oip_tensors import InferBody, InferLimits, infer_response, json_too_large
from services.inference.referral import Referral
from shared.kit.audit.requests import Auditor, AuditorDep
from shared.kit.auth import CALLER_RESPONSES
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.params import NAME_PATTERN
from shared.kit.schemas import OodOut
from shared.kit.uploads import body_too_large, read_body

router = APIRouter(prefix="/v2", tags=["open inference protocol"])

VersionPath = Annotated[str, Path(pattern=NAME_PATTERN, description="Version number or alias (e.g. champion, latest).")]

_MODEL_ERRORS = oip_error_responses(400, 404, 500, 503)


@router.get("/health/live", response_model=LiveOut, summary="Server live", responses=oip_error_responses())
async def read_server_live() -> LiveOut:
    return LiveOut()


@router.get(
    "/health/ready",
    response_model=ReadyOut,
    summary="Server ready: default models preloaded and the MLflow registry reachable",
    responses=oip_error_responses(503),
)
def read_server_ready(request: Request) -> ReadyOut:
    require_ready(request)
    return ReadyOut()


@router.get("", response_model=ServerMetadataOut, summary="Server metadata", responses=oip_error_responses())
async def read_server_metadata() -> ServerMetadataOut:
    return ServerMetadataOut()


def _metadata(dataplane: DataPlane, model: str, version: str | None) -> ModelMetadataOut:
    classifier = dataplane.model(model, version)
    record, _ = dataplane.registry.resolve(model, version)
    contract = classifier.contract
    return ModelMetadataOut(
        name=classifier.name,
        versions=record.version_numbers(),
        inputs=[
            MetadataTensor(
                name=contract.input_name,
                datatype="FP32",
                shape=[-1 if d is None else d for d in contract.input_shape()],
            ),
            MetadataTensor(name=IMAGE_INPUT_NAME, datatype="BYTES", shape=[-1]),
        ],
        outputs=[MetadataTensor(name=PROBABILITIES_OUTPUT, datatype="FP32", shape=[-1, len(contract.class_names)])],
    )


_METADATA = {
    "response_model": ModelMetadataOut,
    "summary": "Model metadata: the inputs (the model's tensor, or image files) and the output",
    "responses": _MODEL_ERRORS,
}


@router.get("/models/{model}", **_METADATA)
def read_model_metadata(dataplane: DataPlaneDep, model: ModelName) -> ModelMetadataOut:
    return _metadata(dataplane, model, None)


@router.get("/models/{model}/versions/{version}", **_METADATA)
def read_model_version_metadata(dataplane: DataPlaneDep, model: ModelName, version: VersionPath) -> ModelMetadataOut:
    return _metadata(dataplane, model, version)


def _ready(dataplane: DataPlane, model: str, version: str | None) -> ModelReadyOut:
    # Only reports the servable's own ``ready``: a version nobody asked for yet is loaded by its first metadata
    # or infer request.
    # Resolved once (404 for what does not exist), then asked of the loaded versions alone: a catalogue whose
    # time to live just lapsed must not make a loaded version look unloaded.
    record, version_record = dataplane.registry.resolve(model, version)
    if dataplane.registry.loaded_version(record, version_record) is None:
        raise ServiceError(ErrorCode.MODEL_NOT_READY, f"Model {model}/{version_record.version} is not loaded yet.")
    return ModelReadyOut(name=record.short_name)


_READY = {
    "response_model": ModelReadyOut,
    "summary": "Model ready: the version is loaded (503 until its first use or the preload loads it)",
    "responses": oip_error_responses(400, 404, 503),
}


@router.get("/models/{model}/ready", **_READY)
def read_model_ready(dataplane: DataPlaneDep, model: ModelName) -> ModelReadyOut:
    return _ready(dataplane, model, None)


@router.get("/models/{model}/versions/{version}/ready", **_READY)
def read_model_version_ready(dataplane: DataPlaneDep, model: ModelName, version: VersionPath) -> ModelReadyOut:
    return _ready(dataplane, model, version)


def ood_parameters(verdicts: list[OodOut | None]) -> Parameters | None:
    """The verdicts as response parameters (scalars only in the protocol: per-element values comma-separated)."""
    judged = [verdict for verdict in verdicts if verdict is not None]
    # None for a tensor input, without a registered guard or in mode off; and if the guard appeared between two
    # parts of one request, rather than values that no longer line up with the elements.
    if not judged or len(judged) != len(verdicts):
        return None
    return {
        "ood_score": ",".join(str(verdict.score) for verdict in judged),
        "ood_flag": ",".join("true" if verdict.flag else "false" for verdict in judged),
        "ood_unusual": ",".join("true" if verdict.unusual else "false" for verdict in judged),
        "ood_threshold": judged[0].threshold,
        "ood_guard_version": judged[0].guard_version,
    } | _declared_modalities(judged)


def _declared_modalities(verdicts: list[OodOut]) -> Parameters:
    """``ood_declared_modality`` (empty for an element that declares none or MR), when any element declares one."""
    if not any(verdict.declared_modality for verdict in verdicts):
        return {}
    return {"ood_declared_modality": ",".join(verdict.declared_modality or "" for verdict in verdicts)}


def referral_parameters(referrals: list[Referral]) -> Parameters:
    """Each element's prediction set (its classes joined by "|"; elements comma-separated like ``class_names``) and
    referral; no sets for a version registered without conformal thresholds."""
    parameters: Parameters = {"referral": ",".join("true" if r.refer else "false" for r in referrals)}
    if referrals and all(r.prediction_set is not None for r in referrals):
        parameters["prediction_set"] = ",".join("|".join(r.prediction_set or []) for r in referrals)
    return parameters


async def _infer(
    request: Request, dataplane: DataPlane, settings: Settings, auditor: Auditor, model: str, version: str | None
) -> Response:
    if request.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
        raise ServiceError(ErrorCode.INVALID_REQUEST, "Compressed request bodies are not supported; send them plain.")
    classifier = await dataplane.find(model, version)
    rows = settings.max_json_rows
    json_limit = min(dataplane.json_body_limit(classifier, rows), settings.max_pixel_batch_bytes)
    header_length = request.headers.get(BINARY_HEADER)
    # A JSON body is bounded by what parsing it may cost; a binary one (raw tensors) by the pixel batches' limit.
    if header_length is None:
        body = await read_body(request, json_limit, json_too_large(json_limit, rows))
    else:
        body = await read_body(request, settings.max_pixel_batch_bytes, body_too_large(settings.max_pixel_batch_bytes))
    limits = InferLimits(settings.max_pixel_batch_images, settings.max_upload_bytes)
    infer_request, model_input = await dataplane.parse(
        InferBody(body, header_length, json_limit, rows, limits).read, classifier
    )
    del body  # the parsed input is all that is needed from here on
    probabilities, verdicts = await dataplane.infer(classifier, model_input)
    await record_inference(auditor, classifier, model_input, probabilities, verdicts, infer_request.id)
    class_names = classifier.contract.class_names
    parameters = {
        **(ood_parameters(verdicts) or {}),
        **referral_parameters(dataplane.referrals(classifier, probabilities, verdicts)),
    }
    return infer_response(infer_request, classifier.name, classifier.version, class_names, probabilities, parameters)


_INFER = {
    "response_model": InferResponse,
    "summary": "Infer: the probabilities for a batch given as the model's tensor or as image files",
    "description": f"One input: the model's FP32 tensor (name and shape in the model's metadata) or "
    f"`{IMAGE_INPUT_NAME}`, image files as BYTES (base64 strings in JSON). The output `{PROBABILITIES_OUTPUT}` "
    "is FP32 [N, classes] in the contract's class order (also in the output's `class_names` parameter). "
    f"The binary tensor extension is supported (`{BINARY_HEADER}`, `binary_data_size`, `binary_data`, "
    "`binary_data_output`). The OOD guard judges each image file (not a tensor): its verdicts are the "
    "response's parameters `ood_score`, `ood_flag` and `ood_unusual` (one per file, comma-separated), "
    "`ood_threshold` and `ood_guard_version`; in refuse mode a file that is not a brain MRI slice is a 422 for the "
    "request. Every element's prediction set and referral (docs/referral.md) are the parameters `prediction_set` "
    "(classes joined by `|`, elements comma-separated) and `referral` (`true`/`false` per element).",
    "responses": {
        200: {"content": {"application/octet-stream": {}}, "description": "JSON, or JSON then binary data."},
        **oip_error_responses(400, 404, 413, 500, 503),
        **{401: {**CALLER_RESPONSES[401], "model": OipErrorOut}},
        422: {
            "model": OipErrorOut,
            "description": f"{ErrorCode.NOT_A_BRAIN_MRI}: an image file of the `{IMAGE_INPUT_NAME}` input does not "
            "look like a brain MRI slice (the guard's score is above its threshold, BT_INFERENCE_OOD_MODE=refuse); "
            "the message names the element and its score.",
        },
    },
    "openapi_extra": infer_request_body(),
}


@router.post("/models/{model}/infer", **_INFER)
async def infer(
    request: Request, dataplane: DataPlaneDep, settings: SettingsDep, auditor: AuditorDep, model: ModelName
) -> Response:
    return await _infer(request, dataplane, settings, auditor, model, None)


@router.post("/models/{model}/versions/{version}/infer", **_INFER)
async def infer_version(
    request: Request,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    auditor: AuditorDep,
    model: ModelName,
    version: VersionPath,
) -> Response:
    return await _infer(request, dataplane, settings, auditor, model, version)
