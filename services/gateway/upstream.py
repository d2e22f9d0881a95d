"""The services behind the gateway: typed calls to inference and to the explainer.

Errors they answer with keep their code and status; a service that cannot be reached becomes
UPSTREAM_UNAVAILABLE (503), an answer that makes no sense UPSTREAM_ERROR (502); readiness is
``AsyncServiceClient.readiness`` (see shared/upstream.py).
"""

from __future__ import annotations

from urllib.parse import quote

import httpx

from shared.errors import ServiceError
from shared.schemas import BatchPredictionOut, CompareOut, ExplanationOut, ModelsOut, PredictionOut
from shared.upstream import FORWARDED_FILENAME, AsyncServiceClient

# The explainer's client waits minutes for an explanation; a readiness probe must not.
EXPLAINER_STATUS_TIMEOUT_S = 2.0


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

    async def compare(self, models: list[str], image: bytes, request_id: str | None = None) -> CompareOut:
        """One image with several models' default versions, sent once; each model answers or has its error."""
        return await self.call(
            CompareOut,
            "POST",
            "/v1/compare",
            request_id,
            params=[("models", model) for model in models],
            files={"file": (FORWARDED_FILENAME, image, "application/octet-stream")},
        )

    async def predict_batch(
        self, model: str, version: str | None, images: list[bytes], request_id: str | None = None
    ) -> BatchPredictionOut:
        """Several images with one model in one call; each image answers or has its error, in order."""
        return await self.call(
            BatchPredictionOut,
            "POST",
            f"/v1/models/{quote(model, safe='')}/predict-batch",
            request_id,
            params={"version": version} if version else None,
            files=[("files", (FORWARDED_FILENAME, image, "application/octet-stream")) for image in images],
        )

    async def list_models(self, request_id: str | None = None) -> ModelsOut:
        return await self.call(ModelsOut, "GET", "/v1/models", request_id)


class ExplainerClient(AsyncServiceClient):
    """Calls to the explainer service (LIME), which in turn asks the inference service."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        super().__init__(http, "explainer")

    async def status(self, request_id: str | None = None) -> str:
        """'ready', or 'unavailable: <why>': explanations are optional, so this never raises."""
        try:
            await self.readiness(request_id, timeout_s=EXPLAINER_STATUS_TIMEOUT_S)
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
