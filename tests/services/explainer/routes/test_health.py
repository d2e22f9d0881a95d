"""/healthz and /readyz of the explainer: ready means the inference service is reachable and ready."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.processes import ManagedProcess, free_port, start_service
from tests.error_body import error_body


def _ready(client: Any, within_s: float = 30.0) -> Any:
    """/readyz, asked again while the inference process may still be preloading its default models."""
    deadline = time.monotonic() + within_s
    response = client.get("/readyz")
    while response.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        response = client.get("/readyz")
    return response


def test_health_and_readiness(explainer_client: Any) -> None:
    assert explainer_client.get("/healthz").json() == {"status": "ok"}
    assert _ready(explainer_client).json() == {"status": "ready"}


def test_healthz_needs_nothing_upstream(explainer_app_client: Any, unused_url: str) -> None:
    response = explainer_app_client(inference_url=unused_url).get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.fixture
def alive_not_ready(unused_url: str, service_logs: Path) -> Iterator[ManagedProcess]:
    """An explainer process with no inference behind it: /healthz answers, /readyz is 503."""
    port = free_port()
    env = {"BT_EXPLAINER_INFERENCE_URL": unused_url}
    server = start_service("explainer", port, env, service_logs / f"explainer-{port}.log")
    yield server
    server.stop()


def test_readyz_asks_for_readiness_not_liveness(explainer_app_client: Any, alive_not_ready: ManagedProcess) -> None:
    # Upstream of this explainer is a service that is alive but cannot answer: so this one cannot either.
    client = explainer_app_client(inference_url=alive_not_ready.url)
    assert client.get("/healthz").status_code == 200
    error = error_body(client.get("/readyz"), 503, "UPSTREAM_UNAVAILABLE")
    assert "not ready" in error["message"]
