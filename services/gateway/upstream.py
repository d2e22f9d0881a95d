"""The inference service seen from the gateway: typed calls, and every failure as a ServiceError.

Errors the inference service answers with keep their code and status; a service that cannot be
reached becomes UPSTREAM_UNAVAILABLE (503), an answer that makes no sense UPSTREAM_ERROR (502).
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from shared.errors import ErrorCode, ServiceError
from shared.schemas import ModelsOut, PredictionOut

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

REQUEST_ID_HEADER = "x-request-id"
# The upstream sees a neutral file name: the client's could carry a patient's name.
FORWARDED_FILENAME = "upload"


class UpstreamError(ServiceError):
    """An error answered by an upstream service, passed on with that service's status."""

    def __init__(self, code: ErrorCode, message: str, details: dict[str, Any] | None, status: int) -> None:
        super().__init__(code, message, details)
        self._status = status

    @property
    def status(self) -> int:
        return self._status


def _unavailable(message: str) -> ServiceError:
    return ServiceError(ErrorCode.UPSTREAM_UNAVAILABLE, message)


class InferenceClient:
    """Calls to the inference service over one shared ``httpx.AsyncClient``."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def _send(self, method: str, path: str, request_id: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {REQUEST_ID_HEADER: request_id} if request_id else None
        try:
            return await self.http.request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            logger.warning("inference %s %s timed out: %r", method, path, exc)
            raise _unavailable("The inference service did not answer in time; try again shortly.") from exc
        except httpx.TransportError as exc:
            logger.warning("inference at %s unreachable: %r", self.http.base_url, exc)
            raise _unavailable("The inference service is unavailable; try again shortly.") from exc

    @staticmethod
    def _raise_for_error(response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            error = response.json()["error"]
            code = ErrorCode(error["code"])
            message = str(error["message"])
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("inference answered %s without an error body", response.status_code)
            raise ServiceError(
                ErrorCode.UPSTREAM_ERROR,
                f"The inference service failed with HTTP {response.status_code} and no usable error body.",
            ) from exc
        details = error.get("details") if isinstance(error.get("details"), dict) else None
        raise UpstreamError(code, message, details, response.status_code)

    @staticmethod
    def _parse(response: httpx.Response, schema: type[T]) -> T:
        try:
            return schema.model_validate_json(response.content)
        except ValidationError as exc:
            logger.warning("inference answered a body that is not a %s: %s", schema.__name__, exc)
            raise ServiceError(
                ErrorCode.UPSTREAM_ERROR, "The inference service answered with an unexpected body."
            ) from exc

    async def predict(
        self, model: str, version: str | None, image: bytes, request_id: str | None = None
    ) -> PredictionOut:
        """Classify one image with one model (version number, alias, or the default)."""
        response = await self._send(
            "POST",
            f"/v1/models/{quote(model, safe='')}/predict",
            request_id,
            params={"version": version} if version else None,
            files={"file": (FORWARDED_FILENAME, image, "application/octet-stream")},
        )
        self._raise_for_error(response)
        return self._parse(response, PredictionOut)

    async def list_models(self, request_id: str | None = None) -> ModelsOut:
        response = await self._send("GET", "/v1/models", request_id)
        self._raise_for_error(response)
        return self._parse(response, ModelsOut)

    async def readiness(self, request_id: str | None = None) -> dict[str, Any]:
        """The inference service's /readyz body, or UPSTREAM_UNAVAILABLE saying why it is not ready."""
        response = await self._send("GET", "/readyz", request_id)
        try:
            self._raise_for_error(response)
        except ServiceError as exc:
            raise ServiceError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                f"The inference service is not ready: {exc.message}",
                {"upstream_code": exc.code.value},
            ) from exc
        body = response.json()
        return body if isinstance(body, dict) else {}
