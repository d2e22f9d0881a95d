"""Dependencies of the training service's routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.training.config import TrainingSettings
from services.training.jobs import TrainingRunManager
from shared.kit.service import get_settings


def get_manager(request: Request) -> TrainingRunManager:
    return request.app.state.manager


SettingsDep = Annotated[TrainingSettings, Depends(get_settings)]
ManagerDep = Annotated[TrainingRunManager, Depends(get_manager)]
