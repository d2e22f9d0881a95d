"""The explainer's app factory: ``uvicorn --factory services.explainer.main:create_app``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI

from services.explainer.config import Settings
from services.explainer.inference import InferenceBatchClient
from services.explainer.routes import api_router
from shared.core.decoding import decode_settings
from shared.core.explanation.inprocess import pixels_predictor
from shared.core.explanation.lime import lime
from shared.core.explanation.occlusion import occlusion
from shared.kit.service import build_app, internal_client

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Explanations of the brain-tumour MRI classifiers: which regions of the head pushed a model towards (or away
from) a class. Occlusion (the default) slides a patch over the head (a grid, and the grid shifted by half a
cell) and weighs each quarter-cell tile by the positions that hide it; LIME hides random
subsets of SLIC superpixels and fits a weighted linear model. The copies are made and classified by the
inference service (`predict-masked`), at each model's own input size, by the very ONNX sessions that serve
predictions.

Errors always have the body `{"error": {"code", "message", "request_id"}}`.
"""


def _warm_up() -> None:
    """One tiny explanation by each method, so the first request does not pay for lazy imports and first calls."""
    ramp = np.tile(np.linspace(0, 255, 32, dtype=np.float64), (32, 1)).astype(np.uint8)
    predict = pixels_predictor(ramp, lambda batch: np.full((len(batch), 2), 0.5))
    occlusion(ramp, predict, ("a", "b"), cells=2)
    lime(ramp, predict, ("a", "b"), num_samples=20, num_segments=8)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One HTTP client to the inference service for the life of the app; a turn-taking semaphore."""
    settings: Settings = app.state.settings
    with internal_client(settings.inference_url, settings.request_timeout_s, settings.connect_timeout_s) as http:
        app.state.inference = InferenceBatchClient(http)
        app.state.turns = asyncio.Semaphore(settings.max_concurrent)
        await asyncio.to_thread(_warm_up)
        logger.info("explainer asking inference at %s", settings.inference_url)
        yield


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings come from the environment unless given."""
    settings = settings or Settings()
    decode_settings()  # the shared BT_DECODE_* bounds: bad values stop the service here, not at its first image
    app = build_app(
        "Brain tumour MRI - explainer service",
        DESCRIPTION,
        settings,
        lifespan,
        max_upload_bytes=settings.max_upload_bytes,
    )
    app.include_router(api_router)
    return app
