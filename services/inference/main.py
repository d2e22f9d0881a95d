"""The inference service's app factory: ``uvicorn --factory services.inference.main:create_app``."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.inference.cache_trust import cache_signer
from services.inference.config import Settings
from services.inference.dataplane import DataPlane
from services.inference.guard_selector import GuardSelector
from services.inference.mlflow_store import configure_mlflow_http
from services.inference.registry import ModelRegistry, open_registry
from services.inference.routes import api_router, debug_router
from services.inference.runner import Runner
from shared.core.decoding import decode_settings
from shared.kit.audit.requests import open_trail
from shared.kit.auth import install_caller_tokens
from shared.kit.service import build_app
from shared.kit.uploads import RouteBodyLimit

logger = logging.getLogger(__name__)

MASKED_PATH_SUFFIX = "/predict-masked"

DESCRIPTION = """\
Serves the brain-tumour MRI classifiers registered in MLflow (`brain-tumor-rf`, `-snn`, `-cnn`,
`-mobilenetv2`) as ONNX models. Each model carries its own preprocessing contract, read at load time.

Errors always have the body `{"error": {"code", "message", "request_id"}}`.
"""


def _preload(registry: ModelRegistry, guard: GuardSelector, done: threading.Event) -> None:
    try:
        guard.current()  # the guard's first lookup, so no request pays for it
        registry.preload_defaults()
    except Exception:  # a background thread has nobody to raise to
        logger.exception("preloading the default models failed")
    finally:
        done.set()


def build_dataplane(settings: Settings) -> DataPlane:
    """The registry on the settings' MLflow, the guard's selector on the same store, one runner."""
    registry = open_registry(
        settings.tracking_uri,
        settings.cache_dir,
        intra_op_threads=settings.session_threads(),
        catalog_ttl_s=settings.catalog_ttl_s,
        metric_prefixes=settings.metric_prefixes,
        registry_retry_s=settings.registry_retry_s,
        signer=cache_signer(settings.cache_key_file, settings.cache_dir),
    )
    guards = GuardSelector(registry.store, settings.ood_mode, settings.ood_refresh_s, settings.session_threads())
    runner = Runner(
        batching=settings.batching,
        window_s=settings.batch_window_ms / 1000.0,
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        concurrent_work=settings.work_threads(),
    )
    return DataPlane(registry, guards, runner, settings.pixel_run_batch, settings.referral_alpha)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Create the data plane, and start loading the default versions without delaying start-up."""
    settings: Settings = app.state.settings
    configure_mlflow_http(settings.mlflow_timeout_s, settings.mlflow_max_retries)
    app.state.dataplane = dataplane = build_dataplane(settings)
    app.state.preload_done = done = threading.Event()
    if settings.preload:
        threading.Thread(
            target=_preload, args=(dataplane.registry, dataplane.guards, done), name="preload", daemon=True
        ).start()
    else:
        done.set()
    logger.info(
        "inference service using MLflow at %s; batching %s, %d onnxruntime threads per session",
        settings.tracking_uri,
        f"on (window {settings.batch_window_ms} ms, at most {settings.max_batch})" if settings.batching else "off",
        settings.session_threads(),
    )
    # The Open Inference Protocol's answers are recorded here (services/inference/auditing.py).
    app.state.audit_trail = trail = open_trail(settings)
    try:
        yield
    finally:
        await dataplane.runner.close()
        if trail is not None:
            await asyncio.to_thread(trail.close)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings come from the environment unless given."""
    settings = settings or Settings()
    decode_settings()  # the shared BT_DECODE_* bounds: bad values stop the service here, not at its first image
    # Tensor bodies (predict-pixels, the Open Inference Protocol's infer) are bounded by their own, larger
    # limit (max_pixel_batch_bytes), read by their handlers; predict-masked's three parts by the sum of theirs.
    app = build_app(
        "Brain tumour MRI - inference service",
        DESCRIPTION,
        settings,
        lifespan,
        max_upload_bytes=settings.max_upload_bytes,
        upload_limit_exempt=("/predict-pixels", "/infer", MASKED_PATH_SUFFIX),
    )
    app.add_middleware(RouteBodyLimit, path_suffix=MASKED_PATH_SUFFIX, max_bytes=settings.masked_body_bytes())
    app.include_router(api_router)
    install_caller_tokens(app, settings)  # the /v2 infer routes' callers
    if settings.debug_endpoints:
        app.include_router(debug_router)
    return app
