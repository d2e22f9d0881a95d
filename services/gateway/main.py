"""The gateway's app factory: ``uvicorn --factory services.gateway.main:create_app``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress

import httpx
from fastapi import FastAPI

from services.gateway.batch import BATCH_PATH_SUFFIX
from services.gateway.config import Settings
from services.gateway.middleware import BatchBodyLimit, RequestIdMiddleware
from services.gateway.replica_http import new_session
from services.gateway.replicas import Replica, ReplicaPool
from services.gateway.routes import api_router
from services.gateway.routes.studies import STOW_PATH_SUFFIX
from services.gateway.upstream import ExplainerClient, InferenceClient
from shared.kit.audit.requests import open_trail
from shared.kit.auth import install_caller_tokens
from shared.kit.hosts import LOOPBACK_HOSTS
from shared.kit.service import build_app, internal_async_client
from shared.kit.workers import forget_this_worker

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Public API of the brain-tumour MRI model zoo. Upload an MRI slice and get the class
(**glioma**, **meningioma**, **notumor**, **pituitary**) with every class's probability, from one
model or from all four side by side: a forest of decision trees (`rf`: extra trees by default, or
the study's random forest), a small dense network (`snn`), a convolutional network (`cnn`) and a
fine-tuned MobileNetV2 (`mobilenetv2`).

Models are versioned in MLflow; name a version by number or alias, or get the default
(alias `champion` if set, else the latest).

`/v1/predict/batch` classifies several files with one model, one answer (or error) per file.
`/v1/explain` explains one model's answer with LIME (top regions and a heat-map overlay); the web
page at `/` compares the four models side by side.

Every error has the body `{"error": {"code", "message", "request_id"}}` and never echoes the upload.
Send `x-request-id` to correlate a call with the services' logs; it is echoed in every answer.
"""

OPENAPI_TAGS = [
    {"name": "predictions", "description": "Classify an uploaded MRI image."},
    {"name": "explanations", "description": "LIME explanations: which regions of the scan drove an answer."},
    {"name": "studies", "description": "Studies over DICOMweb: pulled from a PACS or pushed; results as DICOM SR."},
    {"name": "models", "description": "The registered models, their versions, aliases and metrics."},
    {"name": "health", "description": "Liveness and readiness probes."},
]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One HTTP client per inference replica and one for the explainer for the life of the app, so
    connections are reused; the replicas are checked once before the first request, then in the background."""
    settings: Settings = app.state.settings
    async with AsyncExitStack() as clients:
        replicas = [
            Replica(url, await clients.enter_async_context(new_session(url, settings.max_connections)))
            for url in settings.inference_urls
        ]
        explainer_http = await clients.enter_async_context(
            _client(settings.explainer_url, settings.explain_timeout_s, settings)
        )
        pool = ReplicaPool(
            replicas,
            "inference",
            settings.connect_timeout_s,
            settings.health_check_interval_s,
            settings.health_check_timeout_s,
        )
        await pool.check_all()
        app.state.inference = InferenceClient(pool, settings.predict_timeout_s, settings.request_timeout_s)
        app.state.explainer = ExplainerClient(explainer_http)
        logger.info(
            "gateway forwarding to inference at %s, explainer at %s",
            ", ".join(settings.inference_urls),
            settings.explainer_url,
        )
        watcher = asyncio.create_task(pool.watch(), name="inference-replica-checks")
        app.state.audit_trail = trail = open_trail(settings)
        try:
            yield
        finally:
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher
            if trail is not None:
                await asyncio.to_thread(trail.close)  # what is queued is written before the process ends
            forget_this_worker()


def _client(base_url: str, timeout_s: float, settings: Settings) -> httpx.AsyncClient:
    return internal_async_client(base_url, timeout_s, settings.connect_timeout_s, settings.max_connections)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings come from the environment unless given."""
    settings = settings or Settings()
    app = build_app(
        "Brain tumour MRI classifier - API",
        DESCRIPTION,
        settings,
        lifespan,
        max_upload_bytes=settings.max_upload_bytes,
        upload_limit_exempt=(BATCH_PATH_SUFFIX, STOW_PATH_SUFFIX),
        openapi_tags=OPENAPI_TAGS,
    )
    app.add_middleware(
        BatchBodyLimit,
        path_suffix=BATCH_PATH_SUFFIX,
        max_files=settings.max_batch_files,
        max_file_bytes=settings.max_upload_bytes,
    )
    # Added last, so it runs first: even the size limits' 413 carries the request id.
    app.add_middleware(RequestIdMiddleware)
    app.include_router(api_router)
    install_caller_tokens(app, settings)
    if app.state.caller_tokens is None and settings.host not in LOOPBACK_HOSTS:
        logger.warning(
            "the prediction routes take anonymous callers on %s: set BT_GATEWAY_API_TOKENS (docs/deploy.md)",
            settings.host,
        )
    return app
