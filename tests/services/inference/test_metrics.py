"""The inference service's ``/metrics``: per-route request series and model loads by model, version and
outcome, scraped from the running service (and from an in-process app for a load that fails)."""

from __future__ import annotations

from typing import Any

import httpx

from services.inference.mlflow_records import ONNX_SHA256_TAG
from tests.prometheus_samples import scrape, value

REQUESTS = "bt_http_requests_total"
SECONDS_COUNT = "bt_http_request_duration_seconds_count"
LOADS = "bt_inference_model_loads_total"
PREDICT_ROUTE = "/v1/models/{model}/predict"


def predict(client: Any, model: str, version: str, image: bytes) -> Any:
    return client.post(
        f"/v1/models/{model}/predict", params={"version": version}, files={"file": ("scan.jpg", image, "image/jpeg")}
    )


def test_a_predict_moves_its_route_series_and_the_version_is_loaded_once(
    inference_server: Any, sample_images: dict[str, bytes]
) -> None:
    with httpx.Client(base_url=inference_server.url, timeout=60, trust_env=False) as client:
        before = scrape(client)
        for _ in range(2):
            assert predict(client, "rf", "2", sample_images["glioma"]).status_code == 200
        after = scrape(client)

    ok = {"method": "POST", "route": PREDICT_ROUTE, "status": "200"}
    assert value(after, REQUESTS, **ok) - value(before, REQUESTS, **ok) == 2
    assert value(after, SECONDS_COUNT, **ok) - value(before, SECONDS_COUNT, **ok) == 2
    # Loaded by the first request (or earlier by another test), never again by the next ones.
    assert value(after, LOADS, model="rf", version="2", outcome="ok") == 1
    assert value(after, LOADS, model="rf", version="2", outcome="failed") == 0
    assert not any(name == REQUESTS and ("route", "/v1/models/rf/predict") in labels for name, labels in after)


def test_a_version_that_cannot_be_loaded_is_counted_as_a_failed_load(
    model_zoo: Any, inference_app_client: Any, sample_images: dict[str, bytes]
) -> None:
    from mlflow import MlflowClient

    # A damaged cache file is now replaced by the registered one (the verified store), so the load that fails is
    # a download whose file does not hash to the sha256 tagged at registration: what a changed artifact gives.
    mlflow = MlflowClient(tracking_uri=model_zoo.tracking_uri, registry_uri=model_zoo.tracking_uri)
    tagged = mlflow.get_model_version("brain-tumor-cnn", "1").tags[ONNX_SHA256_TAG]
    mlflow.set_model_version_tag("brain-tumor-cnn", "1", ONNX_SHA256_TAG, "0" * 64)
    try:
        client = inference_app_client(tracking_uri=model_zoo.tracking_uri)
        before = scrape(client)
        response = predict(client, "cnn", "1", sample_images["glioma"])
        after = scrape(client)
    finally:
        mlflow.set_model_version_tag("brain-tumor-cnn", "1", ONNX_SHA256_TAG, tagged)

    assert response.status_code == 500 and response.json()["error"]["code"] == "INVALID_MODEL"
    failed = {"model": "cnn", "version": "1", "outcome": "failed"}
    assert value(after, LOADS, **failed) - value(before, LOADS, **failed) == 1
    errors = {"method": "POST", "route": PREDICT_ROUTE, "status": "500"}
    assert value(after, REQUESTS, **errors) - value(before, REQUESTS, **errors) == 1
