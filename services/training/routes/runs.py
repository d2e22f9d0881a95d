"""POST/GET /v1/training-runs: start a run and follow it.

Starting a run changes what is served (it registers new versions), so it takes the service's bearer token
(``BT_TRAINING_API_TOKEN``) and a data folder under the configured roots (``BT_TRAINING_DATA_ROOTS``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, status

from services.training.deps import ManagerDep, SettingsDep
from services.training.families import get_family
from services.training.jobs import TrainingRun
from services.training.options import TrainingOptions
from shared.core.dataset import discover
from shared.kit.auth import AUTH_RESPONSES, BearerToken
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.service import error_responses

API_TOKEN_SETTING = "BT_TRAINING_API_TOKEN"
DATA_ROOTS_SETTING = "BT_TRAINING_DATA_ROOTS"

router = APIRouter(prefix="/v1/training-runs", tags=["training"])


def within_data_roots(data_dir: Path, roots: list[Path]) -> Path:
    """``data_dir`` resolved (symbolic links followed), if it lies under one of ``roots``; else INVALID_DATA_FOLDER.

    The refusal is the same whether the path exists or not, so a caller cannot map the server's folders.
    """
    refusal = ServiceError(
        ErrorCode.INVALID_DATA_FOLDER,
        f"data_dir must be a folder under one of the data roots the service is configured with ({DATA_ROOTS_SETTING}).",
    )
    try:
        resolved = data_dir.expanduser().resolve()
        allowed = [root.expanduser().resolve() for root in roots]
    except (RuntimeError, OSError) as exc:  # an unknown ~user, a symbolic link loop
        raise refusal from exc
    if not any(resolved.is_relative_to(root) for root in allowed):
        raise refusal
    return resolved


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TrainingRun,
    dependencies=[Depends(BearerToken(API_TOKEN_SETTING))],
    responses={
        **AUTH_RESPONSES,
        **error_responses(
            409,
            413,
            422,
            descriptions={
                413: "FILE_TOO_LARGE: the JSON body is larger than the service's limit (BT_TRAINING_MAX_BODY_BYTES).",
                422: "INVALID_REQUEST, INVALID_DATA_FOLDER or WEIGHTS_NOT_FOUND: bad options, a data_dir outside "
                "the data roots or without images, or MobileNetV2's weights missing.",
            },
        ),
    },
)
def start_training_run(options: TrainingOptions, settings: SettingsDep, manager: ManagerDep) -> TrainingRun:
    """Start training the chosen families on a folder under the service's data roots. One run at a time (409).
    Needs ``Authorization: Bearer <BT_TRAINING_API_TOKEN>``."""
    # The service's own default folder is the operator's choice; a folder a client names must be under a root.
    named = within_data_roots(options.data_dir, settings.data_roots) if options.data_dir else None
    data_dir = settings.data_folder(named)
    discover(data_dir)  # 422 before any work starts when the folder is missing or empty
    for name in options.families:  # 422 when a family lacks what it needs (MobileNetV2's weights file)
        get_family(name, settings).check_available()
    return manager.start(options.model_copy(update={"data_dir": data_dir}))


@router.get("", response_model=list[TrainingRun])
def list_training_runs(manager: ManagerDep) -> list[TrainingRun]:
    return manager.list()


@router.get(
    "/{run_id}",
    response_model=TrainingRun,
    responses=error_responses(404, 422, descriptions={404: "RUN_NOT_FOUND: no run with this id in this service."}),
)
def get_training_run(run_id: str, manager: ManagerDep) -> TrainingRun:
    """State, per-family progress, MLflow run ids, registered versions, error if it failed."""
    return manager.get(run_id)
