"""The service kit: what every service's app shares, so each keeps only what differs.

- ``health_router``: ``GET /healthz`` (liveness: the process answers), added by ``build_app``. Each service adds its own
  ``/readyz`` (readiness: what it needs to answer, including its upstream services, is ready).
- ``get_settings``: the settings object the app was built with (``app.state.settings``).
- ``error_responses``: OpenAPI ``responses=`` entries with the one error body.
- ``json_answer``: an answer serialised once.
- ``internal_async_client`` / ``internal_client``: httpx clients for calls between our services.
- ``DEFAULT_MAX_UPLOAD_BYTES``: the upload limit every service starts from.
- ``build_app``: the FastAPI app every ``create_app`` starts from (settings, errors, upload limit,
  ``GET /metrics`` and the per-route request series of ``shared.kit.metrics``).
- ``get_request_id``: the caller's ``x-request-id``, passed on to upstream calls.
- ``service_main``: ``python -m services.<name>`` for each service, with its worker processes (``shared.kit.workers``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Protocol

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from pydantic import BaseModel
from starlette.types import Lifespan

from shared.kit.deadline import RequestBudgetMiddleware
from shared.kit.errors import install_error_handlers
from shared.kit.hosts import install_host_checks
from shared.kit.metrics import install_metrics
from shared.kit.request_checks import DEFAULT_BODY_TIMEOUT_S, RequestChecks, declare_request_checks
from shared.kit.schemas import ErrorOut
from shared.kit.uploads import BodySizeLimit, UploadSizeLimit
from shared.kit.upstream import REQUEST_ID_HEADER
from shared.kit.workers import WorkerSettings, share_metrics_between_workers

API_VERSION = "0.1.0"
# Idle seconds an internal connection is kept for reuse: below uvicorn's 5 s keep-alive timeout.
INTERNAL_KEEPALIVE_S = 4.0

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Bound of a JSON request body (training options are a few hundred bytes).
DEFAULT_MAX_JSON_BODY_BYTES = 64 * 1024

health_router = APIRouter(tags=["health"])


class HealthOut(BaseModel):
    status: str = "ok"


@health_router.get("/healthz", response_model=HealthOut, summary="Liveness: the process answers")
async def read_health() -> HealthOut:
    return HealthOut()


def get_settings(request: Request) -> Any:
    """The app's settings; each service wraps it as ``Annotated[Settings, Depends(get_settings)]``."""
    return request.app.state.settings


def get_request_id(request: Request) -> str | None:
    """The request id the caller sent (the gateway's middleware always sets one), for upstream logs."""
    return request.headers.get(REQUEST_ID_HEADER)


RequestIdDep = Annotated[str | None, Depends(get_request_id)]


def build_app(
    title: str,
    description: str,
    settings: Any,
    lifespan: Lifespan[FastAPI] | None = None,
    *,
    max_upload_bytes: int | None = None,
    upload_limit_exempt: tuple[str, ...] = (),
    max_body_bytes: int | None = None,
    openapi_tags: list[dict[str, Any]] | None = None,
) -> FastAPI:
    """A service's app with its settings on ``app.state``, the one error body, the upload limit
    (when the service takes uploads) or else the body limit (``max_body_bytes``; both counted as bytes arrive),
    Prometheus metrics, trusted hosts and CORS (``shared.kit.hosts``, from the settings' ``allowed_hosts`` and
    ``cors_origins``); the service adds its middleware and routers."""
    app = FastAPI(
        title=title, description=description, version=API_VERSION, lifespan=lifespan, openapi_tags=openapi_tags
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(health_router)
    if max_upload_bytes is not None:
        app.add_middleware(UploadSizeLimit, max_bytes=max_upload_bytes, exempt_suffixes=upload_limit_exempt)
    elif max_body_bytes is not None:  # a service without uploads: every body is small
        app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    # A caller's time budget (x-request-timeout-ms) for the blocking work of the request (shared.kit.deadline).
    app.add_middleware(RequestBudgetMiddleware)
    install_metrics(app)
    # Unsafe URL text and slow bodies, before any route or limit sees the request (shared.kit.request_checks).
    app.add_middleware(RequestChecks, body_timeout_s=getattr(settings, "body_timeout_s", DEFAULT_BODY_TIMEOUT_S))
    # Last, so it wraps the middleware above: a request for a Host not allowed is refused before any work.
    install_host_checks(app, settings)
    declare_request_checks(app)  # after the host check's 400, whose error body it reuses
    return app


def json_answer(answer: BaseModel) -> Response:
    """A route's answer serialised once: returned as a model, FastAPI would validate it again against the route's
    ``response_model`` before serialising it (the schema still documents the route)."""
    return Response(answer.model_dump_json(), media_type="application/json")


# What each status means when a route answers it; a route may say more with `descriptions`.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "INVALID_REQUEST: the multipart body could not be parsed.",
    404: "MODEL_NOT_FOUND or VERSION_NOT_FOUND; the message names the models or versions that exist.",
    409: "TRAINING_BUSY: a training run is already in progress.",
    411: "INVALID_REQUEST: the body length is required.",
    413: "FILE_TOO_LARGE: the upload is larger than the configured limit.",
    415: "INVALID_IMAGE: the upload is empty or not a decodable image; UNSUPPORTED_DICOM: a DICOM file without "
    "pixel data, or compressed with a transfer syntax no installed decoder handles (named in the message).",
    422: "INVALID_REQUEST: e.g. no multipart `file` field, or a malformed or out-of-bounds parameter.",
    500: "INVALID_MODEL: the registered model file cannot be served.",
    502: "UPSTREAM_ERROR: an upstream service answered something unexpected.",
    503: "Not available now, with Retry-After: e.g. UPSTREAM_UNAVAILABLE, REGISTRY_UNAVAILABLE (MLflow down) or "
    "SERVER_BUSY (more images being decoded at once than the service's decode slots); AUDIT_UNAVAILABLE: the "
    "answer could not be recorded in the audit trail and the service requires its records (audit_required).",
}


def error_responses(*statuses: int, descriptions: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the given statuses, all with the common error body."""
    told = {**ERROR_DESCRIPTIONS, **(descriptions or {})}
    return {status: {"model": ErrorOut, "description": told[status]} for status in statuses}


def _client_options(
    base_url: str, timeout_s: float, connect_timeout_s: float, max_connections: int | None
) -> dict[str, Any]:
    # uvicorn closes a keep-alive connection after 5 s idle; a client that keeps it as long may send on a
    # connection the server is closing (seen as a 503 under load), so idle ones are dropped sooner.
    # 100 is httpx's own default bound.
    limits = httpx.Limits(max_connections=max_connections or 100, keepalive_expiry=INTERNAL_KEEPALIVE_S)
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


def service_main(
    service: str,
    settings_type: Callable[[], _Placement],
    note: str = "",
    argv: Sequence[str] | None = None,
    worker_module: str | None = None,
) -> None:
    """``python -m services.<service>``: serve ``services.<service>.main:create_app`` on the host and port
    of its settings. Arguments are refused (``--help`` excepted): settings come from the environment only,
    so a flag that looks like a setting cannot be silently ignored. ``worker_module``: the module each worker
    process imports for ``create_app`` instead of ``services.<service>.main`` (one that prepares the process
    first)."""
    prefix = f"BT_{service.upper()}_"
    factory = f"services.{service}.main:create_app"
    worker_factory = f"{worker_module or f'services.{service}.main'}:create_app"
    settings_note = f"Settings come from environment variables {prefix}*, e.g. {prefix}HOST and {prefix}PORT."
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{service}",
        description=f"Start the {service} service: the same as uvicorn --factory {factory}.",
        epilog=f"{settings_note} {note}".strip(),
    )
    parser.parse_args(argv)
    import importlib

    import uvicorn

    settings = settings_type()
    workers = settings.process_count() if isinstance(settings, WorkerSettings) else 1
    if workers > 1:
        # Each worker builds its own app from the same environment, checked once above, and knows how many share
        # the CPUs (the inference service sizes its onnxruntime threads by it).
        os.environ[f"{prefix}WORKERS"] = str(workers)
        # glibc gives each thread that allocates an arena of its own and keeps their pages: two per worker hold
        # the resident memory of a loaded worker about 50 MB lower under load (docs/benchmarks.md).
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
        share_metrics_between_workers(service)
        uvicorn.run(worker_factory, factory=True, host=settings.host, port=settings.port, workers=workers)
        return
    # The app is built on the settings its host and port came from: the environment is read once.
    app = importlib.import_module(f"services.{service}.main").create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port)
