"""Several inference replicas behind one gateway (real processes): a replica SIGKILLed in the middle of a stream
of predictions costs no request, and traffic goes back to it once it is restarted on its port."""

from __future__ import annotations

from typing import Any

import httpx

from benchmarks.gateway_load import run_stream, sample_images, wait_for_replica
from tests.prometheus_samples import parse, value

PREDICT_ROUTE = "/v1/models/{model}/predict"


def replica_up_gauge(gateway_url: str, replica_url: str) -> float:
    samples = parse(httpx.get(f"{gateway_url}/metrics", timeout=10.0, trust_env=False).text)
    return value(samples, "bt_gateway_inference_replica_up", replica=replica_url)


def predictions_served(inference_url: str) -> float:
    """The replica's own count of predictions answered 200."""
    samples = parse(httpx.get(f"{inference_url}/metrics", timeout=10.0, trust_env=False).text)
    return value(samples, "bt_http_requests_total", method="POST", route=PREDICT_ROUTE, status="200")


def test_killed_replica_costs_no_request_and_gets_traffic_back_after_restart(
    spare_replica: Any, ready_inference: Any, start_gateway: Any
) -> None:
    victim, survivor = spare_replica, ready_inference
    gateway = start_gateway(inference_urls=f"{victim.url},{survivor.url}", health_check_interval_s="0.5")
    wait_for_replica(gateway.url, victim.url, up=True, timeout_s=30)
    images = sample_images()
    survivor_before = predictions_served(survivor.url)

    stream = run_stream(gateway.url, images, 200, 4, at_request={60: victim.kill})

    assert (stream.sent, stream.errors) == (200, 0), (stream.answers, stream.failures)
    by_survivor = predictions_served(survivor.url) - survivor_before
    # Both served before the kill (the victim's share died with it); the survivor took everything after.
    assert 140 <= by_survivor < 200, by_survivor
    wait_for_replica(gateway.url, victim.url, up=False, timeout_s=10)
    models = httpx.get(f"{gateway.url}/v1/models", timeout=10.0).json()
    assert {entry["url"]: entry["up"] for entry in models["replicas"]} == {victim.url: False, survivor.url: True}
    assert (replica_up_gauge(gateway.url, victim.url), replica_up_gauge(gateway.url, survivor.url)) == (0, 1)

    victim.start()  # the same port, a new process: its counters start at zero
    wait_for_replica(gateway.url, victim.url, up=True, timeout_s=30)
    assert replica_up_gauge(gateway.url, victim.url) == 1
    again = run_stream(gateway.url, images, 40, 4)
    assert again.errors == 0, (again.answers, again.failures)
    assert predictions_served(victim.url) > 0
