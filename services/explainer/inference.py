"""The inference service seen from the explainer: a model's contract, the guard's verdict and masked predictions."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import numpy as np

from shared.core.masking import RegionMasks, keep_bytes, labels_png
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import ContractOut, MaskedPredictionOut, OodCheckOut, OodOut
from shared.kit.upstream import FORWARDED_FILENAME, ServiceClient


class InferenceBatchClient(ServiceClient):
    """Blocking calls (explanations run in a worker thread) over one ``httpx.Client``."""

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

    def predict_masked(
        self,
        model: str,
        version: str,
        data: bytes,
        frame: int | None,
        masks: RegionMasks,
        request_id: str | None = None,
    ) -> np.ndarray:
        """Probabilities (copies, classes) for copies of the upload with regions hidden, one row per keep row.

        The inference service decodes the upload and applies the label map at the model's own input size (each
        member's, for an ensemble), so the all-keep row is exactly its ``/v1/predict`` answer.
        """
        params: dict[str, str | int] = {"version": version, "fill": masks.fill}
        if frame is not None:
            params["frame"] = frame
        answer = self.call(
            MaskedPredictionOut,
            "POST",
            f"/v1/models/{quote(model, safe='')}/predict-masked",
            request_id,
            params=params,
            files={
                "file": (FORWARDED_FILENAME, data, "application/octet-stream"),
                "regions": ("regions.png", labels_png(masks.labels), "image/png"),
                "keep": ("keep.bin", keep_bytes(masks.keep), "application/octet-stream"),
            },
        )
        probabilities = np.asarray(answer.probabilities, dtype=np.float64)
        if probabilities.shape != (masks.copies, len(answer.class_names)):
            raise ServiceError(
                ErrorCode.UPSTREAM_ERROR,
                f"The inference service answered {probabilities.shape} probabilities for {masks.copies} copies.",
            )
        return probabilities
