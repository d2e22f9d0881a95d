"""One training run: data folder -> cached arrays -> split -> per family: search (3-fold CV),
refit, test evaluation, ONNX, parity check, MLflow parent run, MLflow Model (onnx flavor) and
registered version -> aliases and the comparison report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import mlflow
import numpy as np
from mlflow.models.model import ModelInfo

from services.training import ood_guard, plots, registration, tracking
from services.training.balancing import apply_balancing
from services.training.calibration import (
    Calibration,
    CalibrationSlice,
    apply_temperature,
    calibrated_bytes,
    calibration_metrics,
    carve_calibration_slice,
    fit_temperature,
    set_metrics,
)
from services.training.config import TrainingSettings
from services.training.data import PreparedData, prepare_data
from services.training.ensemble import build_ensemble
from services.training.evaluation import Evaluation, evaluate
from services.training.families import FittedModel, ModelFamily, get_family
from services.training.grids import candidates, search_overrides
from services.training.guard_registration import register_guard_file
from services.training.lime_overlays import log_lime_overlays, onnx_predict_fn
from services.training.onnx_export import ParityReport, check_parity, embed_contract, exported_classifier
from services.training.options import FamilyProgress, FamilyState, Registration, TrainingOptions
from services.training.recipe import champion_ensemble_weights, champion_recipe
from services.training.registration import Candidate, LoggedFile, standing_on_test_split
from services.training.report import write_comparison
from services.training.search import NOT_MODEL_PARAMS, TrialOutcome, best_outcome, run_search
from services.training.splits import split_train_test
from shared.core.conformal import fit_conformal
from shared.core.contract import CLASS_NAMES
from shared.core.onnx_classifier import OnnxClassifier
from shared.kit.schemas import ENSEMBLE_MODEL, RECIPE_RUN_TAG, RECIPE_VERSION_TAG, registered_name

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[FamilyProgress | Registration], None]


def _search(
    family_name: str,
    family: ModelFamily,
    data: PreparedData,
    options: TrainingOptions,
    settings: TrainingSettings,
    base: dict[str, Any],
) -> tuple[dict[str, Any], list[TrialOutcome]]:
    """Grid search with 3-fold CV; returns the winning parameters (at full refit cost) and every outcome."""
    overrides = search_overrides(family, options.search)
    grid = candidates(family, options.search, options.max_trials)
    trials = [{**base, **overrides, **choice} for choice in grid]
    outcomes = run_search(
        family_name,
        trials,
        lambda params: family.search_inputs(data.train(int(params["image_size"])), params),
        data.train_labels,
        data.train_groups,
        settings,
        options.seed,
        backend=options.backend,
        scheduler=options.scheduler,
        jobs=options.jobs,
    )
    winner = best_outcome(outcomes)
    # The winner's own grid choice: sub-grids of a list-of-dicts grid may set different keys.
    chosen = next(choice for choice, outcome in zip(grid, outcomes, strict=True) if outcome is winner)
    return {**base, **chosen}, outcomes


def _search_and_log(
    family_name: str,
    family: ModelFamily,
    data: PreparedData,
    options: TrainingOptions,
    settings: TrainingSettings,
    base: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, float], float]:
    """Search, log every trial as a child run; returns the parameters to refit with, the winner's CV
    metrics and the search's seconds."""
    started = time.perf_counter()
    params, outcomes = _search(family_name, family, data, options, settings, base)
    params.update(_read_by(family, options.overrides))
    search_seconds = time.perf_counter() - started
    _log_trials(family_name, outcomes)
    cv_metrics = {f"cv_{key}": value for key, value in best_outcome(outcomes).mean_metrics.items()}
    mlflow.log_metrics({**cv_metrics, "search_seconds": search_seconds, "search_trials": len(outcomes)})
    return params, cv_metrics, search_seconds


def _log_curves(history: dict[str, list[float]]) -> None:
    for metric, values in history.items():
        for epoch, value in enumerate(values):
            mlflow.log_metric(f"curve_{metric}", value, step=epoch)


def _log_trials(family_name: str, outcomes: list[TrialOutcome]) -> None:
    for index, outcome in enumerate(outcomes):
        with mlflow.start_run(run_name=f"{family_name}-trial-{index:03d}", nested=True):
            tags = {"family": family_name, "stage": "trial", "failed": str(outcome.error is not None)}
            mlflow.set_tags({**tags, "worker": outcome.worker})
            tracking.log_params(outcome.params)
            metrics = {"trial_seconds": outcome.seconds, **outcome.mean_metrics}
            for fold, fold_metrics in enumerate(outcome.fold_metrics):
                metrics.update({f"fold{fold}_{key}": value for key, value in fold_metrics.items()})
            mlflow.log_metrics(metrics)
            _log_curves(outcome.curves)
            if outcome.error:
                mlflow.set_tag("error", outcome.error[:500])


def _refit(family: ModelFamily, data: PreparedData, params: dict[str, Any], seed: int) -> tuple[FittedModel, float]:
    """Fit on the whole training part, less a held-out slice only if the family watches one."""
    size = int(params["image_size"])
    model_params = {key: value for key, value in params.items() if key not in NOT_MODEL_PARAMS}
    pixels, labels = data.train(size), data.train_labels
    validation = None
    if family.holds_out(model_params):  # a duplicate-group-aware 10% slice; otherwise every image trains
        fit_idx, stop_idx = split_train_test(labels, data.train_groups, 0.1, seed + 1)
        validation = (pixels[stop_idx], labels[stop_idx])
        pixels, labels = pixels[fit_idx], labels[fit_idx]
    held_out = 0 if validation is None else len(validation[1])
    mlflow.log_metrics({"refit_images": len(labels), "refit_held_out_images": held_out})
    pixels, labels, model_params = apply_balancing(pixels, labels, model_params, seed)
    started = time.perf_counter()
    fitted = family.fit(pixels, labels, model_params, family.contract(size, params.get("scaling")), validation)
    return fitted, time.perf_counter() - started


def _log_evaluation(family_name: str, evaluation: Evaluation, labels: np.ndarray, probabilities: np.ndarray) -> None:
    """The test split's classification report, confusion matrix and ROC curves, as run artifacts."""
    mlflow.log_text(evaluation.report, "evaluation/classification_report.txt")
    header = "\t".join(CLASS_NAMES)
    rows = "\n".join("\t".join(map(str, row)) for row in evaluation.confusion)
    mlflow.log_text(f"{header}\n{rows}\n", "evaluation/confusion_matrix.tsv")
    tracking.log_bytes(plots.confusion_png(evaluation.confusion, family_name), "evaluation/confusion_matrix.png")
    tracking.log_bytes(plots.roc_png(labels, probabilities, family_name), "evaluation/roc_curves.png")


def _evaluate(
    family_name: str, family: ModelFamily, fitted: FittedModel, test_pixels: np.ndarray, test_labels: np.ndarray
) -> tuple[np.ndarray, Evaluation | None, dict[str, float]]:
    """Test-split probabilities, their evaluation and the family's stage figures, all logged to the run.
    A refit without a test split gets the probabilities of the check set only (for the ONNX parity checks)."""
    native = family.predict_native(fitted, test_pixels)
    if len(test_labels) == 0:
        return native, None, {}
    evaluation = evaluate(test_labels, native)
    stage_metrics = family.stage_metrics(fitted, test_pixels, test_labels)
    mlflow.log_metrics(stage_metrics)
    _log_evaluation(family_name, evaluation, test_labels, native)
    return native, evaluation, stage_metrics


def _progress_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """What a run's progress shows: every figure but the per-class ones."""
    per_class = ("test_precision_", "test_recall_", "test_f1_")
    return {k: v for k, v in metrics.items() if not k.startswith(per_class) or k.endswith("macro")}


def _require_parity(family_name: str, parity: ParityReport) -> None:
    if not parity.passed:
        raise RuntimeError(
            f"ONNX parity check failed for {family_name}: max abs diff {parity.max_abs_diff:.2e}, "
            f"arg-max agreement {parity.argmax_agreement:.4f}; the model was not registered"
        )


def _onnx_latency_ms(classifier: OnnxClassifier, tensor: np.ndarray, images: int = 20) -> float:
    """Single-image latency, as a client calling the service sees it (batch size 1, warm session)."""
    classifier.predict(tensor[:1])
    count = min(images, len(tensor))
    started = time.perf_counter()
    for i in range(count):
        classifier.predict(tensor[i : i + 1])
    return 1000 * (time.perf_counter() - started) / max(count, 1)


def _export(
    family_name: str, family: ModelFamily, fitted: FittedModel, test_pixels: np.ndarray, native: np.ndarray, run_id: str
) -> tuple[bytes, ParityReport, dict[str, float]]:
    """Convert to ONNX with the contract embedded, log the file, and compare it with the native model.

    The run keeps this plain copy (``onnx/model.onnx``) even when the parity check fails, to look into why.
    """
    provenance = {"family": family_name, "mlflow_run_id": run_id}
    model_bytes = embed_contract(family.to_onnx(fitted), fitted.contract, provenance)
    tracking.log_onnx(model_bytes)
    tensor = family.tensor(test_pixels, fitted.contract)
    classifier = exported_classifier(model_bytes)
    parity = check_parity(native, classifier.predict(tensor, 64))
    metrics = {
        "onnx_ms_per_image": _onnx_latency_ms(classifier, tensor),
        "onnx_bytes": float(len(model_bytes)),
        "parity_max_abs_diff": parity.max_abs_diff,
        "parity_argmax_agreement": parity.argmax_agreement,
    }
    return model_bytes, parity, metrics


def _calibrate(
    family: ModelFamily, fitted: FittedModel, calibration_slice: CalibrationSlice, size: int
) -> tuple[Calibration, np.ndarray]:
    """The temperature fitted on the calibration slice, the prediction sets' thresholds fitted on its calibrated
    probabilities (shared.core.conformal), and those probabilities."""
    if len(calibration_slice.labels) == 0:  # no slice could be carved: the model stays as trained
        mlflow.log_metrics({"calibration_temperature": 1.0, "calibration_images": 0})
        return Calibration(1.0), np.empty((0, len(CLASS_NAMES)))
    native = family.predict_native(fitted, calibration_slice.pixels(size))
    temperature = fit_temperature(native, calibration_slice.labels)
    calibrated = apply_temperature(native, temperature)
    conformal = fit_conformal(calibrated, calibration_slice.labels)
    calibration = Calibration(temperature, calibration_images=len(calibration_slice.labels), conformal=conformal)
    mlflow.log_metrics({"calibration_temperature": temperature, "calibration_images": len(calibration_slice.labels)})
    return calibration, calibrated


def _calibrated_export(
    family_name: str, family: ModelFamily, fitted: FittedModel, model_bytes: bytes, calibration: Calibration,
    test_pixels: np.ndarray, native: np.ndarray, test_labels: np.ndarray,
) -> tuple[bytes, np.ndarray, dict[str, float]]:  # fmt: skip
    """Append the calibration to the parity-checked graph and check the result against the same calibration
    applied to the native probabilities; test-split ECE and Brier before and after, reliability diagram."""
    calibrated = calibrated_bytes(model_bytes, calibration)
    expected = apply_temperature(native, calibration.temperature)
    served = exported_classifier(calibrated).predict(family.tensor(test_pixels, fitted.contract), 64)
    parity = check_parity(expected, served)
    _require_parity(f"{family_name} (calibrated)", parity)
    # The run's plain copy becomes the file served; the graph as converted stays beside it, to look into.
    tracking.log_onnx(calibrated)
    tracking.log_bytes(model_bytes, "calibration/uncalibrated_model.onnx")
    if len(test_labels) == 0:  # a refit: the figures are the recipe's, on its test split
        return calibrated, expected, {"calibrated_parity_max_abs_diff": parity.max_abs_diff, "reliability_png": b""}
    before = calibration_metrics(native, test_labels)
    sets = {} if calibration.conformal is None else set_metrics(expected, test_labels, calibration.conformal)
    metrics = {
        **calibration_metrics(expected, test_labels),
        **sets,
        **{f"{key}_uncalibrated": value for key, value in before.items()},
        "calibrated_parity_max_abs_diff": parity.max_abs_diff,
    }
    png = plots.reliability_png(test_labels, {"uncalibrated": native, "calibrated": expected}, family_name)
    tracking.log_bytes(png, "evaluation/reliability.png")
    return calibrated, expected, {**metrics, "reliability_png": png}


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


def _base_params(family: ModelFamily, options: TrainingOptions) -> dict[str, Any]:
    """The family's defaults with what the run asks for on top."""
    base = {**family.default_params(), "balancing": "none", "seed": options.seed}
    if options.image_size is not None:
        base["image_size"] = options.image_size
    if options.epochs is not None and "epochs" in base:
        base["epochs"] = options.epochs
    return {**base, **_read_by(family, options.overrides)}


def _read_by(family: ModelFamily, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters this family reads: a run's ``--set`` keys go to every family that reads them (a forest's
    n_estimators is no parameter of the networks), and a recipe logged with a stray key does not pass it on."""
    accepted = family.accepted_params()
    return {key: value for key, value in params.items() if key in accepted}


def _log_data(data: PreparedData) -> None:
    mlflow.log_text("\n".join(data.test_file_names()), "split/test_files.txt")
    mlflow.log_params({"test_files_sha256": data.info["test_files_sha256"], "data_dir": data.info["data_dir"]})
    mlflow.log_metrics({k: float(v) for k, v in data.info.items() if isinstance(v, int | float)})


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
    params, cv_metrics, search_seconds = _base_params(family, options), {}, 0.0
    recipe_tags: dict[str, str] = {}
    with mlflow.start_run(run_name=family_name) as run:
        progress.mlflow_run_id = run.info.run_id
        mlflow.set_tags({"family": family_name, "stage": "family", "search": options.search})
        _log_data(data)
        if options.refit_champions:
            step("reading the champion's recipe")
            recipe = champion_recipe(family_name)
            params = {**params, **_read_by(family, {**recipe.params, **options.overrides}), "seed": options.seed}
            recipe_tags = {RECIPE_VERSION_TAG: recipe.version, RECIPE_RUN_TAG: recipe.run_id}
            mlflow.set_tags(recipe_tags)
        elif options.search != "none":
            step("searching (3-fold CV)")
            params, cv_metrics, search_seconds = _search_and_log(family_name, family, data, options, settings, params)
        tracking.log_params(params)

        step("refitting on all training data")
        fitted, train_seconds = _refit(family, data, params, options.seed)
        _log_curves(fitted.history)

        step("evaluating on the test split")
        size = int(params["image_size"])
        test_pixels, test_labels = _check_set(data, calibration_slice, size)
        native, evaluation, stage_metrics = _evaluate(family_name, family, fitted, test_pixels, data.test_labels)

        step("calibrating")
        calibration, calibration_probabilities = _calibrate(family, fitted, calibration_slice, size)

        step("converting to ONNX")
        model_bytes, parity, export_metrics = _export(family_name, family, fitted, test_pixels, native, run.info.run_id)
        test_metrics = evaluation.metrics if evaluation is not None else {}
        metrics = {**test_metrics, "train_seconds": train_seconds, **export_metrics}
        mlflow.log_metrics(metrics)
        progress.metrics = _progress_metrics({**metrics, **cv_metrics})
        # Parity is checked on the graph as converted (against the native model), then again once calibrated.
        _require_parity(family_name, parity)
        model_bytes, test_probabilities, calibrated_metrics = _calibrated_export(
            family_name, family, fitted, model_bytes, calibration, test_pixels, native, data.test_labels
        )
        reliability_png = calibrated_metrics.pop("reliability_png")
        mlflow.log_metrics(calibrated_metrics)
        metrics.update(calibrated_metrics, calibration_temperature=calibration.temperature)
        progress.metrics = _progress_metrics({**metrics, **cv_metrics})
        # What MLflow users load and serve (pyfunc, `mlflow models serve`): the very file that passed parity.
        logged_model = tracking.log_onnx_model(model_bytes, name=family_name)
        # LIME overlays of a few test images per class, from the ONNX model exactly as it will be served.
        log_lime_overlays(onnx_predict_fn(model_bytes), test_pixels, test_labels, family_name, per_class=2)
        if options.register_models:
            step("registering")
            progress.registered_name = registered_name(family_name)
            accuracy = test_metrics.get("test_accuracy")
            progress.registered_version = _register(
                family_name, logged_model, model_bytes, data, params, accuracy, recipe_tags
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
    the calibration slice (for the parity checks and LIME overlays only: no figure is reported on it)."""
    if len(data.test_labels):
        return data.test(size), data.test_labels
    return calibration_slice.pixels(size), calibration_slice.labels


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


def _fit_guard(data: PreparedData, calibration_slice: CalibrationSlice, options: TrainingOptions) -> Candidate | None:
    """The guard against non-MRI input (ood_guard), fitted on the training images, its threshold from the
    calibration slice, registered (not promoted); a failure is logged and leaves the families registered."""
    try:
        with mlflow.start_run(run_name="guard"):
            mlflow.set_tags({"family": "guard", "stage": "guard"})
            size = ood_guard.GUARD_IMAGE_SIZE
            # The cached gray thumbnails, plus each file's colour thumbnail (decoded again: the cache is gray).
            fit = ood_guard.files_input(data.train_files.paths, data.train(size))
            held_out = ood_guard.files_input(calibration_slice.files.paths, calibration_slice.pixels(size))
            guard = ood_guard.fit_guard(fit, held_out, seed=options.seed)
            mlflow.log_metrics(
                {"guard_threshold": guard.threshold, "guard_fitted_images": guard.fitted_images,
                 "guard_threshold_images": guard.threshold_images}
            )  # fmt: skip
            if not options.register_models:
                return None
            description = f"guard: threshold {guard.threshold:.3f} (quantile {guard.quantile} of held-out MRI images)"
            return register_guard_file(ood_guard.guard_onnx(guard), description, {}, data.info["pool_fingerprint"])
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
    guard = _fit_guard(data, calibration_slice, options) if rows and options.fit_guard else None
    if rows and options.register_models:
        _promote(rows, ensemble, guard, data.info["test_files_sha256"], options, callback)
    if rows and len(data.test_labels):  # a refit has no test split: its recipe's report stands
        write_comparison(rows, data.info, options, time.perf_counter() - started, settings.report_dir, ensemble)
    return results
