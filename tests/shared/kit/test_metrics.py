"""Prometheus metrics of every service (shared/kit/metrics.py through build_app): ``GET /metrics`` and the
per-route request series, scraped from a real app and parsed with prometheus-client's own parser."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.metrics import UNMATCHED_ROUTE
from shared.kit.service import build_app
from tests.prometheus_samples import Samples, scrape, value

REQUESTS = "bt_http_requests_total"
SECONDS_COUNT = "bt_http_request_duration_seconds_count"


def routes_seen(samples: Samples) -> set[str]:
    return {dict(labels)["route"] for name, labels in samples if name == REQUESTS}


@pytest.fixture
def client() -> Any:
    app: FastAPI = build_app("probe", "A probe app.", object(), max_upload_bytes=1024)

    @app.get("/items/{item_id}")
    async def read_item(item_id: str) -> dict[str, str]:
        if item_id == "missing":
            raise ServiceError(ErrorCode.MODEL_NOT_FOUND, "No such item.")
        return {"item": item_id}

    @app.post("/upload")
    async def upload() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("unexpected")

    with TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1") as test_client:
        yield test_client


def test_requests_are_counted_and_timed_by_route_template_and_status(client: TestClient) -> None:
    before = scrape(client)
    assert client.get("/items/first-raw-value").status_code == 200
    assert client.get("/items/second-raw-value").status_code == 200
    assert client.get("/items/missing").status_code == 404
    after = scrape(client)

    ok = {"method": "GET", "route": "/items/{item_id}", "status": "200"}
    missing = {**ok, "status": "404"}
    assert value(after, REQUESTS, **ok) - value(before, REQUESTS, **ok) == 2
    assert value(after, SECONDS_COUNT, **ok) - value(before, SECONDS_COUNT, **ok) == 2
    assert value(after, REQUESTS, **missing) - value(before, REQUESTS, **missing) == 1
    assert not any("raw-value" in route for route in routes_seen(after))


def test_unknown_paths_share_one_label_and_odd_methods_are_other(client: TestClient) -> None:
    before = scrape(client)
    assert client.get("/no/such/path/12345").status_code == 404
    assert client.request("BREW", "/items/x").status_code == 405
    after = scrape(client)

    unmatched = {"method": "GET", "route": UNMATCHED_ROUTE, "status": "404"}
    brewed = {"method": "other", "route": "/items/{item_id}", "status": "405"}
    assert value(after, REQUESTS, **unmatched) - value(before, REQUESTS, **unmatched) == 1
    assert value(after, REQUESTS, **brewed) - value(before, REQUESTS, **brewed) == 1
    assert not any("12345" in route for route in routes_seen(after))


def test_an_unhandled_error_counts_as_the_500_the_client_gets(client: TestClient) -> None:
    before = scrape(client)
    assert client.get("/boom").status_code == 500
    after = scrape(client)
    labels = {"method": "GET", "route": "/boom", "status": "500"}
    assert value(after, REQUESTS, **labels) - value(before, REQUESTS, **labels) == 1


def test_the_upload_limits_413_is_counted(client: TestClient) -> None:
    before = scrape(client)
    assert client.post("/upload", content=b"x" * (200 * 1024)).status_code == 413
    after = scrape(client)
    # Refused by the middleware before any route took it.
    labels = {"method": "POST", "route": UNMATCHED_ROUTE, "status": "413"}
    assert value(after, REQUESTS, **labels) - value(before, REQUESTS, **labels) == 1


def test_scrapes_are_not_counted(client: TestClient) -> None:
    for _ in range(3):
        samples = scrape(client)
    assert "/metrics" not in routes_seen(samples)


def test_metrics_answer_the_prometheus_text_format_and_stay_out_of_the_api_schema(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE bt_http_requests_total counter" in response.text
    assert "/metrics" not in client.app.openapi()["paths"]


@pytest.mark.parametrize("service", ["gateway", "inference", "explainer", "training"])
def test_every_service_serves_its_request_series(service: str) -> None:
    create_app = importlib.import_module(f"services.{service}.main").create_app
    # No lifespan: /healthz and /metrics need none of the upstreams the services connect to at start.
    service_client = TestClient(create_app(), base_url="http://127.0.0.1")  # a Host the services trust
    before = scrape(service_client)
    assert service_client.get("/healthz").status_code == 200
    after = scrape(service_client)
    labels = {"method": "GET", "route": "/healthz", "status": "200"}
    assert value(after, REQUESTS, **labels) - value(before, REQUESTS, **labels) == 1
