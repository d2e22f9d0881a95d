"""The services behind the gateway: typed calls to inference (one or several replicas) and to the explainer.

A prediction or a comparison forwards the client's multipart body as it came (its file name included: inference
never reads it) and passes inference's 2xx answer back unparsed: the gateway decodes nothing and validates nothing
twice. Errors they answer with keep their code and status; a service that cannot be reached becomes
UPSTREAM_UNAVAILABLE (503), one too slow UPSTREAM_TIMEOUT (503), an answer that makes no sense UPSTREAM_ERROR
(502). Inference calls go through a ``ReplicaPool`` (replicas.py); the explainer is one service with one URL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from services.gateway.forwarding import ForwardedBody
from services.gateway.replicas import ReplicaPool
from shared.kit.errors import ServiceError
from shared.kit.schemas import BatchPredictionOut, ExplanationOut, ModelsOut
from shared.kit.upstream import FORWARDED_FILENAME, AsyncServiceClient, raise_for_error

# The explainer's client waits minutes for an explanation; a readiness probe must not.
EXPLAINER_STATUS_TIMEOUT_S = 2.0


def _query(version: str | None, frame: int | None) -> dict[str, str | int] | None:
    """The optional query parameters that were given: a version (number or alias), a DICOM frame."""
    given = {"version": version, "frame": frame}
    return {key: value for key, value in given.items() if value is not None} or None


def multipart_files(field: str, files: list[bytes]) -> tuple[bytes, str]:
    """Files as one multipart body (each under the neutral name) and its content type, encoded once: a call that
    is sent again to another replica sends the same bytes."""
    request = httpx.Request("POST", "http://inference", files=[
        (field, (FORWARDED_FILENAME, data, "application/octet-stream")) for data in files
    ])  # fmt: skip
    return request.read(), request.headers["content-type"]


class InferenceClient:
    """Calls to the inference replicas: a prediction and the model list wait at most ``predict_timeout_s``; a
    comparison or a batch that long per model or file, up to ``batch_timeout_s``."""

    def __init__(self, pool: ReplicaPool, predict_timeout_s: float, batch_timeout_s: float) -> None:
        self.pool = pool
        self.predict_timeout_s = predict_timeout_s
        self.batch_timeout_s = batch_timeout_s

    def timeout_for(self, runs: int) -> float:
        """The wait for a call that runs ``runs`` predictions (models of a comparison, files of a batch)."""
        return min(self.batch_timeout_s, self.predict_timeout_s * max(1, runs))

    async def predict(
        self, model: str, version: str | None, upload: ForwardedBody, request_id: str | None = None,
        frame: int | None = None,
    ) -> bytes:  # fmt: skip
        """Classify one image with one model (version number, alias, or the default; ``frame`` of a DICOM file):
        the client's multipart body forwarded as it came, and inference's JSON answer (a ``PredictionOut``)."""
        return await self._forward(
            f"/v1/models/{quote(model, safe='')}/predict", upload, request_id, self.predict_timeout_s,
            _query(version, frame),
        )  # fmt: skip

    async def compare(
        self, models: list[str], upload: ForwardedBody, request_id: str | None = None, frame: int | None = None
    ) -> bytes:
        """One image with several models' default versions, sent once; each model answers or has its error:
        inference's JSON answer (a ``CompareOut``)."""
        params = [("models", model) for model in models] + list((_query(None, frame) or {}).items())
        return await self._forward("/v1/compare", upload, request_id, self.timeout_for(len(models)), params)

    async def _forward(
        self, path: str, upload: ForwardedBody, request_id: str | None, timeout_s: float, params: Any
    ) -> bytes:
        """The body sent on unchanged, the 2xx answer's bytes passed back unparsed; an error is inference's own."""
        response = await self.pool.send(
            "POST", path, request_id, timeout_s=timeout_s, params=params, content=upload.content,
            headers={"content-type": upload.content_type},
        )  # fmt: skip
        raise_for_error(response, self.pool.service)
        return response.content

    async def predict_batch(
        self,
        model: str,
        version: str | None,
        images: list[bytes],
        request_id: str | None = None,
        frame: int | None = None,
    ) -> BatchPredictionOut:
        """Several images with one model in one call; each image answers or has its error, in order."""
        body, content_type = multipart_files("files", images)
        return await self.pool.call(
            BatchPredictionOut,
            "POST",
            f"/v1/models/{quote(model, safe='')}/predict-batch",
            request_id,
            timeout_s=self.timeout_for(len(images)),
            params=_query(version, frame),
            content=body,
            headers={"content-type": content_type},
        )

    async def list_models(self, request_id: str | None = None) -> ModelsOut:
        return await self.pool.call(ModelsOut, "GET", "/v1/models", request_id, timeout_s=self.predict_timeout_s)

    def readiness(self) -> dict[str, Any]:
        """The ``/readyz`` body of a replica that is up (from the background checks), or UPSTREAM_UNAVAILABLE."""
        return self.pool.readiness()


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
