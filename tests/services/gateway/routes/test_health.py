"""/healthz and /readyz of the gateway."""

from __future__ import annotations

import time
from typing import Any


def test_healthz_needs_nothing_upstream(gateway_app_client: Any, unused_url: str) -> None:
    response = gateway_app_client(inference_url=unused_url).get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_when_inference_is_ready(gateway_client: Any) -> None:
    deadline = time.monotonic() + 30
    response = gateway_client.get("/readyz")
    while response.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        response = gateway_client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["inference"]["status"] == "ready"


def test_readyz_says_whether_the_explainer_answers(
    ready_inference: Any, explainer_server: Any, gateway_app_client: Any, unused_url: str
) -> None:
    with_explainer = gateway_app_client(inference_url=ready_inference.url, explainer_url=explainer_server.url)
    assert with_explainer.get("/readyz").json()["explainer"] == "ready"
    # Explanations are optional: predictions still work, so the gateway stays ready and says why.
    without = gateway_app_client(inference_url=ready_inference.url, explainer_url=unused_url).get("/readyz")
    assert without.status_code == 200, without.text
    assert without.json()["explainer"].startswith("unavailable: ")


def test_readyz_inference_down_is_503(gateway_app_client: Any, unused_url: str) -> None:
    response = gateway_app_client(inference_url=unused_url).get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"


def test_readyz_inference_not_ready_is_503(gateway_app_client: Any, mlflow_server: Any) -> None:
    # Whatever answers at that address is not a ready inference service.
    response = gateway_app_client(inference_url=mlflow_server.url).get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"
