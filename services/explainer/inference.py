"""The inference service seen from the explainer: a model's contract, the guard's verdict and batch predictions."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import numpy as np

from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import PIXELS_SHAPE_HEADER, ContractOut, OodCheckOut, OodOut, PixelsPredictionOut
from shared.kit.upstream import FORWARDED_FILENAME, ServiceClient


class InferenceBatchClient(ServiceClient):
    """Blocking calls (LIME's predict function runs in a worker thread) over one ``httpx.Client``."""

    def __init__(self, http: httpx.Client) -> None:
        super().__init__(http, "inference")

    def contract(self, model: str, version: str | None, request_id: str | None = None) -> ContractOut:
        """The version a spec resolves to and its preprocessing contract; 404s pass through."""
        return self.call(
            ContractOut,
            "GET",
            f"/v1/models/{quote(model, safe='')}/contract",
            request_id,
            params={"version": version} if version else None,
        )

    def judge(self, data: bytes, frame: int | None = None, request_id: str | None = None) -> OodOut | None:
        """The guard's verdict on the upload (None: no guard); its 422 NOT_A_BRAIN_MRI passes through."""
        answer = self.call(
            OodCheckOut,
            "POST",
            "/v1/ood",
            request_id,
            params={"frame": frame} if frame is not None else None,
            files={"file": (FORWARDED_FILENAME, data, "application/octet-stream")},
        )
        return answer.ood

    def predict_pixels(self, model: str, version: str, pixels: np.ndarray, request_id: str | None = None) -> np.ndarray:
        """uint8 images (N, S, S) to probabilities (N, classes) from the served ONNX session."""
        batch = np.ascontiguousarray(pixels, dtype=np.uint8)
        count, height, width = batch.shape
        answer = self.call(
            PixelsPredictionOut,
            "POST",
            f"/v1/models/{quote(model, safe='')}/predict-pixels",
            request_id,
            params={"version": version},
            content=batch.tobytes(),
            headers={"content-type": "application/octet-stream", PIXELS_SHAPE_HEADER: f"{count},{height},{width}"},
        )
        probabilities = np.asarray(answer.probabilities, dtype=np.float64)
        if probabilities.shape != (count, len(answer.class_names)):
            raise ServiceError(
                ErrorCode.UPSTREAM_ERROR,
                f"The inference service answered {probabilities.shape} probabilities for {count} images.",
            )
        return probabilities
