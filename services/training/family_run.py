"""One family's run, in the order of its steps: parameters (defaults, a search or a champion's recipe), refit,
test evaluation, calibration, ONNX export with its checks, the MLflow Model, and registration (not promotion:
that is the pipeline's, once every family is registered)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
from mlflow.models.model import ModelInfo

from services.training import registration, tracking
from services.training.calibration import CalibrationSlice
from services.training.config import TrainingSettings
from services.training.data import PreparedData
from services.training.evaluation import evaluate_and_log
from services.training.families import ModelFamily, get_family
from services.training.lime_overlays import log_overlays, onnx_predict_fn
from services.training.options import FamilyProgress, FamilyState, ProgressCallback, TrainingOptions
from services.training.parameters import base_params, read_by
from services.training.recipe import champion_recipe
from services.training.refit import refit
from services.training.registration import LoggedFile, standing_on_test_split
from services.training.search_step import log_curves, search_and_log
from services.training.serving_export import calibrate, calibrated_export, export_and_check, require_parity
from shared.kit.schemas import RECIPE_RUN_TAG, RECIPE_VERSION_TAG, registered_name


def _progress_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """What a run's progress shows: every figure but the per-class ones."""
    per_class = ("test_precision_", "test_recall_", "test_f1_")
    return {k: v for k, v in metrics.items() if not k.startswith(per_class) or k.endswith("macro")}


def _register(
    family_name: str, model: ModelInfo, model_bytes: bytes, data: PreparedData, params: dict[str, Any],
    accuracy: float | None, recipe_tags: dict[str, str],
) -> str:  # fmt: skip
    """A new version of the family's registered model from its logged MLflow Model."""
    if accuracy is None:
        recipe = recipe_tags.get(RECIPE_VERSION_TAG)
        description = f"{family_name}: refit on {data.info['train_images']} images, recipe of version {recipe}"
    else:
        description = f"{family_name}: test accuracy {accuracy:.4f}"
    return registration.register(
        registered_name(family_name),
        LoggedFile.of_model(model),
        model_bytes,
        description=description,
        tags={"family": family_name, "image_size": str(params["image_size"]), **recipe_tags},
        standing=standing_on_test_split(data.info["test_files_sha256"], {}),
    )


def _log_data(data: PreparedData) -> None:
    mlflow.log_text("\n".join(data.test_file_names()), "split/test_files.txt")
    mlflow.log_params({"test_files_sha256": data.info["test_files_sha256"], "data_dir": data.info["data_dir"]})
    mlflow.log_metrics({k: float(v) for k, v in data.info.items() if isinstance(v, int | float)})


@dataclass(frozen=True)
class ChosenParams:
    """The parameters a family refits with, and where they came from."""

    params: dict[str, Any]
    cv_metrics: dict[str, float] = field(default_factory=dict)
    search_seconds: float = 0.0
    recipe_tags: dict[str, str] = field(default_factory=dict)  # a refit's: the recipe's version and run


def _choose_params(
    family_name: str, family: ModelFamily, data: PreparedData, options: TrainingOptions,
    settings: TrainingSettings, step: Callable[[str], None],
) -> ChosenParams:  # fmt: skip
    """The family's defaults with the run's options on top; then a champion's recipe (a refit), or the search's
    winner, or those as they are (search none)."""
    params = base_params(family, options)
    if options.refit_champions:
        step("reading the champion's recipe")
        recipe = champion_recipe(family_name)
        params = {**params, **read_by(family, {**recipe.params, **options.overrides}), "seed": options.seed}
        recipe_tags = {RECIPE_VERSION_TAG: recipe.version, RECIPE_RUN_TAG: recipe.run_id}
        mlflow.set_tags(recipe_tags)
        return ChosenParams(params, recipe_tags=recipe_tags)
    if options.search == "none":
        return ChosenParams(params)
    step("searching (3-fold CV)")
    params, cv_metrics, search_seconds = search_and_log(family_name, family, data, options, settings, params)
    return ChosenParams(params, cv_metrics, search_seconds)


def train_family(
    family_name: str,
    data: PreparedData,
    options: TrainingOptions,
    settings: TrainingSettings,
    report: ProgressCallback,
    progress: FamilyProgress,
    calibration_slice: CalibrationSlice,
) -> dict[str, Any]:
    """Search, refit, evaluate, convert, check, log and register one family. Returns its report row."""

    def step(name: str) -> None:
        progress.step = name
        report(progress)

    progress.state = FamilyState.RUNNING
    step("starting")
    family = get_family(family_name, settings)
    with mlflow.start_run(run_name=family_name) as run:
        progress.mlflow_run_id = run.info.run_id
        mlflow.set_tags({"family": family_name, "stage": "family", "search": options.search})
        _log_data(data)
        chosen = _choose_params(family_name, family, data, options, settings, step)
        params, cv_metrics, search_seconds = chosen.params, chosen.cv_metrics, chosen.search_seconds
        tracking.log_params(params)

        step("refitting on all training data")
        fitted, train_seconds = refit(family, data, params, options.seed)
        log_curves(fitted.history)

        step("evaluating on the test split")
        size = int(params["image_size"])
        test_pixels, test_labels = _check_set(data, calibration_slice, size)
        native, evaluation, stage_metrics = evaluate_and_log(family_name, family, fitted, test_pixels, data.test_labels)

        step("calibrating")
        calibration, calibration_probabilities = calibrate(family, fitted, calibration_slice, size)

        step("converting to ONNX")
        model_bytes, parity, export_metrics = export_and_check(
            family_name, family, fitted, test_pixels, native, run.info.run_id
        )
        test_metrics = evaluation.metrics if evaluation is not None else {}
        metrics = {**test_metrics, "train_seconds": train_seconds, **export_metrics}
        mlflow.log_metrics(metrics)
        progress.metrics = _progress_metrics({**metrics, **cv_metrics})
        # Parity is checked on the graph as converted (against the native model), then again once calibrated.
        require_parity(family_name, parity)
        model_bytes, test_probabilities, calibrated_metrics = calibrated_export(
            family_name, family, fitted, model_bytes, calibration, test_pixels, native, data.test_labels
        )
        reliability_png = calibrated_metrics.pop("reliability_png")
        mlflow.log_metrics(calibrated_metrics)
        metrics.update(calibrated_metrics, calibration_temperature=calibration.temperature)
        progress.metrics = _progress_metrics({**metrics, **cv_metrics})
        # What MLflow users load and serve (pyfunc, `mlflow models serve`): the very file that passed parity.
        logged_model = tracking.log_onnx_model(model_bytes, name=family_name)
        # Explanation overlays (occlusion) of a few test images per class, from the ONNX model as it will be served.
        log_overlays(onnx_predict_fn(model_bytes), test_pixels, test_labels, family_name, per_class=2)
        if options.register_models:
            step("registering")
            progress.registered_name = registered_name(family_name)
            accuracy = test_metrics.get("test_accuracy")
            progress.registered_version = _register(
                family_name, logged_model, model_bytes, data, params, accuracy, chosen.recipe_tags
            )
    progress.state = FamilyState.DONE
    step("done")
    return {
        "family": family_name, "version": progress.registered_version, "run_id": run.info.run_id, "params": params,
        "metrics": metrics, "cv": cv_metrics, "stages": stage_metrics,
        "search_seconds": search_seconds, "train_seconds": train_seconds,
        "calibration_probabilities": calibration_probabilities, "test_probabilities": test_probabilities,
        "reliability_png": reliability_png,
    }  # fmt: skip


def _check_set(data: PreparedData, calibration_slice: CalibrationSlice, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The images the run evaluates and checks the ONNX graphs on: the test split; in a refit, which has none,
    the calibration slice (for the parity checks and explanation overlays only: no figure is reported on it)."""
    if len(data.test_labels):
        return data.test(size), data.test_labels
    return calibration_slice.pixels(size), calibration_slice.labels
