"""/healthz and /readyz of the inference service."""

from __future__ import annotations

import time
from typing import Any


def _wait_ready(client: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get("/readyz")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_healthz_answers_even_without_mlflow(inference_app_client: Any, unused_url: str) -> None:
    client = inference_app_client(tracking_uri=unused_url)
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_after_preload_lists_the_default_versions(inference_app_client: Any, model_zoo: Any) -> None:
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri, preload=True)
    response = _wait_ready(client)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    expected = {f"{name}/{model_zoo.default_version(name)}" for name in model_zoo.versions}
    assert set(body["models"]) == expected
    assert all(body["models"].values())


def test_readyz_is_503_while_mlflow_is_unreachable(inference_app_client: Any, unused_url: str) -> None:
    client = inference_app_client(tracking_uri=unused_url, preload=True)
    response = _wait_ready(client, timeout_s=2.0)
    assert response.status_code == 503
    assert response.json()["error"]["code"] in {"REGISTRY_UNAVAILABLE", "MODEL_NOT_READY"}
    # Once the (failed) preload is over, the reason is the registry.
    time.sleep(0.5)
    assert client.get("/readyz").json()["error"]["code"] == "REGISTRY_UNAVAILABLE"
