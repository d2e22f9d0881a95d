"""POST/GET /v1/training-runs: start a run and follow it."""

from __future__ import annotations

from fastapi import APIRouter, status

from services.training.deps import ManagerDep, SettingsDep
from services.training.families import get_family
from services.training.jobs import TrainingRun
from services.training.options import TrainingOptions
from shared.dataset import discover

router = APIRouter(prefix="/v1/training-runs", tags=["training"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=TrainingRun)
def start_training_run(options: TrainingOptions, settings: SettingsDep, manager: ManagerDep) -> TrainingRun:
    """Start training the chosen families on a folder this server can read. One run at a time (409)."""
    data_dir = options.data_dir or settings.data_dir
    discover(data_dir)  # 422 before any work starts when the folder is missing or empty
    for name in options.families:  # 422 when a family lacks what it needs (MobileNetV2's weights file)
        get_family(name, settings).check_available()
    return manager.start(options.model_copy(update={"data_dir": data_dir}))


@router.get("", response_model=list[TrainingRun])
def list_training_runs(manager: ManagerDep) -> list[TrainingRun]:
    return manager.list()


@router.get("/{run_id}", response_model=TrainingRun)
def get_training_run(run_id: str, manager: ManagerDep) -> TrainingRun:
    """State, per-family progress, MLflow run ids, registered versions, error if it failed."""
    return manager.get(run_id)
