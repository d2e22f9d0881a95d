"""The service kit (shared/kit/service.py): health route, settings dependency, error responses, internal
clients, and ``python -m services.<name>`` starting each server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from deploy.processes import free_port, start_service
from shared.kit.schemas import ErrorOut
from shared.kit.service import (
    ERROR_DESCRIPTIONS,
    error_responses,
    get_settings,
    health_router,
    internal_async_client,
    internal_client,
    service_main,
)


def test_healthz_answers_ok() -> None:
    app = FastAPI()
    app.include_router(health_router)
    with TestClient(app) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_is_documented_as_liveness() -> None:
    app = FastAPI()
    app.include_router(health_router)
    operation = app.openapi()["paths"]["/healthz"]["get"]
    assert operation["tags"] == ["health"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/HealthOut"
    }


def test_get_settings_returns_the_settings_the_app_was_built_with() -> None:
    settings = object()
    app = FastAPI()
    app.state.settings = settings
    seen: list[Any] = []

    @app.get("/probe")
    def probe(current: Annotated[Any, Depends(get_settings)]) -> dict[str, bool]:
        seen.append(current)
        return {"ok": True}

    with TestClient(app) as client:
        assert client.get("/probe").status_code == 200
    assert seen == [settings]


def test_error_responses_have_the_error_body_and_the_general_descriptions() -> None:
    responses = error_responses(404, 503)
    assert responses == {
        404: {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[404]},
        503: {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[503]},
    }


def test_error_responses_take_a_route_specific_description() -> None:
    responses = error_responses(404, 422, descriptions={404: "No such run."})
    assert responses[404]["description"] == "No such run."
    assert responses[422]["description"] == ERROR_DESCRIPTIONS[422]


def test_error_responses_refuse_a_status_without_a_description() -> None:
    with pytest.raises(KeyError):
        error_responses(418)


def test_error_responses_document_the_error_body_in_openapi() -> None:
    app = FastAPI()

    @app.get("/thing", responses=error_responses(404))
    def read_thing() -> dict[str, str]:
        return {}

    schema = app.openapi()
    documented = schema["paths"]["/thing"]["get"]["responses"]["404"]
    assert documented["description"] == ERROR_DESCRIPTIONS[404]
    assert documented["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
    assert "ErrorOut" in schema["components"]["schemas"]


def test_internal_client_ignores_the_environment_and_has_the_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy in the environment must not be used between our services.
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    with internal_client("http://127.0.0.1:9", timeout_s=7.5, connect_timeout_s=1.5, max_connections=3) as client:
        assert client.trust_env is False
        assert str(client.base_url) == "http://127.0.0.1:9"
        assert client.timeout == httpx.Timeout(7.5, connect=1.5)
        assert client._transport._pool._max_connections == 3  # type: ignore[attr-defined]
        # Idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them under a request.
        assert client._transport._pool._keepalive_expiry < 5.0  # type: ignore[attr-defined]
        assert client._mounts == {}


def test_internal_async_client_ignores_the_environment_and_has_the_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")

    async def inspect() -> None:
        async with internal_async_client("http://127.0.0.1:9", timeout_s=4.0, connect_timeout_s=0.5) as client:
            assert client.trust_env is False
            assert client.timeout == httpx.Timeout(4.0, connect=0.5)
            assert str(client.base_url) == "http://127.0.0.1:9"
            assert client._mounts == {}

    asyncio.run(inspect())


@pytest.mark.parametrize(
    ("service", "env"),
    [
        ("gateway", {}),
        # No MLflow is needed to be alive: preloading is off and the registry is only asked on demand.
        ("inference", {"BT_INFERENCE_PRELOAD": "false", "BT_INFERENCE_TRACKING_URI": "http://127.0.0.1:9"}),
    ],
)
def test_python_dash_m_starts_the_server_on_its_settings_port(
    service: str, env: dict[str, str], service_logs: Path, tmp_path: Path
) -> None:
    if service == "inference":
        env = {**env, "BT_INFERENCE_CACHE_DIR": str(tmp_path / "cache")}
    port = free_port()
    # start_service(as_module=True) runs `python -m services.<name>` with only BT_<NAME>_HOST/PORT set.
    server = start_service(service, port, env, service_logs / f"{service}-module-{port}.log", as_module=True)
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5, trust_env=False)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert server.process.poll() is None
    finally:
        server.stop()
    assert server.process.wait(timeout=10) is not None


def test_python_dash_m_refuses_arguments_instead_of_ignoring_them(capsys: pytest.CaptureFixture[str]) -> None:
    def never_built() -> Any:
        raise AssertionError("settings are not read when the command line is refused")

    with pytest.raises(SystemExit) as refused:
        service_main("training", never_built, argv=["--data", "x"])
    assert refused.value.code == 2
    assert "unrecognized arguments: --data x" in capsys.readouterr().err


def test_python_dash_m_help_names_the_settings_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as helped:
        service_main("gateway", lambda: None, note="A note.", argv=["--help"])  # type: ignore[arg-type,return-value]
    assert helped.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "BT_GATEWAY_HOST and BT_GATEWAY_PORT" in shown
    assert "uvicorn --factory services.gateway.main:create_app" in shown
    assert shown.endswith("A note.")
