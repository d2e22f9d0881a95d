"""One training run: the data found, split and cached once; each family's run (``family_run``); the ensemble of
the run's families; the guard against non-MRI input when asked; then the promotion gate over everything
registered (``registration``) and the comparison report."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from services.training import ood_guard, registration, tracking
from services.training.calibration import CalibrationSlice, carve_calibration_slice
from services.training.config import TrainingSettings
from services.training.data import PreparedData, prepare_data
from services.training.ensemble import build_ensemble
from services.training.family_run import train_family
from services.training.guard_registration import register_guard_file
from services.training.options import FamilyProgress, FamilyState, ProgressCallback, TrainingOptions
from services.training.recipe import champion_ensemble_weights
from services.training.registration import Candidate, standing_on_test_split
from services.training.report import write_comparison
from shared.kit.schemas import ENSEMBLE_MODEL, registered_name

logger = logging.getLogger(__name__)


def _ensemble(
    rows: list[dict[str, Any]], calibration_slice: CalibrationSlice, data: PreparedData, options: TrainingOptions
) -> dict[str, Any] | None:
    """The run's families combined (two at least); its failure is logged and leaves the families registered.
    A refit keeps the ensemble champion's weights (when it has exactly this run's families)."""
    try:
        split = data.info["test_files_sha256"]
        recipe = champion_ensemble_weights() if options.refit_champions else None
        return build_ensemble(
            rows, calibration_slice.labels, data.test_labels, split, options.register_models, recipe=recipe
        )
    except Exception:
        logger.exception("the ensemble could not be built or registered")
        return None


def _fit_guard(
    data: PreparedData, calibration_slice: CalibrationSlice, options: TrainingOptions, weights: Path | None
) -> Candidate | None:
    """The guard against non-MRI input (ood_guard.fit_guard_cv), fitted on every image but the test split, its
    thresholds and false-refusal rate cross-validated over them; registered, not promoted (the gate decides). A
    failure (no MobileNetV2 ``weights`` for its texture detector among them) is logged and leaves the families
    registered."""
    try:
        with mlflow.start_run(run_name="guard"):
            mlflow.set_tags({"family": "guard", "stage": "guard"})
            size = ood_guard.GUARD_IMAGE_SIZE
            paths = [*data.train_files.paths, *calibration_slice.files.paths]
            guard, validation = ood_guard.fit_guard_cv(
                paths,
                np.concatenate([data.train(size), calibration_slice.pixels(size)]),
                np.concatenate([data.train_groups, calibration_slice.groups]),
                np.concatenate([data.train_labels, calibration_slice.labels]),
                seed=options.seed,
                weights=weights,
            )
            figures = {key: value for key, value in guard.metadata().items() if isinstance(value, int | float)}
            mlflow.log_metrics({f"guard_{key}": float(value) for key, value in figures.items()})
            mlflow.log_metric("guard_fit_seconds", validation.fit_seconds)
            if not options.register_models:
                return None
            description = (
                f"guard: refuses {guard.validation['false_refusal_cv']:.2%} of real slices (cross-validated over "
                f"{guard.threshold_images}), flags {guard.validation['flag_rate_cv']:.2%}"
            )
            # What the gate compares guards on: their rates were measured over the same images.
            images = hashlib.sha256("\n".join(sorted(Path(p).name for p in paths)).encode()).hexdigest()
            return register_guard_file(ood_guard.guard_onnx(guard), description, {}, images)
    except Exception:
        logger.exception("the OOD guard could not be fitted or registered")
        return None


def _promote(
    rows: list[dict[str, Any]], ensemble: dict[str, Any] | None, guard: Candidate | None, split: str,
    options: TrainingOptions, report: ProgressCallback,
) -> None:  # fmt: skip
    """The promotion gate over everything the run registered, once all of it is registered."""
    families = [
        Candidate(registered_name(row["family"]), str(row["version"]), standing_on_test_split(split, row["metrics"]))
        for row in rows
        if row.get("version")
    ]
    candidates = list(families)
    if ensemble is not None and ensemble.get("version"):
        standing = standing_on_test_split(split, ensemble["metrics"])
        candidates.append(Candidate(registered_name(ENSEMBLE_MODEL), str(ensemble["version"]), standing))
    if guard is not None:
        candidates.append(guard)
    for outcome in registration.promote_run(candidates, options.promote, best_of=families):
        report(outcome)


def run_training(
    options: TrainingOptions, settings: TrainingSettings, report: ProgressCallback | None = None
) -> list[FamilyProgress]:
    """Train, evaluate, convert and register every family asked for (a failing family does not stop the rest),
    then the ensemble and, when asked, the guard; champion moves only through the promotion gate."""
    callback = report or (lambda progress: None)
    tracking.use_tracking(settings.tracking_uri, settings.experiment)
    started = time.perf_counter()
    # Finds the images first: a missing or empty folder fails before anything trains.
    data = prepare_data(settings.data_folder(options.data_dir), options.test_fraction, options.seed, settings.cache_dir)
    # Carved before anything trains: the search and the refit never see the calibration slice.
    data, calibration_slice = carve_calibration_slice(data, options.seed)
    results: list[FamilyProgress] = []
    rows: list[dict[str, Any]] = []
    for family_name in options.families:
        progress = FamilyProgress(family=family_name)
        try:
            rows.append(train_family(family_name, data, options, settings, callback, progress, calibration_slice))
        except Exception as exc:  # one family's failure is reported, the others still train
            logger.exception("training %s failed", family_name)
            progress.state, progress.error = FamilyState.FAILED, f"{type(exc).__name__}: {exc}"
            callback(progress)
        results.append(progress)
    ensemble = _ensemble(rows, calibration_slice, data, options)
    guard = (
        _fit_guard(data, calibration_slice, options, settings.mobilenetv2_weights)
        if rows and options.fit_guard
        else None
    )
    if rows and options.register_models:
        _promote(rows, ensemble, guard, data.info["test_files_sha256"], options, callback)
    if rows and len(data.test_labels):  # a refit has no test split: its recipe's report stands
        write_comparison(rows, data.info, options, time.perf_counter() - started, settings.report_dir, ensemble)
    return results
