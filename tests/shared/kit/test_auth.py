"""The bearer-token guard (shared/kit/auth.py) on an app built by the service kit: the token matrix and the schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient
from pydantic import BaseModel, SecretStr

from shared.kit.auth import AUTH_RESPONSES, BearerToken
from shared.kit.service import build_app

TOKEN = "correct-horse-battery-staple"
SETTING = "BT_PROBE_API_TOKEN"


class ProbeSettings(BaseModel):
    api_token: SecretStr | None = None


def probe_client(token: str | None) -> Iterator[TestClient]:
    app = build_app("probe", "An app with one guarded route.", ProbeSettings(api_token=token))

    @app.post("/v1/change", dependencies=[Depends(BearerToken(SETTING))], responses={**AUTH_RESPONSES})
    def change_what_is_served() -> dict[str, bool]:
        return {"changed": True}

    @app.get("/v1/read")
    def read_something() -> dict[str, bool]:
        return {"read": True}

    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client


@pytest.fixture
def client() -> Iterator[TestClient]:
    yield from probe_client(TOKEN)


@pytest.mark.parametrize("configured", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_without_a_token_configured_the_route_is_disabled_and_names_the_setting(configured: str | None) -> None:
    for client in probe_client(configured):
        # Even a request that sends the blank token must not get through.
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": f"Bearer {TOKEN}"}):
            response = client.post("/v1/change", headers=headers)
            assert response.status_code == 403, headers
            error = response.json()["error"]
            assert error["code"] == "AUTH_DISABLED"
            assert SETTING in error["message"]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong-token",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer ünïcode",
    ],
    ids=["missing", "empty", "scheme-only", "scheme-space", "wrong", "longer", "shorter", "basic", "no-scheme", "utf8"],
)
def test_a_missing_or_wrong_token_is_401_with_a_bearer_challenge(client: TestClient, authorization: str | None) -> None:
    # Sent as bytes: a header may carry any byte, and non-ASCII ones must not break the comparison.
    headers = {} if authorization is None else {"Authorization": authorization.encode()}
    response = client.post("/v1/change", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["error"]["code"] == "UNAUTHORIZED"
    assert TOKEN not in response.text


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_right_token_gets_through(client: TestClient, scheme: str) -> None:
    response = client.post("/v1/change", headers={"Authorization": f"{scheme} {TOKEN}"})
    assert response.status_code == 200
    assert response.json() == {"changed": True}


def test_routes_without_the_guard_stay_open(client: TestClient) -> None:
    assert client.get("/v1/read").json() == {"read": True}


def test_the_schema_declares_401_403_and_the_bearer_scheme(client: TestClient) -> None:
    schema: dict[str, Any] = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/change"]["post"]
    assert {"401", "403"} <= set(operation["responses"])
    for status in ("401", "403"):
        content = operation["responses"][status]["content"]["application/json"]["schema"]
        assert content == {"$ref": "#/components/schemas/ErrorOut"}
    assert operation["security"] == [{"HTTPBearer": []}]
    assert schema["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["HTTPBearer"]["description"],
    }
    # The open route carries no lock.
    assert "security" not in schema["paths"]["/v1/read"]["get"]
