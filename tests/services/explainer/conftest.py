"""Fixtures only the explainer's tests use: in-process explainer apps in front of the real inference process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from deploy.processes import ManagedProcess


@pytest.fixture
def explainer_app_client(inference_server: ManagedProcess, app_clients: Callable[..., Any]) -> Callable[..., Any]:
    """``make(**settings) -> TestClient`` for an in-process explainer app, lifespan running; by default
    in front of the real inference process."""
    from services.explainer.config import Settings
    from services.explainer.main import create_app

    def make(**settings: Any) -> Any:
        return app_clients(create_app, Settings(**{"inference_url": inference_server.url, **settings}))

    return make


@pytest.fixture
def explainer_client(explainer_app_client: Callable[..., Any]) -> Any:
    """An in-process explainer (TestClient) in front of the real inference process serving the zoo."""
    return explainer_app_client()
