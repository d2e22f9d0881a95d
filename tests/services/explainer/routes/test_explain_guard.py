"""The explainer asks the inference service's guard before it explains: a non-MRI image is the guard's own 422
NOT_A_BRAIN_MRI (never explained), a slice's explanation carries the verdict. In front of the real inference
process in refuse mode on the guarded MLflow (tests/services/inference/test_ood_routes.py)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import SampleArrays
from tests.services.inference.test_ood_routes import guarded_services, photo_like
from tests.services.test_dicom_uploads import three_frames


@pytest.fixture(scope="module")
def refusing_inference(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sample_arrays: SampleArrays
) -> str:
    return guarded_services(request.config, tmp_path_factory, sample_arrays, "refuse")["refuse"]


@pytest.fixture
def guarded_explainer(refusing_inference: str, explainer_app_client: Callable[..., Any]) -> Any:
    return explainer_app_client(inference_url=refusing_inference)


def _explain(client: Any, data: bytes) -> httpx.Response:
    return client.post("/v1/explain", params={"model": "rf", "num_samples": "60"}, files={"file": ("a.png", data)})


def test_a_non_mri_image_is_refused_not_explained(guarded_explainer: Any, refusing_inference: str) -> None:
    response = _explain(guarded_explainer, photo_like())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "NOT_A_BRAIN_MRI"
    with httpx.Client(base_url=refusing_inference, timeout=30, trust_env=False) as inference:
        direct = inference.post("/v1/ood", files={"file": ("a.png", photo_like())})
    assert error["details"] == direct.json()["error"]["details"]  # the guard's own verdict, relayed


def test_a_slice_is_explained_with_its_verdict(guarded_explainer: Any, sample_images: dict[str, bytes]) -> None:
    response = _explain(guarded_explainer, sample_images["pituitary"])
    assert response.status_code == 200, response.text
    ood = response.json()["ood"]
    assert ood["flag"] is False and ood["score"] <= ood["threshold"] and ood["guard_version"] == "1"


def test_the_frame_of_a_dicom_file_is_judged(guarded_explainer: Any, sample_images: dict[str, bytes]) -> None:
    """A three-frame DICOM file: the guard judges the frame asked for (without it, a multi-frame file is refused)."""
    gray = np.asarray(Image.open(io.BytesIO(sample_images["glioma"])).convert("L"))
    data = three_frames(gray)
    response = guarded_explainer.post(
        "/v1/explain", params={"model": "rf", "num_samples": "60", "frame": "1"}, files={"file": ("a.dcm", data)}
    )
    assert response.status_code == 200, response.text
    assert response.json()["ood"]["flag"] is False


def test_openapi_declares_the_refusal(guarded_explainer: Any) -> None:
    responses = guarded_explainer.get("/openapi.json").json()["paths"]["/v1/explain"]["post"]["responses"]
    assert "NOT_A_BRAIN_MRI" in responses["422"]["description"]
