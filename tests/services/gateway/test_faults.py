"""One inference replica that stops (SIGSTOP) or dies (SIGKILL) behind a running gateway process: a 503 with
Retry-After within the prediction timeout, the gateway's /readyz says so, and predictions come back once the
replica does, without restarting the gateway."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import pytest

from benchmarks.gateway_load import wait_for_replica

PREDICT_TIMEOUT_S = 1.0
# Far below the 30 s the gateway used to wait for a stopped inference service, far above the timeout.
CLIENT_TIMEOUT_S = PREDICT_TIMEOUT_S + 8.0


@pytest.fixture
def gateway(spare_replica: Any, start_gateway: Any) -> Any:
    """A gateway process in front of the spare replica alone, checking it every half second."""
    server = start_gateway(
        inference_url=spare_replica.url,
        predict_timeout_s=str(PREDICT_TIMEOUT_S),
        health_check_interval_s="0.5",
        health_check_timeout_s="0.5",
    )
    wait_for_replica(server.url, spare_replica.url, up=True, timeout_s=30)
    return server


def post(gateway: Any, path: str, image: bytes, **params: str) -> httpx.Response:
    files = {"file": ("scan.jpg", image, "image/jpeg")}
    return httpx.post(gateway.url + path, params=params, files=files, timeout=CLIENT_TIMEOUT_S)


def assert_503(response: httpx.Response, codes: set[str]) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] in codes
    assert int(response.headers["retry-after"]) >= 1


def until_answers(gateway: Any, image: bytes, timeout_s: float = 20.0) -> httpx.Response:
    """Predict until a 200 (the replica is back), at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    response = post(gateway, "/v1/predict", image, model="rf")
    while response.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        response = post(gateway, "/v1/predict", image, model="rf")
    return response


def test_stopped_replica_is_503_within_the_timeout_and_recovers_on_sigcont(
    gateway: Any, spare_replica: Any, sample_images: dict[str, bytes]
) -> None:
    image = sample_images["glioma"]
    assert post(gateway, "/v1/predict", image, model="rf").status_code == 200
    spare_replica.signal(signal.SIGSTOP)
    try:
        assert_503(post(gateway, "/v1/predict", image, model="rf"), {"UPSTREAM_TIMEOUT"})
        assert_503(post(gateway, "/v1/compare", image, models="rf,cnn"), {"UPSTREAM_TIMEOUT"})
        wait_for_replica(gateway.url, spare_replica.url, up=False, timeout_s=10)
        ready = httpx.get(gateway.url + "/readyz", timeout=CLIENT_TIMEOUT_S)
        assert_503(ready, {"UPSTREAM_UNAVAILABLE"})
        assert ready.json()["error"]["details"]["replicas"][0]["reason"] == "did not answer in time"
    finally:
        spare_replica.signal(signal.SIGCONT)
    assert until_answers(gateway, image).status_code == 200
    wait_for_replica(gateway.url, spare_replica.url, up=True, timeout_s=10)


def test_killed_replica_is_503_and_recovers_when_restarted(
    gateway: Any, spare_replica: Any, sample_images: dict[str, bytes]
) -> None:
    image = sample_images["pituitary"]
    spare_replica.kill()
    assert_503(post(gateway, "/v1/predict", image, model="rf"), {"UPSTREAM_UNAVAILABLE"})
    wait_for_replica(gateway.url, spare_replica.url, up=False, timeout_s=10)
    assert_503(httpx.get(gateway.url + "/readyz", timeout=CLIENT_TIMEOUT_S), {"UPSTREAM_UNAVAILABLE"})

    spare_replica.start()  # same port; the gateway keeps running
    assert until_answers(gateway, image).status_code == 200
    wait_for_replica(gateway.url, spare_replica.url, up=True, timeout_s=10)
    assert httpx.get(gateway.url + "/readyz", timeout=CLIENT_TIMEOUT_S).status_code == 200
