"""GET /v1/models through the gateway."""

from __future__ import annotations

from typing import Any

import httpx

from shared.kit.schemas import ModelsOut


def test_list_models_matches_the_inference_service(gateway_client: Any, inference_server: Any) -> None:
    response = gateway_client.get("/v1/models")
    assert response.status_code == 200, response.text
    listing = ModelsOut.model_validate(response.json())
    direct = ModelsOut.model_validate(httpx.get(inference_server.url + "/v1/models", timeout=30).json())
    assert listing == direct
    assert [info.model for info in listing.models] == ["rf", "snn", "cnn", "mobilenetv2"]
    rf = listing.models[0]
    assert rf.default_version == "1"
    assert rf.versions[-1].aliases == ["champion"]
    assert set(rf.versions[-1].metrics) == {"test_accuracy", "test_f1_macro"}


def test_list_models_inference_down_is_503(gateway_app_client: Any, unused_url: str) -> None:
    response = gateway_app_client(inference_url=unused_url).get("/v1/models")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"
