"""Trusted hosts and CORS (shared/kit/hosts.py) on every service: loopback by default, 400 INVALID_HOST in the
error body otherwise (declared in each schema), the allowed hosts and CORS origins from each service's settings."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from deploy.processes import free_port, start_service
from shared.kit.hosts import HostSettings

SERVICES = ["gateway", "inference", "explainer", "training"]
LOOPBACK_HOSTS = ["127.0.0.1", "127.0.0.1:8000", "localhost", "LOCALHOST:8001", "[::1]", "[::1]:8002"]
# DNS rebinding sends the attacker's name; the others are near misses of a loopback name.
FOREIGN_HOSTS = ["evil.example", "127.0.0.1.nip.io", "localhost.evil.example", "127.0.0.2", "[::2]", "", "a b"]


def service_client(service: str) -> TestClient:
    """The service's app built from the environment, without its lifespan (no upstream is needed for these)."""
    create_app = importlib.import_module(f"services.{service}.main").create_app
    return TestClient(create_app(), base_url="http://127.0.0.1")


def assert_invalid_host(response: httpx.Response, service: str) -> None:
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID_HOST"
    assert f"BT_{service.upper()}_ALLOWED_HOSTS" in error["message"]
    assert response.headers["x-request-id"] == error["request_id"]


@pytest.mark.parametrize("service", SERVICES)
def test_loopback_hosts_are_answered_and_others_refused_in_the_error_body(service: str) -> None:
    client = service_client(service)
    for host in LOOPBACK_HOSTS:
        assert client.get("/healthz", headers={"host": host}).status_code == 200, host
    for host in FOREIGN_HOSTS:
        assert_invalid_host(client.get("/healthz", headers={"host": host}), service)
        # Refused before routing: an unknown path or a POST gets the same 400, not a 404 or 405.
        assert_invalid_host(client.post("/no/such/route", headers={"host": host}), service)
    if service == "inference":  # the Open Inference Protocol's routes answer in its own body, {"error": "..."}
        response = client.get("/v2/health/ready", headers={"host": "evil.example"})
        assert response.status_code == 400
        assert "BT_INFERENCE_ALLOWED_HOSTS" in response.json()["error"]


@pytest.mark.parametrize("service", SERVICES)
def test_allowed_hosts_come_from_the_services_setting(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"BT_{service.upper()}_ALLOWED_HOSTS", "zoo.example.org, *.internal")
    client = service_client(service)
    for host in ("zoo.example.org", "zoo.example.org:443", "inference.internal", "a.b.internal:8001"):
        assert client.get("/healthz", headers={"host": host}).status_code == 200, host
    for host in ("127.0.0.1", "example.org", "internal"):
        assert_invalid_host(client.get("/healthz", headers={"host": host}), service)


@pytest.mark.parametrize("service", SERVICES)
def test_every_operation_declares_the_400(service: str) -> None:
    schema: dict[str, Any] = service_client(service).get("/openapi.json").json()
    assert schema["paths"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            declared = operation["responses"].get("400")
            assert declared is not None, f"{method} {path}"
            assert "INVALID_HOST" in declared["description"], f"{method} {path}"
            body = declared["content"]["application/json"]["schema"]
            if path.startswith("/v2"):  # the Open Inference Protocol's own error body
                assert body == {"$ref": "#/components/schemas/OipErrorOut"}, path
            else:
                assert body == {"$ref": "#/components/schemas/ErrorOut"}, f"{method} {path}"


@pytest.mark.parametrize("service", SERVICES)
def test_cors_is_closed_unless_configured(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    preflight = {
        "origin": "https://viewer.example.org",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization",
    }
    closed = service_client(service)
    assert "access-control-allow-origin" not in closed.options("/healthz", headers=preflight).headers
    assert "access-control-allow-origin" not in closed.get("/healthz", headers={"origin": preflight["origin"]}).headers

    monkeypatch.setenv(f"BT_{service.upper()}_CORS_ORIGINS", "https://viewer.example.org")
    opened = service_client(service)
    answer = opened.options("/healthz", headers=preflight)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "https://viewer.example.org"
    other = opened.options("/healthz", headers={**preflight, "origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_host_settings_parse_lists_and_refuse_patterns_starlette_would_not_take() -> None:
    settings = HostSettings(allowed_hosts="a.example, ::1 ,*.internal", cors_origins='["https://x.example"]')
    assert settings.allowed_hosts == ["a.example", "[::1]", "*.internal"]
    assert settings.cors_origins == ["https://x.example"]
    assert HostSettings().allowed_hosts == ["127.0.0.1", "localhost", "[::1]"]
    assert HostSettings().cors_origins == []
    for bad in ("a.*.example", "*example.org", ""):
        with pytest.raises(ValidationError):
            HostSettings(allowed_hosts=bad)


@pytest.fixture(scope="module")
def training_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    logs = tmp_path_factory.mktemp("hosts-logs")
    server = start_service("training", free_port(), {}, Path(logs) / "training.log")
    yield server
    server.stop()


def test_a_real_service_process_refuses_a_foreign_host(training_process: Any) -> None:
    """As uvicorn serves it: the Host header a browser sends after a DNS name was rebound to 127.0.0.1."""
    with httpx.Client(base_url=training_process.url, trust_env=False, timeout=10.0) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/healthz", headers={"host": "localhost"}).status_code == 200
        assert_invalid_host(http.get("/healthz", headers={"host": "rebound.evil.example:8002"}), "training")
        assert_invalid_host(http.get("/v1/training-runs", headers={"host": "rebound.evil.example"}), "training")
