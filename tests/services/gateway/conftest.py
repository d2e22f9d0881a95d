"""Fixtures only the gateway's tests use: in-process gateway apps, and the gateway as real processes
started by its own ``python -m services.gateway``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.processes import ManagedProcess, free_port, start_service


@pytest.fixture
def gateway_app_client(app_clients: Callable[..., Any]) -> Callable[..., Any]:
    """``make(**settings) -> TestClient`` for an in-process gateway app, lifespan running."""
    from services.gateway.config import Settings
    from services.gateway.main import create_app

    def make(**settings: Any) -> Any:
        return app_clients(create_app, Settings(**settings))

    return make


@pytest.fixture
def gateway_client(inference_server: ManagedProcess, gateway_app_client: Callable[..., Any]) -> Any:
    """An in-process gateway (TestClient) in front of the real inference process serving the zoo."""
    return gateway_app_client(inference_url=inference_server.url)


@pytest.fixture(scope="session")
def gateway_server(
    mlflow_server: ManagedProcess,
    inference_server: ManagedProcess,
    explainer_server: ManagedProcess,
    service_logs: Path,
) -> Iterator[ManagedProcess]:
    """The gateway as a real process (``python -m services.gateway``) in front of ``inference_server``
    and ``explainer_server``, linking to ``mlflow_server`` as its MLflow UI."""
    env = {
        "BT_GATEWAY_INFERENCE_URL": inference_server.url,
        "BT_GATEWAY_EXPLAINER_URL": explainer_server.url,
        "BT_GATEWAY_MLFLOW_UI_URL": mlflow_server.url,
    }
    server = start_service("gateway", free_port(), env, service_logs / "gateway.log", as_module=True)
    yield server
    server.stop()


@pytest.fixture
def start_gateway(service_logs: Path) -> Iterator[Callable[..., ManagedProcess]]:
    """``start(**BT_GATEWAY_settings) -> ManagedProcess``: one more gateway process with its own
    settings (e.g. an inference URL where nothing listens); stopped at teardown."""
    started: list[ManagedProcess] = []

    def start(**settings: str) -> ManagedProcess:
        port = free_port()
        env = {f"BT_GATEWAY_{key.upper()}": value for key, value in settings.items()}
        server = start_service("gateway", port, env, service_logs / f"gateway-{port}.log", as_module=True)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
