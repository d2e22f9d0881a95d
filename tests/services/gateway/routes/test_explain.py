"""POST /v1/explain through the gateway to the real explainer and inference processes."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from shared.kit.schemas import ExplanationOut
from tests.error_body import error_body


@pytest.fixture
def client(inference_server: Any, explainer_server: Any, gateway_app_client: Any) -> Any:
    return gateway_app_client(inference_url=inference_server.url, explainer_url=explainer_server.url)


def _explain(client: Any, data: bytes, headers: dict[str, str] | None = None, **params: str) -> Any:
    return client.post(
        "/v1/explain", params=params, files={"file": ("Jane_Doe.jpg", data, "image/jpeg")}, headers=headers
    )


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    return error_body(response, status, code, request_id=True)


@pytest.mark.parametrize("model", ["rf", "snn", "cnn", "mobilenetv2"])
def test_explain_every_model(client: Any, model_zoo: Any, sample_images: dict[str, bytes], model: str) -> None:
    response = _explain(client, sample_images["glioma"], model=model, num_samples="60")
    assert response.status_code == 200, response.text
    answer = ExplanationOut.model_validate(response.json())
    assert (answer.model, answer.version) == (model, model_zoo.default_version(model))
    assert answer.label == answer.predicted_label
    # Supporting regions strongest first, opposing apart; a small forest may notice no hidden cell at all.
    assert len(answer.regions) <= 5 and all(region.weight > 0 for region in answer.regions)
    assert len(answer.opposing_regions) <= 5 and all(region.weight < 0 for region in answer.opposing_regions)
    overlay = Image.open(io.BytesIO(base64.b64decode(answer.overlay_png)))
    assert overlay.format == "PNG" and overlay.size == (128, 128)


def test_parameters_reach_the_explainer(client: Any, sample_images: dict[str, bytes]) -> None:
    params = {
        "model": "snn",
        "version": "1",
        "method": "lime",
        "fill": "grey",
        "label": "notumor",
        "seed": "5",
        "num_samples": "70",
        "num_regions": "2",
    }
    answer = _explain(client, sample_images["pituitary"], **params).json()
    assert (answer["version"], answer["method"], answer["fill"]) == ("1", "lime", "grey")
    assert (answer["label"], answer["seed"], answer["num_samples"]) == ("notumor", 5, 70)
    assert 0 < len(answer["regions"]) + len(answer["opposing_regions"]) <= 4  # num_regions=2 of each kind at most
    again = _explain(client, sample_images["pituitary"], **params).json()
    assert again["regions"] == answer["regions"] and again["overlay_png"] == answer["overlay_png"]


def test_occlusion_is_the_default_method(client: Any, sample_images: dict[str, bytes]) -> None:
    answer = _explain(client, sample_images["glioma"], model="snn").json()
    assert (answer["method"], answer["fill"], answer["seed"]) == ("occlusion", "blur", None)
    black = _explain(client, sample_images["glioma"], model="snn", method="occlusion", fill="black").json()
    assert (black["method"], black["fill"]) == ("occlusion", "black")
    _error(_explain(client, sample_images["glioma"], model="snn", method="gradcam"), 422, "INVALID_REQUEST")
    _error(_explain(client, sample_images["glioma"], model="snn", fill="white"), 422, "INVALID_REQUEST")


def test_errors_pass_through_with_code_status_and_request_id(client: Any, sample_images: dict[str, bytes]) -> None:
    error = _error(_explain(client, sample_images["glioma"], model="vgg16"), 404, "MODEL_NOT_FOUND")
    assert "rf, snn, cnn, mobilenetv2" in error["message"]
    _error(_explain(client, sample_images["glioma"], model="cnn", version="7"), 404, "VERSION_NOT_FOUND")
    error = _error(_explain(client, sample_images["glioma"], model="cnn", num_samples="10"), 422, "INVALID_REQUEST")
    assert "between 50 and 3000" in error["message"]
    _error(_explain(client, sample_images["glioma"], model="cnn", label="tumour"), 422, "INVALID_REQUEST")
    response = _explain(client, b"Name: Jane Doe; MRN 0012345", model="cnn", headers={"x-request-id": "web-7"})
    error = _error(response, 415, "INVALID_IMAGE")
    assert error["request_id"] == "web-7"
    assert "Jane" not in response.text


def test_gateway_checks_its_own_parameters(client: Any, sample_images: dict[str, bytes]) -> None:
    _error(_explain(client, sample_images["glioma"]), 422, "INVALID_REQUEST")  # no model
    _error(_explain(client, sample_images["glioma"], model="../etc"), 422, "INVALID_REQUEST")
    _error(_explain(client, sample_images["glioma"], model="rf", seed="-1"), 422, "INVALID_REQUEST")
    _error(_explain(client, sample_images["glioma"], model="rf", num_regions="51"), 422, "INVALID_REQUEST")


def test_oversize_upload_is_413_at_the_gateway(
    inference_server: Any, explainer_server: Any, gateway_app_client: Any, sample_images: dict[str, bytes]
) -> None:
    client = gateway_app_client(
        inference_url=inference_server.url, explainer_url=explainer_server.url, max_upload_bytes=1500
    )
    error = _error(_explain(client, sample_images["glioma"], model="rf"), 413, "FILE_TOO_LARGE")
    assert error["details"] == {"max_bytes": 1500}


def test_explainer_down_is_503_naming_it(
    inference_server: Any, gateway_app_client: Any, unused_url: str, sample_images: dict[str, bytes]
) -> None:
    client = gateway_app_client(inference_url=inference_server.url, explainer_url=unused_url)
    error = _error(_explain(client, sample_images["glioma"], model="rf"), 503, "UPSTREAM_UNAVAILABLE")
    assert "explainer service is unavailable" in error["message"]
    # Predictions do not need the explainer.
    assert (
        client.post(
            "/v1/predict", params={"model": "rf"}, files={"file": ("a.jpg", sample_images["glioma"])}
        ).status_code
        == 200
    )
