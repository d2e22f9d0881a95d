"""A champion's recipe: the parameters its MLflow run logged, to refit the same model on more images
(``TrainingOptions.refit_champions``: evaluate on a split first, then refit on every image)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from shared.core.ensemble_spec import WEIGHTS_TAG
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import CHAMPION_ALIAS, ENSEMBLE_MODEL, RECIPE_RUN_TAG, RECIPE_VERSION_TAG, registered_name

# Logged by the run, not parameters of the model: the refit sets its own.
RUN_ONLY_PARAMS = ("test_files_sha256", "data_dir")


@dataclass(frozen=True)
class Recipe:
    """What a refit takes from a champion: its parameters, and where its test-split figures are."""

    family: str
    params: dict[str, Any]
    version: str
    run_id: str


def _param_value(text: str) -> Any:
    """Back from tracking.log_params: JSON for everything but strings, which are logged as they are."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def champion_recipe(family: str) -> Recipe:
    """The recipe of the family's ``champion`` version in the active MLflow; RUN_NOT_FOUND when it has none."""
    client = MlflowClient()
    name = registered_name(family)
    try:
        version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        logged = client.get_run(version.run_id).data.params
    except MlflowException as exc:
        raise ServiceError(
            ErrorCode.RUN_NOT_FOUND,
            f"no {CHAMPION_ALIAS!r} version of {name} to refit: train it with a test split first",
        ) from exc
    params = {key: _param_value(text) for key, text in logged.items() if key not in RUN_ONLY_PARAMS}
    return Recipe(family, params, *_evaluated(version))


def champion_ensemble_weights() -> tuple[dict[str, float], str] | None:
    """The ensemble champion's weights {family: weight} and the run that evaluated them on a test split, or None
    without an ensemble champion."""
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(registered_name(ENSEMBLE_MODEL), CHAMPION_ALIAS)
    except MlflowException:
        return None
    weights = json.loads(version.tags.get(WEIGHTS_TAG, "{}"))
    return {str(k): float(v) for k, v in weights.items()}, _evaluated(version)[1]


def _evaluated(version: ModelVersion) -> tuple[str, str]:
    """The version and run whose test-split figures a champion carries: its own; a refit's, its recipe's (so that a
    refit of a refit still points at the figures)."""
    tags = version.tags
    return str(tags.get(RECIPE_VERSION_TAG) or version.version), str(tags.get(RECIPE_RUN_TAG) or version.run_id)
