"""Which Host headers and browser origins a service answers: trusted hosts and CORS, the same for every service.

- ``HostSettings``: the fields every service's settings inherit, ``allowed_hosts`` (loopback by default) and
  ``cors_origins`` (none by default: CORS stays closed), read as ``BT_<SERVICE>_ALLOWED_HOSTS`` and
  ``BT_<SERVICE>_CORS_ORIGINS``, comma-separated.
- ``install_host_checks``: called by ``shared.kit.service.build_app``. A request whose ``Host`` is not allowed gets
  400 INVALID_HOST in the one error body, before any route of the service runs: a page on another
  site cannot reach a service through a DNS name rebound to 127.0.0.1 (DNS rebinding).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import FastAPI, Request
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.kit.errors import ErrorCode, ServiceError, error_response, is_oip_path

# An IPv6 address is matched as it appears in a Host header: in brackets.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
INVALID_HOST_DESCRIPTION = "INVALID_HOST: the request's Host header is not one this service answers to."
# The Open Inference Protocol's routes answer their own error shape (shared.kit.errors), this one too.
_OIP_ERROR_MODEL = "OipErrorOut"
_OIP_ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
# Set in the ASGI scope by Starlette's check when the host passed it.
_TRUSTED_SCOPE_KEY = "bt.trusted_host"


def _comma_separated(value: object) -> object:
    """``"a, b"`` -> ``["a", "b"]``; a JSON list is accepted too; blanks are dropped."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class HostSettings(BaseSettings):
    """Settings fields every service shares; each service's settings class inherits them under its prefix."""

    # NoDecode: the variables are plain comma-separated lists, not the JSON pydantic-settings expects.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(LOOPBACK_HOSTS),
        min_length=1,
        description="Host header values answered, comma-separated (e.g. 'gateway.example.org,*.internal'; '*' for "
        "any); others get 400 INVALID_HOST. Default: loopback only.",
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Longest time a request's whole body may take to arrive (uvicorn has no read timeout); then 408 "
        "REQUEST_TIMEOUT. Half-sent headers are cut by nginx at the edge (shared/kit/request_checks.py).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call this service from another site (CORS), comma-separated, e.g. "
        "'https://viewer.example.org'. Default: none (CORS closed).",
    )

    @field_validator("allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _comma_separated(value)

    @field_validator("allowed_hosts")
    @classmethod
    def _patterns_starlette_accepts(cls, hosts: list[str]) -> list[str]:
        # A bare IPv6 address ("::1") is put in brackets, as a Host header carries it.
        hosts = [f"[{host}]" if ":" in host and not host.startswith("[") else host for host in hosts]
        # Starlette asserts these at start-up; a readable error beats an AssertionError.
        for pattern in hosts:
            if "*" in pattern[1:] or (pattern.startswith("*") and pattern != "*" and not pattern.startswith("*.")):
                raise ValueError(f"host pattern {pattern!r}: a wildcard must be '*' or lead as in '*.example.org'")
        return hosts


async def _discard(message: Message) -> None:
    """Drops Starlette's own plain-text refusal: ours is sent in the project's error body instead."""


async def _mark_trusted(scope: Scope, receive: Receive, send: Send) -> None:
    scope[_TRUSTED_SCOPE_KEY] = True


class TrustedHosts:
    """Starlette's ``TrustedHostMiddleware`` check, answering a refusal as 400 INVALID_HOST in the error body."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str], setting: str) -> None:
        self.app = app
        self._check = TrustedHostMiddleware(_mark_trusted, allowed_hosts=allowed_hosts, www_redirect=False)
        # Anything but plain HTTP (a websocket, should a service ever add one) gets Starlette's own handling.
        self._starlette = TrustedHostMiddleware(app, allowed_hosts=allowed_hosts, www_redirect=False)
        self._message = f"The Host header is not one this service answers to (allowed hosts: {setting})."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan passes through Starlette's check untouched
            await self._starlette(scope, receive, send)
            return
        await self._check(scope, receive, _discard)
        if scope.pop(_TRUSTED_SCOPE_KEY, False):
            await self.app(scope, receive, send)
            return
        refusal = error_response(Request(scope), ServiceError(ErrorCode.INVALID_HOST, self._message))
        await refusal(scope, receive, send)


def _setting_name(settings: Any, field: str) -> str:
    """The environment variable of a settings field, e.g. BT_GATEWAY_ALLOWED_HOSTS."""
    config = getattr(settings, "model_config", None)
    prefix = config.get("env_prefix", "") if isinstance(config, dict) else ""
    return f"{prefix}{field}".upper()


def install_host_checks(app: FastAPI, settings: Any) -> None:
    """Trusted hosts (always; loopback when the settings say nothing) and CORS (only for configured origins).

    Added last by ``build_app`` so that it wraps the service's other middleware: a refused host costs nothing.
    The 400 is declared on every route of the OpenAPI schema.
    """
    origins = list(getattr(settings, "cors_origins", []) or [])
    if origins:
        # Read-only and predicting routes are POST with multipart bodies; credentials are never sent cross-site.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-request-id"],
        )
    hosts = list(getattr(settings, "allowed_hosts", LOOPBACK_HOSTS))
    app.add_middleware(TrustedHosts, allowed_hosts=hosts, setting=_setting_name(settings, "allowed_hosts"))
    _declare_invalid_host(app)


def _declare_invalid_host(app: FastAPI) -> None:
    """Add 400 INVALID_HOST to every operation of the app's OpenAPI schema (any route can answer it)."""
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build_schema()
        # The protocol's routes declare their error body as a component; its shape inline otherwise.
        known = schema.get("components", {}).get("schemas", {})
        oip_ref = {"$ref": f"#/components/schemas/{_OIP_ERROR_MODEL}"}
        oip_body = oip_ref if _OIP_ERROR_MODEL in known else _OIP_ERROR_SCHEMA
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                if "400" in responses:
                    described = responses["400"].get("description", "")
                    if "INVALID_HOST" not in described:
                        responses["400"]["description"] = f"{described} Or {INVALID_HOST_DESCRIPTION}".strip()
                else:
                    body = oip_body if is_oip_path(path) else {"$ref": "#/components/schemas/ErrorOut"}
                    responses["400"] = {
                        "description": INVALID_HOST_DESCRIPTION,
                        "content": {"application/json": {"schema": body}},
                    }
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "ErrorOut" not in components:  # no route declared an error: add the body's schema
            components.update(_error_out_definitions())
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _error_out_definitions() -> dict[str, Any]:
    """The JSON schemas of the error body and the models it nests, as OpenAPI components."""
    from pydantic.json_schema import models_json_schema

    from shared.kit.schemas import ErrorOut

    _, definitions = models_json_schema([(ErrorOut, "serialization")], ref_template="#/components/schemas/{model}")
    return dict(definitions["$defs"])
