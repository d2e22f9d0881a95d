"""GET /v1/models and POST /v1/models/{model}/predict, in process, against the real MLflow zoo."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.core.contract import CLASS_NAMES
from shared.kit.schemas import ModelsOut, PredictionOut


def _predict(client: Any, model: str, data: bytes, **params: str) -> Any:
    return client.post(f"/v1/models/{model}/predict", params=params, files={"file": ("scan.jpg", data, "image/jpeg")})


def _assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"]
    return error


@pytest.mark.parametrize("model", ["rf", "snn", "cnn", "mobilenetv2"])
def test_predict_every_model_family(
    inference_client: Any, model_zoo: Any, sample_images: dict[str, bytes], model: str
) -> None:
    image = sample_images["meningioma"]
    started = time.perf_counter()
    response = _predict(inference_client, model, image)
    wall_ms = (time.perf_counter() - started) * 1000.0

    assert response.status_code == 200, response.text
    prediction = PredictionOut.model_validate(response.json())
    default = model_zoo.default_version(model)
    assert prediction.model == model
    assert prediction.version == default
    assert list(prediction.probabilities) == list(CLASS_NAMES)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    expected = model_zoo.version(model, default).expected_probabilities(image)
    got = np.array([prediction.probabilities[name] for name in CLASS_NAMES])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert prediction.label == CLASS_NAMES[int(np.argmax(expected))]
    assert 0 < prediction.latency_ms <= wall_ms  # the model's share of the round trip, in milliseconds


@pytest.mark.parametrize(
    ("model", "version", "expected"),
    [
        ("rf", "2", "2"),
        ("rf", "champion", "1"),
        ("rf", "latest", "2"),
        ("snn", "best", "1"),
        ("cnn", "1", "1"),
    ],
)
def test_predict_resolves_versions_and_aliases(
    inference_client: Any, sample_images: dict[str, bytes], model: str, version: str, expected: str
) -> None:
    response = _predict(inference_client, model, sample_images["glioma"], version=version)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == expected


def test_any_image_format_and_mode_is_accepted(inference_client: Any) -> None:
    for mode, fmt in (("RGB", "PNG"), ("RGBA", "PNG"), ("L", "BMP"), ("I;16", "TIFF")):
        buffer = io.BytesIO()
        Image.new(mode, (40, 30)).save(buffer, format=fmt)
        response = _predict(inference_client, "snn", buffer.getvalue())
        assert response.status_code == 200, (mode, fmt, response.text)


def test_unknown_model_is_404_naming_the_available_models(inference_client: Any, sample_images) -> None:
    error = _assert_error(_predict(inference_client, "vgg16", sample_images["glioma"]), 404, "MODEL_NOT_FOUND")
    assert "'vgg16'" in error["message"]
    assert "rf, snn, cnn, mobilenetv2" in error["message"]
    assert error["details"]["available_models"] == ["rf", "snn", "cnn", "mobilenetv2"]


@pytest.mark.parametrize("version", ["7", "production"])
def test_unknown_version_is_404_naming_the_available_versions(
    inference_client: Any, sample_images: dict[str, bytes], version: str
) -> None:
    response = _predict(inference_client, "rf", sample_images["glioma"], version=version)
    error = _assert_error(response, 404, "VERSION_NOT_FOUND")
    assert "Available versions: 2, 1; aliases: champion -> 1." in error["message"]


@pytest.mark.parametrize("model", ["..", "rf;drop", "x" * 80])
def test_malformed_model_name_is_a_validation_error(inference_client: Any, sample_images, model: str) -> None:
    response = _predict(inference_client, model, sample_images["glioma"])
    assert response.status_code in (404, 422)
    assert "error" in response.json()


def test_non_image_upload_is_415_without_echo(inference_client: Any) -> None:
    secret = b"PATIENT-NAME: Jane Doe, DOB 1970-01-01; this is not an image at all"
    response = _predict(inference_client, "rf", secret)
    error = _assert_error(response, 415, "INVALID_IMAGE")
    assert "Jane" not in response.text
    assert "PATIENT" not in response.text
    assert "details" not in error


def test_empty_file_is_415(inference_client: Any) -> None:
    error = _assert_error(_predict(inference_client, "rf", b""), 415, "INVALID_IMAGE")
    assert "empty" in error["message"]


def test_oversize_file_is_413(model_zoo: Any, inference_app_client: Any, sample_images) -> None:
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri, max_upload_bytes=2000)
    assert len(sample_images["glioma"]) > 2000
    error = _assert_error(_predict(client, "rf", sample_images["glioma"]), 413, "FILE_TOO_LARGE")
    assert error["details"] == {"max_bytes": 2000}


def test_body_far_over_the_limit_is_refused_before_parsing(model_zoo: Any, inference_app_client: Any) -> None:
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri, max_upload_bytes=1000)
    _assert_error(_predict(client, "rf", b"\xff" * 200_000), 413, "FILE_TOO_LARGE")


def test_missing_file_field_is_422_with_a_stable_body(inference_client: Any) -> None:
    response = inference_client.post("/v1/models/rf/predict", files={"image": ("a.jpg", b"xyz", "image/jpeg")})
    error = _assert_error(response, 422, "INVALID_REQUEST")
    assert error["details"]["problems"] == [{"field": "body.file", "problem": "Field required"}]
    assert "xyz" not in response.text


def test_list_models(inference_client: Any, model_zoo: Any) -> None:
    response = inference_client.get("/v1/models")
    assert response.status_code == 200, response.text
    listing = ModelsOut.model_validate(response.json())
    by_name = {info.model: info for info in listing.models}
    assert list(by_name) == ["rf", "snn", "cnn", "mobilenetv2"]
    for name, info in by_name.items():
        assert info.default_version == model_zoo.default_version(name)
        assert {v.version for v in info.versions} == {v.version for v in model_zoo.versions[name]}
        for version in info.versions:
            assert version.metrics == model_zoo.version(name, version.version).metrics
    assert by_name["rf"].versions[-1].aliases == ["champion"]


def test_mlflow_down_is_503(inference_app_client: Any, unused_url: str, sample_images) -> None:
    client = inference_app_client(tracking_uri=unused_url)
    _assert_error(client.get("/v1/models"), 503, "REGISTRY_UNAVAILABLE")
    _assert_error(_predict(client, "rf", sample_images["glioma"]), 503, "REGISTRY_UNAVAILABLE")


def test_openapi_documents_the_routes(inference_client: Any) -> None:
    schema = inference_client.get("/openapi.json").json()
    assert schema["info"]["title"].startswith("Brain tumour MRI")
    assert "/v1/models/{model}/predict" in schema["paths"]
    assert "/debug/modules" not in schema["paths"]
    assert inference_client.get("/debug/modules").status_code == 404  # off unless configured


def test_openapi_documents_every_error_with_the_one_error_body(inference_client: Any) -> None:
    paths = inference_client.get("/openapi.json").json()["paths"]
    # The Open Inference Protocol's /v2 routes answer the protocol's own error body (test_oip.py).
    declared = {
        (path, method): sorted(status for status in operation["responses"] if status[0] in "45")
        for path, operations in paths.items()
        for method, operation in operations.items()
        if not path.startswith("/v2")
    }
    assert declared == {
        # On every route: 400 INVALID_HOST (shared/kit/hosts.py), 408 REQUEST_TIMEOUT and 422 for unsafe URL text
        # (shared/kit/request_checks.py), besides a route's own reasons.
        ("/healthz", "get"): ["400", "408", "422"],
        ("/readyz", "get"): ["400", "408", "422", "503"],
        ("/v1/models", "get"): ["400", "408", "422", "503"],
        ("/v1/models/{model}/predict", "post"): ["400", "404", "408", "413", "415", "422", "500", "503"],
        ("/v1/models/{model}/contract", "get"): ["400", "404", "408", "422", "500", "503"],
        ("/v1/models/{model}/predict-pixels", "post"): ["400", "404", "408", "413", "422", "500", "503"],
        ("/v1/models/{model}/predict-masked", "post"): ["400", "404", "408", "413", "415", "422", "500", "503"],
        ("/v1/models/{model}/predict-batch", "post"): ["400", "404", "408", "413", "422", "500", "503"],
        ("/v1/compare", "post"): ["400", "408", "413", "415", "422", "503"],
        ("/v1/ood", "post"): ["400", "408", "413", "415", "422", "503"],
    }
    for (path, method), statuses in declared.items():
        for status in statuses:
            schema = paths[path][method]["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (path, method, status)


def test_loaded_model_keeps_predicting_while_mlflow_is_down(
    model_zoo: Any, inference_app_client: Any, tcp_proxy: Any, sample_images: dict[str, bytes]
) -> None:
    proxy = tcp_proxy(model_zoo.tracking_uri)
    client = inference_app_client(tracking_uri=proxy.url, catalog_ttl_s=0)
    assert _predict(client, "cnn", sample_images["glioma"]).status_code == 200
    assert client.get("/readyz").status_code == 200

    proxy.close()

    response = _predict(client, "cnn", sample_images["glioma"])
    assert response.status_code == 200, response.text
    assert response.json()["version"] == model_zoo.default_version("cnn")
    # Ready from the last catalogue and the loaded versions; it says MLflow is unreachable once the
    # background refresh has failed.
    deadline = time.monotonic() + 10
    while True:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        if ready.json()["registry"].startswith("unreachable since ") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert ready.json()["registry"].startswith("unreachable since ")
    assert client.get("/v1/models").status_code == 200
    # A version never loaded needs MLflow: a clear 503.
    _assert_error(_predict(client, "rf", sample_images["glioma"], version="2"), 503, "REGISTRY_UNAVAILABLE")
