"""POST /v1/compare: several models side by side, one failing model does not sink the rest; the image goes to
the inference service once."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.gateway.routes.compare import parse_models
from shared.kit.errors import ServiceError
from shared.kit.schemas import CompareOut, PredictionOut


def _compare(client: Any, data: bytes, **params: str) -> Any:
    return client.post("/v1/compare", params=params, files={"file": ("scan.jpg", data, "image/jpeg")})


def test_compare_defaults_to_all_four(gateway_client: Any, model_zoo: Any, sample_images) -> None:
    response = _compare(gateway_client, sample_images["pituitary"])
    assert response.status_code == 200, response.text
    out = CompareOut.model_validate(response.json())
    assert [item.model for item in out.results] == ["rf", "snn", "cnn", "mobilenetv2"]
    assert all(item.ok and item.result and item.error is None for item in out.results)
    for item in out.results:
        assert item.result is not None
        assert item.result.version == model_zoo.default_version(item.model)
    assert out.labels == {item.model: item.result.label for item in out.results if item.result}
    assert out.agree == (len(set(out.labels.values())) == 1)


def _inference_calls(inference_url: str) -> dict[str, float]:
    """Requests the inference process has answered so far, by route template (its Prometheus series)."""
    text = httpx.get(f"{inference_url}/metrics", timeout=10.0).text
    calls: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bt_http_requests_total":
                route = sample.labels["route"]
                calls[route] = calls.get(route, 0.0) + sample.value
    return calls


def test_compare_equals_one_predict_per_model(gateway_client: Any, sample_images: dict[str, bytes]) -> None:
    image = sample_images["meningioma"]
    out = CompareOut.model_validate(_compare(gateway_client, image).json())
    for item in out.results:
        assert item.result is not None
        single = gateway_client.post("/v1/predict", params={"model": item.model}, files={"file": ("a.jpg", image)})
        expected = PredictionOut.model_validate(single.json())
        assert (item.result.version, item.result.label) == (expected.version, expected.label)
        assert item.result.probabilities == pytest.approx(expected.probabilities, abs=1e-6)


def test_compare_sends_the_image_to_inference_once(
    gateway_client: Any, inference_server: Any, sample_images: dict[str, bytes]
) -> None:
    before = _inference_calls(inference_server.url)
    response = _compare(gateway_client, sample_images["notumor"])
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 4
    after = _inference_calls(inference_server.url)
    moved = {route: after[route] - before.get(route, 0.0) for route in after if after[route] != before.get(route)}
    assert moved == {"/v1/compare": 1.0}


def test_compare_with_one_model_missing(gateway_client: Any, sample_images: dict[str, bytes]) -> None:
    response = _compare(gateway_client, sample_images["glioma"], models="rf, resnet50,cnn,rf")
    assert response.status_code == 200, response.text
    out = CompareOut.model_validate(response.json())
    by_model = {item.model: item for item in out.results}
    assert list(by_model) == ["rf", "resnet50", "cnn"]  # order kept, duplicates dropped
    assert by_model["rf"].ok and by_model["cnn"].ok
    missing = by_model["resnet50"]
    assert not missing.ok and missing.result is None
    assert missing.error is not None
    assert missing.error["code"] == "MODEL_NOT_FOUND"
    assert missing.error["status"] == 404
    assert "rf, snn, cnn, mobilenetv2" in missing.error["message"]
    assert set(out.labels) == {"rf", "cnn"}


def test_agree_with_a_single_model(gateway_client: Any, sample_images: dict[str, bytes]) -> None:
    out = CompareOut.model_validate(_compare(gateway_client, sample_images["glioma"], models="snn").json())
    assert out.agree is True
    assert list(out.labels) == ["snn"]


def test_compare_non_image_is_415(gateway_client: Any) -> None:
    response = _compare(gateway_client, b"GIF89a but then nothing sensible")
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "INVALID_IMAGE"
    assert "sensible" not in response.text


def test_compare_non_image_is_415_even_beside_an_unknown_model(gateway_client: Any) -> None:
    # The image is decoded once for every model: a file that is not one fails the request, not each model.
    response = _compare(gateway_client, b"not an image", models="rf,resnet50")
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "INVALID_IMAGE"


def test_compare_only_unknown_models_is_404(gateway_client: Any, sample_images: dict[str, bytes]) -> None:
    response = _compare(gateway_client, sample_images["glioma"], models="resnet50")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "MODEL_NOT_FOUND"


def test_compare_inference_down_is_503(gateway_app_client: Any, unused_url: str, sample_images) -> None:
    client = gateway_app_client(inference_url=unused_url)
    response = _compare(client, sample_images["glioma"])
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"


def test_compare_malformed_models_is_422(gateway_client: Any, sample_images: dict[str, bytes]) -> None:
    response = _compare(gateway_client, sample_images["glioma"], models="rf,../../etc")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "INVALID_REQUEST"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ["rf", "snn", "cnn", "mobilenetv2"]),
        ("", ["rf", "snn", "cnn", "mobilenetv2"]),
        (" cnn ,rf,", ["cnn", "rf"]),
    ],
)
def test_parse_models(raw: str | None, expected: list[str]) -> None:
    assert parse_models(raw) == expected


def test_parse_models_limits_the_count() -> None:
    with pytest.raises(ServiceError):
        parse_models(",".join(f"m{i}" for i in range(17)))
