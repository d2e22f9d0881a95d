"""The service kit: what every service's app shares, so each keeps only what differs.

- ``health_router``: ``GET /healthz`` (liveness: the process answers). Each service adds its own
  ``/readyz`` (readiness: what it needs to answer, including its upstream services, is ready).
- ``get_settings``: the settings object the app was built with (``app.state.settings``).
- ``error_responses``: OpenAPI ``responses=`` entries with the one error body.
- ``internal_async_client`` / ``internal_client``: httpx clients for calls between our services.
- ``DEFAULT_MAX_UPLOAD_BYTES``: the upload limit every service starts from.
- ``service_main``: ``python -m services.<name>`` for each service.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import httpx
from fastapi import APIRouter, Request
from pydantic import BaseModel

from shared.schemas import ErrorOut

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024

health_router = APIRouter(tags=["health"])


class HealthOut(BaseModel):
    status: str = "ok"


@health_router.get("/healthz", response_model=HealthOut, summary="Liveness: the process answers")
async def read_health() -> HealthOut:
    return HealthOut()


def get_settings(request: Request) -> Any:
    """The app's settings; each service wraps it as ``Annotated[Settings, Depends(get_settings)]``."""
    return request.app.state.settings


# What each status means when a route answers it; a route may say more with `descriptions`.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "INVALID_REQUEST: the multipart body could not be parsed.",
    404: "MODEL_NOT_FOUND or VERSION_NOT_FOUND; the message names the models or versions that exist.",
    409: "TRAINING_BUSY: a training run is already in progress.",
    411: "INVALID_REQUEST: the body length is required.",
    413: "FILE_TOO_LARGE: the upload is larger than the configured limit.",
    415: "INVALID_IMAGE: the upload is empty or not a decodable image.",
    422: "INVALID_REQUEST: e.g. no multipart `file` field, or a malformed or out-of-bounds parameter.",
    500: "INVALID_MODEL: the registered model file cannot be served.",
    502: "UPSTREAM_ERROR: an upstream service answered something unexpected.",
    503: "UPSTREAM_UNAVAILABLE, REGISTRY_UNAVAILABLE (MLflow down), MODEL_NOT_READY or EXPLAINER_BUSY.",
}


def error_responses(*statuses: int, descriptions: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the given statuses, all with the common error body."""
    told = {**ERROR_DESCRIPTIONS, **(descriptions or {})}
    return {status: {"model": ErrorOut, "description": told[status]} for status in statuses}


def _client_options(
    base_url: str, timeout_s: float, connect_timeout_s: float, max_connections: int | None
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=max_connections) if max_connections else httpx.Limits()
    return {
        "base_url": base_url,
        "timeout": httpx.Timeout(timeout_s, connect=connect_timeout_s),
        "limits": limits,
        # Calls between our own services must never go through a proxy taken from the environment.
        "trust_env": False,
    }


def internal_async_client(
    base_url: str, timeout_s: float, connect_timeout_s: float, max_connections: int | None = None
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for one of our services, to be used as an async context manager."""
    return httpx.AsyncClient(**_client_options(base_url, timeout_s, connect_timeout_s, max_connections))


def internal_client(
    base_url: str, timeout_s: float, connect_timeout_s: float, max_connections: int | None = None
) -> httpx.Client:
    """The blocking twin, for callers that run in worker threads."""
    return httpx.Client(**_client_options(base_url, timeout_s, connect_timeout_s, max_connections))


class _Placement(Protocol):
    host: str
    port: int


def run_service(factory: str, host: str, port: int) -> None:
    """The same as ``uvicorn --factory <factory> --host H --port P``."""
    import uvicorn

    uvicorn.run(factory, factory=True, host=host, port=port)


def service_main(
    service: str, settings_type: Callable[[], _Placement], note: str = "", argv: Sequence[str] | None = None
) -> None:
    """``python -m services.<service>``: serve ``services.<service>.main:create_app`` on the host and port
    of its settings. Arguments are refused (``--help`` excepted): settings come from the environment only,
    so a flag that looks like a setting cannot be silently ignored."""
    prefix = f"BT_{service.upper()}_"
    factory = f"services.{service}.main:create_app"
    settings_note = f"Settings come from environment variables {prefix}*, e.g. {prefix}HOST and {prefix}PORT."
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{service}",
        description=f"Start the {service} service: the same as uvicorn --factory {factory}.",
        epilog=f"{settings_note} {note}".strip(),
    )
    parser.parse_args(argv)
    settings = settings_type()
    run_service(factory, settings.host, settings.port)
