"""POST /v1/predict through the gateway to the real inference process."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shared.core.contract import CLASS_NAMES
from shared.kit.schemas import PredictionOut
from tests.error_body import error_body


def _predict(client: Any, data: bytes, headers: dict[str, str] | None = None, **params: str) -> Any:
    return client.post(
        "/v1/predict", params=params, files={"file": ("Jane_Doe.jpg", data, "image/jpeg")}, headers=headers
    )


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    return error_body(response, status, code, request_id=True)


@pytest.mark.parametrize("model", ["rf", "snn", "cnn", "mobilenetv2"])
def test_predict_every_model(gateway_client: Any, model_zoo: Any, sample_images: dict[str, bytes], model: str) -> None:
    image = sample_images["notumor"]
    response = _predict(gateway_client, image, model=model)
    assert response.status_code == 200, response.text
    body = response.json()
    answer_fields = {"model", "version", "label", "probabilities", "latency_ms", "ood"}
    assert set(body) == answer_fields | {"prediction_set", "referral", "referral_reason"}
    prediction = PredictionOut.model_validate(body)
    assert prediction.model == model
    assert prediction.version == model_zoo.default_version(model)
    expected = model_zoo.version(model, prediction.version).expected_probabilities(image)
    got = np.array([prediction.probabilities[name] for name in CLASS_NAMES])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert prediction.label == CLASS_NAMES[int(np.argmax(expected))]


@pytest.mark.parametrize(("version", "expected"), [("2", "2"), ("champion", "1"), ("latest", "2")])
def test_predict_version_and_alias(
    gateway_client: Any, sample_images: dict[str, bytes], version: str, expected: str
) -> None:
    response = _predict(gateway_client, sample_images["glioma"], model="rf", version=version)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == expected


def test_upstream_404_passes_through_with_code_and_message(gateway_client: Any, sample_images) -> None:
    error = _error(_predict(gateway_client, sample_images["glioma"], model="vgg16"), 404, "MODEL_NOT_FOUND")
    assert "rf, snn, cnn, mobilenetv2" in error["message"]
    error = _error(
        _predict(gateway_client, sample_images["glioma"], model="cnn", version="99"), 404, "VERSION_NOT_FOUND"
    )
    assert "Available versions: 2, 1." in error["message"]
    assert error["details"]["available_versions"] == ["2", "1"]


def test_non_image_is_415_without_echo(gateway_client: Any) -> None:
    response = _predict(gateway_client, b"Name: Jane Doe; MRN 0012345; not a picture", model="cnn")
    _error(response, 415, "INVALID_IMAGE")
    assert "Jane" not in response.text
    assert "0012345" not in response.text


def test_empty_file_is_415(gateway_client: Any) -> None:
    _error(_predict(gateway_client, b"", model="rf"), 415, "INVALID_IMAGE")


def test_oversize_file_is_413_at_the_gateway(inference_server: Any, gateway_app_client: Any, sample_images) -> None:
    client = gateway_app_client(inference_url=inference_server.url, max_upload_bytes=1500)
    error = _error(_predict(client, sample_images["glioma"], model="rf"), 413, "FILE_TOO_LARGE")
    assert error["details"] == {"max_bytes": 1500}
    _error(_predict(client, b"\0" * 300_000, model="rf"), 413, "FILE_TOO_LARGE")


def test_missing_file_field_is_422(gateway_client: Any) -> None:
    response = gateway_client.post("/v1/predict", params={"model": "rf"}, files={"upload": ("a", b"abc")})
    error = _error(response, 422, "INVALID_REQUEST")
    assert error["details"]["problems"] == [{"field": "body.file", "problem": "Field required"}]


def test_missing_or_malformed_model_is_422(gateway_client: Any, sample_images: dict[str, bytes]) -> None:
    _error(_predict(gateway_client, sample_images["glioma"]), 422, "INVALID_REQUEST")
    _error(_predict(gateway_client, sample_images["glioma"], model="../readyz"), 422, "INVALID_REQUEST")


def test_inference_down_is_503(gateway_app_client: Any, unused_url: str, sample_images) -> None:
    client = gateway_app_client(inference_url=unused_url)
    error = _error(_predict(client, sample_images["glioma"], model="rf"), 503, "UPSTREAM_UNAVAILABLE")
    assert unused_url not in error["message"]


def test_upstream_answering_nonsense_is_502(gateway_app_client: Any, mlflow_server: Any, sample_images) -> None:
    # A gateway pointed at the wrong service (here MLflow) gets answers that are not ours.
    client = gateway_app_client(inference_url=mlflow_server.url)
    _error(_predict(client, sample_images["glioma"], model="rf"), 502, "UPSTREAM_ERROR")


def test_request_id_is_kept_from_the_client(gateway_client: Any, sample_images: dict[str, bytes]) -> None:
    response = _predict(gateway_client, b"nope", headers={"x-request-id": "trace-42"}, model="rf")
    assert response.headers["x-request-id"] == "trace-42"
    assert response.json()["error"]["request_id"] == "trace-42"
    ok = _predict(gateway_client, sample_images["glioma"], headers={"x-request-id": "trace-43"}, model="rf")
    assert ok.headers["x-request-id"] == "trace-43"
    odd = _predict(gateway_client, b"nope", headers={"x-request-id": "bad id\twith tabs"}, model="rf")
    assert odd.headers["x-request-id"] != "bad id\twith tabs"
