"""Open Inference Protocol bodies to model inputs and probabilities back to a response.

An infer body is JSON, or, with the binary tensor extension (what ``tritonclient.http`` sends by default),
a JSON header of ``Inference-Header-Content-Length`` bytes followed by each binary input's raw bytes in
input order (``parameters.binary_data_size`` says how many). FP32 is little-endian; a BYTES element is
a 4-byte little-endian length and the bytes. In JSON, a BYTES element (an image file) is a base64 string,
since JSON strings cannot hold arbitrary bytes.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from services.inference.oip_schemas import (
    BINARY_HEADER,
    IMAGE_INPUT_NAME,
    PROBABILITIES_OUTPUT,
    InferRequest,
    InferResponse,
    Parameters,
    RequestInput,
    ResponseOutput,
)
from services.inference.servable import Classifier
from shared.core.contract import PreprocessingContract
from shared.kit.errors import ErrorCode, ServiceError

_LENGTH = struct.Struct("<I")

# What one number of an FP32 tensor may take in a JSON body: a float64's repr with sign and exponent
# ("-1.2345678901234567e-05") and its ", " (json.dumps of numpy's tolist(), what clients send).
JSON_BYTES_PER_NUMBER = 24
# Room beyond the tensor's numbers: names, shapes, parameters, or a few base64 image files.
JSON_SLACK_BYTES = 1024 * 1024


def json_body_limit(input_shapes: Iterable[tuple[int, ...]], rows: int) -> int:
    """The most bytes a JSON infer body (or the JSON header of a binary one) may hold: ``rows`` rows of the
    largest of ``input_shapes`` (one image's input, without the batch) at ``JSON_BYTES_PER_NUMBER``, plus slack.

    Parsing JSON makes a Python object per number (up to 8 bytes of memory per byte of body for "0.0,0.0,..."),
    so the limit, not the body's declared shape, is what bounds a parse's memory.
    """
    numbers = max((math.prod(shape) for shape in input_shapes), default=0)
    return rows * numbers * JSON_BYTES_PER_NUMBER + JSON_SLACK_BYTES


def json_too_large(limit: int, rows: int) -> ServiceError:
    """FILE_TOO_LARGE for a JSON body (or binary header) beyond ``json_body_limit``: says how to send more."""
    return ServiceError(
        ErrorCode.FILE_TOO_LARGE,
        f"The JSON request is too large; at most {limit} bytes are accepted ({rows} rows of the largest model input "
        f"at {JSON_BYTES_PER_NUMBER} bytes a number, plus {JSON_SLACK_BYTES} bytes). Send larger batches as binary "
        "data (the binary tensor extension) or in several requests.",
        {"max_bytes": limit},
    )


def _invalid(message: str) -> ServiceError:
    return ServiceError(ErrorCode.INVALID_REQUEST, message)


@dataclass(frozen=True)
class InferLimits:
    """What one infer request may hold: images (or tensor rows), and bytes per image file."""

    max_items: int
    max_image_bytes: int


def _header_length(value: str | None, body_length: int) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) > body_length:
        raise _invalid(
            f"{BINARY_HEADER} must be the length of the JSON header, at most the body's {body_length} bytes."
        )
    return int(value)


def _binary_segments(request: InferRequest, binary: bytes) -> list[bytes | None]:
    """Each input's raw bytes (None for an input with JSON data), checking the sizes add up to the body."""
    segments: list[bytes | None] = []
    offset = 0
    for tensor in request.inputs:
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            segments.append(None)
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _invalid(f"Input {tensor.name!r}: binary_data_size must be a byte count, got {size!r}.")
        segments.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise _invalid(
            f"The inputs' binary_data_size add up to {offset} bytes, but {len(binary)} follow the JSON header."
        )
    return segments


def parse_infer_request(
    body: bytes | bytearray, header_length: str | None, json_limit: int, rows: int
) -> tuple[InferRequest, list[bytes | None]]:
    """The request and, per input, its binary data if it came as such; the JSON part is checked against
    ``json_limit`` before it is parsed (``rows``: for the message)."""
    split = _header_length(header_length, len(body))
    if (len(body) if split is None else split) > json_limit:
        raise json_too_large(json_limit, rows)
    header, binary = (body, b"") if split is None else (body[:split], body[split:])
    try:
        request = InferRequest.model_validate_json(header)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        raise _invalid(f"The body is not an inference request: {problems}") from exc
    return request, _binary_segments(request, binary)


def _shape_text(shape: tuple[int | None, ...] | list[int]) -> str:
    return "[" + ", ".join("-1" if dim is None else str(dim) for dim in shape) + "]"


def _check_batch(tensor: RequestInput, limits: InferLimits) -> int:
    count = tensor.shape[0] if tensor.shape else 0
    if not 1 <= count <= limits.max_items:
        raise _invalid(f"Input {tensor.name!r}: the batch (shape[0]) must be 1 to {limits.max_items}, got {count}.")
    return count


def _data_or_raw(tensor: RequestInput, raw: bytes | None) -> None:
    if (tensor.data is None) == (raw is None):
        raise _invalid(f"Input {tensor.name!r} needs its values either in 'data' or as binary data, exactly one.")


def tensor_input(
    tensor: RequestInput, raw: bytes | None, contract: PreprocessingContract, model_key: str, limits: InferLimits
) -> np.ndarray:
    """An FP32 input in the contract's shape, as float32 (N, ...)."""
    expected = contract.input_shape()
    if tensor.datatype != "FP32":
        raise _invalid(f"Input {tensor.name!r} of model {model_key} is FP32, got {tensor.datatype}.")
    if len(tensor.shape) != len(expected) or tuple(tensor.shape[1:]) != expected[1:]:
        raise _invalid(
            f"Input {tensor.name!r} of model {model_key} has shape {_shape_text(expected)} (its preprocessing "
            f"contract); got {_shape_text(tensor.shape)}."
        )
    count = _check_batch(tensor, limits)
    _data_or_raw(tensor, raw)
    shape = (count, *expected[1:])
    size = int(np.prod(shape))
    if raw is not None:
        if len(raw) != size * 4:
            raise _invalid(f"Input {tensor.name!r}: shape {list(shape)} needs {size * 4} bytes, got {len(raw)}.")
        values = np.frombuffer(raw, dtype="<f4")
    else:
        try:
            values = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        except (ValueError, TypeError) as exc:
            raise _invalid(f"Input {tensor.name!r}: 'data' must hold numbers only.") from exc
        if values.size != size:
            raise _invalid(f"Input {tensor.name!r}: shape {list(shape)} needs {size} values, got {values.size}.")
    if not np.isfinite(values).all():
        raise _invalid(f"Input {tensor.name!r}: values must be finite numbers.")
    return values.reshape(shape).astype(np.float32, copy=False)


def _split_bytes_elements(raw: bytes, name: str) -> list[bytes]:
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise _invalid(f"Input {name!r}: the binary BYTES data ends inside an element's 4-byte length.")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise _invalid(f"Input {name!r}: an element declares {length} bytes, only {len(raw) - offset} follow.")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def _decode_base64_elements(tensor: RequestInput) -> list[bytes]:
    values = np.asarray(tensor.data, dtype=object).reshape(-1) if isinstance(tensor.data, list) else None
    if values is None or not all(isinstance(value, str) for value in values):
        raise _invalid(f"Input {tensor.name!r}: in JSON, 'data' must be a list of base64 strings (the image files).")
    try:
        return [base64.b64decode(value, validate=True) for value in values]
    except (binascii.Error, ValueError) as exc:
        raise _invalid(f"Input {tensor.name!r}: an element of 'data' is not valid base64.") from exc


def image_input(tensor: RequestInput, raw: bytes | None, limits: InferLimits) -> list[bytes]:
    """A BYTES input of image files, shape [N] or [N, 1]: the files' bytes."""
    if tensor.datatype != "BYTES":
        raise _invalid(f"Input {IMAGE_INPUT_NAME!r} takes image files as BYTES, got {tensor.datatype}.")
    if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ([], [1]):
        raise _invalid(f"Input {IMAGE_INPUT_NAME!r} has shape [-1] (one file per image); got {tensor.shape}.")
    count = _check_batch(tensor, limits)
    _data_or_raw(tensor, raw)
    files = _split_bytes_elements(raw, tensor.name) if raw is not None else _decode_base64_elements(tensor)
    if len(files) != count:
        raise _invalid(f"Input {IMAGE_INPUT_NAME!r}: shape {tensor.shape} says {count} files, got {len(files)}.")
    for index, data in enumerate(files):
        if len(data) > limits.max_image_bytes:
            raise ServiceError(
                ErrorCode.FILE_TOO_LARGE,
                f"Input {IMAGE_INPUT_NAME!r} element {index} is larger than {limits.max_image_bytes} bytes.",
                {"max_bytes": limits.max_image_bytes},
            )
    return files


def model_input(
    infer_request: InferRequest, segments: list[bytes | None], classifier: Classifier, limits: InferLimits
) -> np.ndarray | list[bytes]:
    """The request's one input: the model's tensor, or the image files."""
    contract = classifier.contract
    if len(infer_request.inputs) != 1:
        raise _invalid(
            f"Send one input: {contract.input_name!r} (the model's FP32 tensor) or {IMAGE_INPUT_NAME!r} (image "
            f"files as BYTES); got {len(infer_request.inputs)}."
        )
    tensor, raw = infer_request.inputs[0], segments[0]
    if tensor.name == contract.input_name:
        return tensor_input(tensor, raw, contract, classifier.key, limits)
    if tensor.name == IMAGE_INPUT_NAME:
        return image_input(tensor, raw, limits)
    raise _invalid(
        f"Model {classifier.key} has no input {tensor.name!r}; its inputs are {contract.input_name!r} "
        f"(FP32) and {IMAGE_INPUT_NAME!r} (BYTES)."
    )


@dataclass(frozen=True)
class InferBody:
    """An infer request's body as received, with what bounds its reading (blocking work: run it in a thread)."""

    body: bytes | bytearray
    header_length: str | None
    json_limit: int
    rows: int
    limits: InferLimits

    def read(self, classifier: Classifier) -> tuple[InferRequest, np.ndarray | list[bytes]]:
        """The parsed request and the model's input."""
        infer_request, segments = parse_infer_request(self.body, self.header_length, self.json_limit, self.rows)
        return infer_request, model_input(infer_request, segments, classifier, self.limits)


def wants_binary_output(request: InferRequest) -> bool:
    """Whether the probabilities go back as binary data; refuses outputs the models do not have."""
    default = (request.parameters or {}).get("binary_data_output") is True
    binary = default
    for output in request.outputs or []:
        if output.name != PROBABILITIES_OUTPUT:
            raise _invalid(f"Unknown output {output.name!r}: the models have one output, {PROBABILITIES_OUTPUT!r}.")
        parameters = output.parameters or {}
        if parameters.get("classification"):
            raise _invalid("The classification extension is not supported: request the probabilities.")
        binary = parameters.get("binary_data", default) is True
    return binary


def infer_response(
    request: InferRequest,
    name: str,
    version: str,
    class_names: tuple[str, ...],
    probabilities: np.ndarray,
    parameters: Parameters | None = None,
) -> Response:
    """The probabilities (N, classes) as the protocol's FP32 output, in JSON or as binary data; ``parameters``
    are the response's own (e.g. the OOD guard's verdicts)."""
    values = np.ascontiguousarray(probabilities, dtype="<f4")
    binary = wants_binary_output(request)
    output_parameters: Parameters = {"class_names": ",".join(class_names)}
    if binary:
        output_parameters["binary_data_size"] = values.nbytes
    output = ResponseOutput(
        name=PROBABILITIES_OUTPUT,
        shape=list(values.shape),
        datatype="FP32",
        parameters=output_parameters,
        data=None if binary else values.reshape(-1).astype(float).tolist(),
    )
    answer = InferResponse(
        model_name=name, model_version=version, id=request.id, parameters=parameters, outputs=[output]
    )
    if not binary:
        return JSONResponse(answer.model_dump(exclude_none=True))
    header = answer.model_dump_json(exclude_none=True).encode()
    return Response(
        header + values.tobytes(),
        media_type="application/octet-stream",
        headers={BINARY_HEADER: str(len(header))},
    )
