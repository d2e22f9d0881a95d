"""The Open Inference Protocol's (KServe V2) REST payloads, as its ``inference_rest.md`` defines them.

Field names are the protocol's, so the pydantic models read like the specification. Parameters are
free-form key/value pairs there (string, number or boolean values).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.kit.params import refuse_unsafe_text
from shared.kit.service import API_VERSION

SERVER_NAME = "brain-tumor-inference"
SERVER_VERSION = API_VERSION
PLATFORM = "onnxruntime_onnx"
# The extension tritonclient.http uses by default: tensors as raw bytes after the JSON header.
BINARY_EXTENSION = "binary_tensor_data"
BINARY_HEADER = "inference-header-content-length"
# The input that takes image files (JPEG, PNG...) instead of the model's tensor.
IMAGE_INPUT_NAME = "image"
PROBABILITIES_OUTPUT = "probabilities"

Parameters = dict[str, str | int | float | bool]


class LiveOut(BaseModel):
    live: bool = True


class ReadyOut(BaseModel):
    ready: bool = True


class ModelReadyOut(BaseModel):
    name: str
    ready: bool = True


class ServerMetadataOut(BaseModel):
    name: str = SERVER_NAME
    version: str = SERVER_VERSION
    extensions: list[str] = [BINARY_EXTENSION]


class MetadataTensor(BaseModel):
    name: str
    datatype: str = Field(description="FP32 for tensors, BYTES for image files.")
    shape: list[int] = Field(description="-1 where the size varies (the batch).")


class ModelMetadataOut(BaseModel):
    name: str = Field(description="The short model name, e.g. cnn.")
    versions: list[str] = Field(description="The registered versions, newest first.")
    platform: str = PLATFORM
    inputs: list[MetadataTensor] = Field(description="Send exactly one of them: the model's tensor or image files.")
    outputs: list[MetadataTensor]


def _safe_text(value: Any) -> Any:
    # Names, ids and parameters are echoed in answers and logs: no NUL, control characters or lone surrogates.
    return refuse_unsafe_text(value)


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    # Typed Any so that a large tensor is not walked value by value by pydantic; numpy checks it (and base64
    # decoding checks BYTES elements).
    data: Any = Field(None, description="Row-major values, flat or nested; BYTES as base64 strings.")

    _text = field_validator("name", "datatype", "parameters")(_safe_text)


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = None

    _text = field_validator("name", "parameters")(_safe_text)


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None

    _text = field_validator("id", "parameters")(_safe_text)


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[float] | None = Field(None, description="Absent when the tensor follows as binary data.")


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class OipErrorOut(BaseModel):
    """The protocol's error body."""

    error: str = Field(description="What was expected and what was received; never echoes an input.")


OIP_ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "A bad request: unknown input or output, wrong datatype or shape, data that does not match its shape, "
    "an undecodable image, an invalid name.",
    404: "Unknown model or version; the message names those that exist.",
    413: "The body (or one image) is larger than the service accepts.",
    500: "The registered model file cannot be served.",
    503: "Not ready: the models are still loading, or MLflow (the registry) is unreachable.",
}


def oip_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the given statuses, all with the protocol's error body.

    The ``default`` entry says any other status (a 405, say) has that body too; it also keeps FastAPI from
    declaring its own 422 body, which these routes never answer (a bad parameter is a 400 here).
    """
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": OipErrorOut, "description": OIP_ERROR_DESCRIPTIONS[status]} for status in statuses
    }
    responses["default"] = {"model": OipErrorOut, "description": "Any other error, with the protocol's body."}
    return responses


def _inline_definitions(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its ``$defs`` references replaced by the definitions (they are not recursive)."""
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return inline(schema)


def infer_request_body() -> dict[str, Any]:
    """The infer route's ``requestBody`` for OpenAPI: the handler reads the body itself (it may be binary)."""
    schema = _inline_definitions(InferRequest.model_json_schema())
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": f"The binary tensor extension: the JSON request (its length in the "
                    f"{BINARY_HEADER} header), then each input's raw bytes in order.",
                },
            },
        }
    }
