"""The training service's app factory: ``uvicorn --factory services.training.main:create_app``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.training.config import TrainingSettings
from services.training.jobs import RunFunction, TrainingRunManager
from services.training.options import FamilyProgress, TrainingOptions
from services.training.routes import runs
from shared.kit.service import build_app


def _run_pipeline(
    options: TrainingOptions, settings: TrainingSettings, report: Callable[[FamilyProgress], None]
) -> list[FamilyProgress]:
    from services.training.pipeline import run_training  # TensorFlow is imported only when a run starts

    return run_training(options, settings, report)


def create_app(settings: TrainingSettings | None = None, run_function: RunFunction | None = None) -> FastAPI:
    """Build the app; settings come from the environment unless given."""
    settings = settings or TrainingSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.manager = TrainingRunManager(app.state.settings, run_function or _run_pipeline)
        yield

    app = build_app(
        "Brain tumour zoo - training service",
        "Trains the four model families, converts them to ONNX and registers them in MLflow.",
        settings,
        lifespan,
        max_body_bytes=settings.max_body_bytes,
    )
    app.include_router(runs.router)
    return app
