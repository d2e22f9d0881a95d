"""Dependencies of the training service's routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.training.config import TrainingSettings
from services.training.jobs import TrainingRunManager


def get_app_settings(request: Request) -> TrainingSettings:
    return request.app.state.settings


def get_manager(request: Request) -> TrainingRunManager:
    return request.app.state.manager


SettingsDep = Annotated[TrainingSettings, Depends(get_app_settings)]
ManagerDep = Annotated[TrainingRunManager, Depends(get_manager)]
