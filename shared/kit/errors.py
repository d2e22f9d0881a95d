"""One error type for all services, with symbolic codes mapped to HTTP status in one table.

The JSON body is always ``{"error": {"code": ..., "message": ..., "request_id": ...}}``, except under
``OIP_PATH_PREFIX``: the Open Inference Protocol (KServe V2) routes answer its own shape, ``{"error": "<message>"}``,
with the status of ``OIP_STATUS`` where the protocol's clients expect another one. Messages never echo an upload
or a stack trace.
"""

from __future__ import annotations

import logging
import uuid
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

logger = logging.getLogger(__name__)


class ErrorCode(StrEnum):
    INVALID_IMAGE = "INVALID_IMAGE"
    FILE_TOO_LARGE = "FILE_TOO_LARGE"
    INVALID_REQUEST = "INVALID_REQUEST"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    VERSION_NOT_FOUND = "VERSION_NOT_FOUND"
    MODEL_NOT_READY = "MODEL_NOT_READY"
    INVALID_MODEL = "INVALID_MODEL"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    REGISTRY_UNAVAILABLE = "REGISTRY_UNAVAILABLE"
    INVALID_DATA_FOLDER = "INVALID_DATA_FOLDER"
    WEIGHTS_NOT_FOUND = "WEIGHTS_NOT_FOUND"
    TRAINING_BUSY = "TRAINING_BUSY"
    EXPLAINER_BUSY = "EXPLAINER_BUSY"
    RUN_NOT_FOUND = "RUN_NOT_FOUND"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    INTERNAL = "INTERNAL"
    # Added for the reliability, security and clinical-input work: one code per reason a client can act on.
    UNAUTHORIZED = "UNAUTHORIZED"
    AUTH_DISABLED = "AUTH_DISABLED"
    LENGTH_REQUIRED = "LENGTH_REQUIRED"
    SERVER_BUSY = "SERVER_BUSY"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    INVALID_HOST = "INVALID_HOST"
    NOT_A_BRAIN_MRI = "NOT_A_BRAIN_MRI"
    UNSUPPORTED_DICOM = "UNSUPPORTED_DICOM"
    AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"
    # DICOMweb (issue 27): no server configured; a study larger than the gateway takes in one request.
    DICOMWEB_NOT_CONFIGURED = "DICOMWEB_NOT_CONFIGURED"
    TOO_MANY_INSTANCES = "TOO_MANY_INSTANCES"
    # Answered by nginx at the edge (deploy/nginx.py), never by a service: in the table so the body is the same.
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    URI_TOO_LONG = "URI_TOO_LONG"
    TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_IMAGE: 415,
    ErrorCode.FILE_TOO_LARGE: 413,
    ErrorCode.INVALID_REQUEST: 422,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.VERSION_NOT_FOUND: 404,
    ErrorCode.MODEL_NOT_READY: 503,
    ErrorCode.INVALID_MODEL: 500,
    ErrorCode.UPSTREAM_UNAVAILABLE: 503,
    ErrorCode.UPSTREAM_ERROR: 502,
    ErrorCode.REGISTRY_UNAVAILABLE: 503,
    ErrorCode.INVALID_DATA_FOLDER: 422,
    ErrorCode.WEIGHTS_NOT_FOUND: 422,
    ErrorCode.TRAINING_BUSY: 409,
    ErrorCode.EXPLAINER_BUSY: 503,
    ErrorCode.RUN_NOT_FOUND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.AUTH_DISABLED: 403,
    ErrorCode.LENGTH_REQUIRED: 411,
    ErrorCode.SERVER_BUSY: 503,
    ErrorCode.UPSTREAM_TIMEOUT: 503,
    ErrorCode.INVALID_HOST: 400,
    ErrorCode.NOT_A_BRAIN_MRI: 422,
    ErrorCode.UNSUPPORTED_DICOM: 415,
    # The answer could not be recorded and the service is told to give no unrecorded answers (audit_required).
    ErrorCode.AUDIT_UNAVAILABLE: 503,
    ErrorCode.DICOMWEB_NOT_CONFIGURED: 503,
    ErrorCode.TOO_MANY_INSTANCES: 413,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.URI_TOO_LONG: 414,
    ErrorCode.TOO_MANY_REQUESTS: 429,
}

# Every 503 tells the client when to try again; an error may name its own delay (e.g. a circuit breaker's).
DEFAULT_RETRY_AFTER_S = 5


# The Open Inference Protocol's routes, and the statuses where it differs from HTTP_STATUS: a bad request is
# 400 there (the protocol's "typically 400"), whatever the reason.
OIP_PATH_PREFIX = "/v2"
OIP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_IMAGE: 400,
    ErrorCode.INVALID_REQUEST: 400,
}


class ServiceError(Exception):
    """An error a client can act on: a code, a message and optional structured details."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        retry_after_s: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.details = details or {}
        self.retry_after_s = retry_after_s
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]

    @property
    def oip_status(self) -> int:
        """The status on an Open Inference Protocol route."""
        return OIP_STATUS.get(self.code, self.status)

    def body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code.value, "message": self.message, "request_id": request_id}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def _request_id(request: Request) -> str:
    return request.headers.get("x-request-id") or uuid.uuid4().hex


def is_oip_path(path: str) -> bool:
    """Whether a request path belongs to the Open Inference Protocol's routes."""
    return path == OIP_PATH_PREFIX or path.startswith(OIP_PATH_PREFIX + "/")


def error_response(request: Request, error: ServiceError, status: int | None = None) -> JSONResponse:
    """The error's response, in the protocol's shape on its routes; ``status`` overrides the table's."""
    request_id = _request_id(request)
    oip = is_oip_path(request.url.path)
    status = status or (error.oip_status if oip else error.status)
    headers = {**error.headers, "x-request-id": request_id}
    if status == 503:
        headers["retry-after"] = str(error.retry_after_s or DEFAULT_RETRY_AFTER_S)
    if oip:
        # tritonclient and KServe's clients read "error" as a string.
        return JSONResponse({"error": error.message}, status_code=status, headers=headers)
    return JSONResponse(error.body(request_id), status_code=status, headers=headers)


_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """Every method the app's routes take on the request's path (for a 405's ``Allow`` header): each method is
    tried against the routes, as included routers do not list their routes' methods."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to the stable JSON body; unexpected ones become INTERNAL without details."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only locations and messages: pydantic's "input" field could echo the upload.
        problems = [
            {"field": ".".join(str(part) for part in err.get("loc", ())), "problem": err.get("msg", "")}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems) or "invalid request"
        error = ServiceError(ErrorCode.INVALID_REQUEST, f"Invalid request: {summary}", {"problems": problems})
        return error_response(request, error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(
            exc.status_code, ErrorCode.INVALID_REQUEST
        )
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; a path may have one route per method.
            headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
        return error_response(request, ServiceError(code, str(exc.detail), headers=headers), exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, ServiceError(ErrorCode.INTERNAL, "Internal error; see the service log."))
