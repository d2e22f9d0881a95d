"""Fixtures only the gateway's tests use: in-process gateway apps, the gateway as real processes started by
its own ``python -m services.gateway``, and a spare inference replica that tests may kill or stop."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.processes import ManagedProcess, free_port, loopback_url, start_service


@pytest.fixture
def gateway_app_client(tmp_path: Path, app_clients: Callable[..., Any]) -> Callable[..., Any]:
    """``make(**settings) -> TestClient`` for an in-process gateway app, lifespan running; its audit trail in the
    test's folder unless given."""
    from services.gateway.config import Settings
    from services.gateway.main import create_app

    def make(**settings: Any) -> Any:
        return app_clients(create_app, Settings(**{"audit_uri": f"sqlite:///{tmp_path / 'audit.sqlite'}", **settings}))

    return make


def wait_until_ready(url: str, timeout_s: float = 120.0) -> None:
    """Until ``url``'s /readyz answers 200 (inference: its default models are loaded)."""
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/readyz", timeout=5.0, trust_env=False).status_code != 200:
        assert time.monotonic() < deadline, f"{url} never became ready"
        time.sleep(0.2)


@pytest.fixture(scope="session")
def ready_inference(inference_server: ManagedProcess) -> ManagedProcess:
    """``inference_server`` once its default models are loaded: the gateway gives a model still loading only
    its prediction timeout (2 s), which a cold start on a busy machine can exceed."""
    wait_until_ready(inference_server.url)
    return inference_server


@pytest.fixture
def gateway_client(ready_inference: ManagedProcess, gateway_app_client: Callable[..., Any]) -> Any:
    """An in-process gateway (TestClient) in front of the real inference process serving the zoo."""
    return gateway_app_client(inference_url=ready_inference.url)


@pytest.fixture(scope="session")
def gateway_server(
    mlflow_server: ManagedProcess,
    inference_server: ManagedProcess,
    explainer_server: ManagedProcess,
    service_logs: Path,
    inference_audit_uri: str,
) -> Iterator[ManagedProcess]:
    """The gateway as a real process (``python -m services.gateway``) in front of ``inference_server``
    and ``explainer_server``, linking to ``mlflow_server`` as its MLflow UI."""
    env = {
        "BT_GATEWAY_INFERENCE_URL": inference_server.url,
        "BT_GATEWAY_EXPLAINER_URL": explainer_server.url,
        "BT_GATEWAY_MLFLOW_UI_URL": mlflow_server.url,
        "BT_GATEWAY_AUDIT_URI": inference_audit_uri,
    }
    server = start_service("gateway", free_port(), env, service_logs / "gateway.log", as_module=True)
    yield server
    server.stop()


@pytest.fixture
def start_gateway(service_logs: Path, tmp_path: Path) -> Iterator[Callable[..., ManagedProcess]]:
    """``start(**BT_GATEWAY_settings) -> ManagedProcess``: one more gateway process with its own
    settings (e.g. an inference URL where nothing listens); stopped at teardown. One worker process unless
    ``workers`` says otherwise: these tests watch one gateway's view of its replicas, which each worker keeps."""
    started: list[ManagedProcess] = []

    def start(**settings: str) -> ManagedProcess:
        port = free_port()
        defaults = {"workers": "1", "audit_uri": f"sqlite:///{tmp_path / f'audit-{port}.sqlite'}"}
        env = {f"BT_GATEWAY_{key.upper()}": value for key, value in {**defaults, **settings}.items()}
        server = start_service("gateway", port, env, service_logs / f"gateway-{port}.log", as_module=True)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class SpareReplica:
    """One more inference process serving the zoo, on a port of its own that stays the same across restarts,
    for the tests that kill (SIGKILL) or stop (SIGSTOP) a replica: those never touch ``inference_server``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = free_port()
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return loopback_url(self.port)

    def start(self) -> None:
        """Start it on its port and wait until its /readyz answers 200 (default models loaded)."""
        self.process = start_service("inference", self.port, self.env, self.log_path)
        wait_until_ready(self.url)

    def running(self) -> bool:
        return self.process is not None and self.process.process.poll() is None

    def signal(self, number: signal.Signals) -> None:
        assert self.process is not None
        os.killpg(self.process.process.pid, number)

    def kill(self) -> None:
        """SIGKILL: gone at once, its connections reset, nothing cleaned up."""
        self.signal(signal.SIGKILL)
        self.process.process.wait(timeout=10)  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.process.stop()


@pytest.fixture(scope="session")
def spare_inference(
    model_zoo: Any, tmp_path_factory: pytest.TempPathFactory, service_logs: Path
) -> Iterator[SpareReplica]:
    """The spare replica (SpareReplica) for the whole session, with the same settings as ``inference_server``."""
    env = {
        "MLFLOW_TRACKING_URI": model_zoo.tracking_uri,
        "BT_INFERENCE_TRACKING_URI": model_zoo.tracking_uri,
        "BT_INFERENCE_CACHE_DIR": str(tmp_path_factory.mktemp("spare-inference-cache")),
    }
    replica = SpareReplica(env, service_logs / "inference-spare.log")
    replica.start()
    yield replica
    replica.stop()


@pytest.fixture
def spare_replica(spare_inference: SpareReplica) -> Iterator[SpareReplica]:
    """The spare replica, running and not stopped, whatever the previous test left; resumed after the test."""
    if not spare_inference.running():
        spare_inference.start()
    yield spare_inference
    if spare_inference.running():
        spare_inference.signal(signal.SIGCONT)
