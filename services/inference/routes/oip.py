"""The Open Inference Protocol (KServe V2) over REST: health, metadata and infer under ``/v2``.

What tritonclient, KServe's and MLServer's clients call. Models are the short names (``cnn``); a version
is a number or an alias, and without one the default version answers (as on ``/v1``). Errors have the
protocol's body ``{"error": "<message>"}`` (shared.errors maps them on these paths).

The guard against non-MRI input (``services.inference.ood``) judges every image file of the ``image`` input: in
refuse mode one refused file is a 422 for the request (the protocol has no per-element errors; the message names
the element), otherwise the response's parameters carry the verdicts (``ood_score``, ``ood_flag``: one value per
element, comma-separated like ``class_names``; ``ood_threshold``, ``ood_guard_version``). The model's FP32 tensor
is not judged: it is already the model's input (resized, scaled, perhaps by its own maximum), not the decoded file the
guard's thumbnail is defined on; inverting it would score a resize of a resize against a threshold fitted on
something else, so the caller that decoded the image owns that check (docs/ood-guard.md).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from services.inference.batching import Predictor
from services.inference.config import Settings
from services.inference.deps import ModelName, OodGuardDep, PredictorDep, RegistryDep, SettingsDep, require_ready
from services.inference.oip_schemas import (
    BINARY_HEADER,
    IMAGE_INPUT_NAME,
    PROBABILITIES_OUTPUT,
    InferRequest,
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
from services.inference.oip_tensors import InferLimits, image_input, infer_response, parse_infer_request, tensor_input
from services.inference.ood import OodGuard
from services.inference.registry import ModelRegistry
from services.inference.uploads import judge_and_prepare
from shared.errors import ErrorCode, ServiceError
from shared.onnx_classifier import OnnxClassifier
from shared.params import NAME_PATTERN
from shared.schemas import OodOut
from shared.uploads import read_body

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


def _metadata(registry: ModelRegistry, model: str, version: str | None) -> ModelMetadataOut:
    classifier = registry.get(model, version)
    record, _ = registry.resolve(model, version)
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
def read_model_metadata(registry: RegistryDep, model: ModelName) -> ModelMetadataOut:
    return _metadata(registry, model, None)


@router.get("/models/{model}/versions/{version}", **_METADATA)
def read_model_version_metadata(registry: RegistryDep, model: ModelName, version: VersionPath) -> ModelMetadataOut:
    return _metadata(registry, model, version)


def _ready(registry: ModelRegistry, model: str, version: str | None) -> ModelReadyOut:
    # Only reports: a version nobody asked for yet is loaded by its first metadata or infer request.
    record, version_record = registry.resolve(model, version)
    key = f"{record.short_name}/{version_record.version}"
    if not registry.loaded().get(key, False):
        raise ServiceError(ErrorCode.MODEL_NOT_READY, f"Model {key} is not loaded yet.")
    return ModelReadyOut(name=record.short_name)


_READY = {
    "response_model": ModelReadyOut,
    "summary": "Model ready: the version is loaded (503 until its first use or the preload loads it)",
    "responses": oip_error_responses(400, 404, 503),
}


@router.get("/models/{model}/ready", **_READY)
def read_model_ready(registry: RegistryDep, model: ModelName) -> ModelReadyOut:
    return _ready(registry, model, None)


@router.get("/models/{model}/versions/{version}/ready", **_READY)
def read_model_version_ready(registry: RegistryDep, model: ModelName, version: VersionPath) -> ModelReadyOut:
    return _ready(registry, model, version)


def _decode(
    classifier: OnnxClassifier, guard: OodGuard, files: list[bytes], first_index: int
) -> tuple[np.ndarray, list[OodOut | None]]:
    """The files as the model's tensor and their verdicts; each file is decoded once, the guard judging it first."""
    tensors, verdicts = [], []
    for index, data in enumerate(files, first_index):
        try:
            tensor, verdict = judge_and_prepare(classifier, guard, data)
            tensors.append(tensor)
            verdicts.append(verdict)
        except ServiceError as exc:
            message = f"Input {IMAGE_INPUT_NAME!r} element {index}: {exc.message}"
            raise ServiceError(exc.code, message, exc.details) from exc
    return np.concatenate(tensors), verdicts


async def _predict(
    predictor: Predictor,
    classifier: OnnxClassifier,
    guard: OodGuard,
    model_input: np.ndarray | list[bytes],
    run_batch: int,
) -> tuple[np.ndarray, list[OodOut | None]]:
    """Probabilities for a tensor, or for image files judged and decoded ``run_batch`` at a time (bounded
    memory), with the files' verdicts (none for a tensor).

    Each part runs through the predictor, as ``/v1`` predictions do: shared with concurrent requests when
    batching is on, and recorded in the metrics.
    """
    parts, verdicts = [], []
    for start in range(0, len(model_input), run_batch):
        if isinstance(model_input, np.ndarray):
            tensor = model_input[start : start + run_batch]
        else:
            files = model_input[start : start + run_batch]
            tensor, judged = await run_in_threadpool(_decode, classifier, guard, files, start)
            verdicts += judged
        parts.append(await predictor.predict(classifier, tensor))
    return np.concatenate(parts), verdicts


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
        "ood_threshold": judged[0].threshold,
        "ood_guard_version": judged[0].guard_version,
    }


def _model_input(
    infer_request: InferRequest, segments: list[bytes | None], classifier: OnnxClassifier, settings: Settings
) -> np.ndarray | list[bytes]:
    """The request's one input: the model's tensor, or the image files."""
    contract = classifier.contract
    if len(infer_request.inputs) != 1:
        raise ServiceError(
            ErrorCode.INVALID_REQUEST,
            f"Send one input: {contract.input_name!r} (the model's FP32 tensor) or {IMAGE_INPUT_NAME!r} (image "
            f"files as BYTES); got {len(infer_request.inputs)}.",
        )
    tensor, raw = infer_request.inputs[0], segments[0]
    limits = InferLimits(settings.max_pixel_batch_images, settings.max_upload_bytes)
    if tensor.name == contract.input_name:
        return tensor_input(tensor, raw, contract, classifier.key, limits)
    if tensor.name == IMAGE_INPUT_NAME:
        return image_input(tensor, raw, limits)
    raise ServiceError(
        ErrorCode.INVALID_REQUEST,
        f"Model {classifier.key} has no input {tensor.name!r}; its inputs are {contract.input_name!r} "
        f"(FP32) and {IMAGE_INPUT_NAME!r} (BYTES).",
    )


async def _infer(
    request: Request,
    registry: ModelRegistry,
    predictor: Predictor,
    guard: OodGuard,
    settings: Settings,
    model: str,
    version: str | None,
) -> Response:
    if request.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
        raise ServiceError(ErrorCode.INVALID_REQUEST, "Compressed request bodies are not supported; send them plain.")
    classifier = await run_in_threadpool(registry.get, model, version)
    body = await read_body(request, settings.max_pixel_batch_bytes)
    infer_request, segments = parse_infer_request(body, request.headers.get(BINARY_HEADER))
    model_input = _model_input(infer_request, segments, classifier, settings)
    probabilities, verdicts = await _predict(predictor, classifier, guard, model_input, settings.pixel_run_batch)
    class_names = classifier.contract.class_names
    parameters = ood_parameters(verdicts)
    return infer_response(infer_request, classifier.name, classifier.version, class_names, probabilities, parameters)


_INFER = {
    "response_model": InferResponse,
    "summary": "Infer: the probabilities for a batch given as the model's tensor or as image files",
    "description": f"One input: the model's FP32 tensor (name and shape in the model's metadata) or "
    f"`{IMAGE_INPUT_NAME}`, image files as BYTES (base64 strings in JSON). The output `{PROBABILITIES_OUTPUT}` "
    "is FP32 [N, classes] in the contract's class order (also in the output's `class_names` parameter). "
    f"The binary tensor extension is supported (`{BINARY_HEADER}`, `binary_data_size`, `binary_data`, "
    "`binary_data_output`). The OOD guard judges each image file (not a tensor): its verdicts are the "
    "response's parameters `ood_score` and `ood_flag` (one per file, comma-separated), `ood_threshold` and "
    "`ood_guard_version`; in refuse mode a file that is not a brain MRI slice is a 422 for the request.",
    "responses": {
        200: {"content": {"application/octet-stream": {}}, "description": "JSON, or JSON then binary data."},
        **oip_error_responses(400, 404, 413, 500, 503),
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
    request: Request,
    registry: RegistryDep,
    predictor: PredictorDep,
    guard: OodGuardDep,
    settings: SettingsDep,
    model: ModelName,
) -> Response:
    return await _infer(request, registry, predictor, guard, settings, model, None)


@router.post("/models/{model}/versions/{version}/infer", **_INFER)
async def infer_version(
    request: Request,
    registry: RegistryDep,
    predictor: PredictorDep,
    guard: OodGuardDep,
    settings: SettingsDep,
    model: ModelName,
    version: VersionPath,
) -> Response:
    return await _infer(request, registry, predictor, guard, settings, model, version)
