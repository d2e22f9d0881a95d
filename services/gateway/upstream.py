"""The services behind the gateway: typed calls to inference and to the explainer.

Errors they answer with keep their code and status; a service that cannot be reached becomes
UPSTREAM_UNAVAILABLE (503), an answer that makes no sense UPSTREAM_ERROR (502) (see shared/upstream.py).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from shared.errors import ErrorCode, ServiceError
from shared.schemas import ExplanationOut, ModelsOut, PredictionOut
from shared.upstream import (
    FORWARDED_FILENAME,
    REQUEST_ID_HEADER,
    AsyncServiceClient,
    UpstreamError,
    raise_for_error,
)

__all__ = ["REQUEST_ID_HEADER", "ExplainerClient", "InferenceClient", "UpstreamError"]


class InferenceClient(AsyncServiceClient):
    """Calls to the inference service over one shared ``httpx.AsyncClient``."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        super().__init__(http, "inference")

    async def predict(
        self, model: str, version: str | None, image: bytes, request_id: str | None = None
    ) -> PredictionOut:
        """Classify one image with one model (version number, alias, or the default)."""
        return await self.call(
            PredictionOut,
            "POST",
            f"/v1/models/{quote(model, safe='')}/predict",
            request_id,
            params={"version": version} if version else None,
            files={"file": (FORWARDED_FILENAME, image, "application/octet-stream")},
        )

    async def list_models(self, request_id: str | None = None) -> ModelsOut:
        return await self.call(ModelsOut, "GET", "/v1/models", request_id)

    async def readiness(self, request_id: str | None = None) -> dict[str, Any]:
        """The inference service's /readyz body, or UPSTREAM_UNAVAILABLE saying why it is not ready."""
        response = await self.send("GET", "/readyz", request_id)
        try:
            raise_for_error(response, self.service)
        except ServiceError as exc:
            raise ServiceError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                f"The inference service is not ready: {exc.message}",
                {"upstream_code": exc.code.value},
            ) from exc
        body = response.json()
        return body if isinstance(body, dict) else {}


class ExplainerClient(AsyncServiceClient):
    """Calls to the explainer service (LIME), which in turn asks the inference service."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        super().__init__(http, "explainer")

    async def status(self, request_id: str | None = None, timeout_s: float = 2.0) -> str:
        """'ready', or 'unavailable: <why>': explanations are optional, so this never raises, and it waits
        `timeout_s` at most (the client's own timeout is sized for long explanations)."""
        try:
            raise_for_error(await self.send("GET", "/readyz", request_id, timeout=timeout_s), self.service)
        except ServiceError as exc:
            return f"unavailable: {exc.message}"
        return "ready"

    async def explain(
        self, image: bytes, params: dict[str, str | int], request_id: str | None = None
    ) -> ExplanationOut:
        """Explain one image; ``params`` are the explainer's query parameters (model, version, label...)."""
        return await self.call(
            ExplanationOut,
            "POST",
            "/v1/explain",
            request_id,
            params=params,
            files={"file": (FORWARDED_FILENAME, image, "application/octet-stream")},
        )
