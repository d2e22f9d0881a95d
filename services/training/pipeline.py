"""One training run: data folder -> cached arrays -> split -> per family fit, evaluate, ONNX,
parity check, MLflow run and registered version."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np

from services.training import tracking
from services.training.config import TrainingSettings
from services.training.duplicates import duplicate_groups, group_summary
from services.training.evaluation import evaluate
from services.training.families import get_family
from services.training.onnx_export import check_parity, embed_contract, onnx_probabilities
from services.training.options import FamilyProgress, FamilyState, TrainingOptions
from services.training.splits import split_train_test
from shared.contract import CLASS_NAMES
from shared.dataset import discover, load_arrays
from shared.schemas import registered_name

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[FamilyProgress], None]


@dataclass
class PreparedData:
    """Decoded images with their split; test comes from Testing/ when the folder has one."""

    train_pixels: np.ndarray
    train_labels: np.ndarray
    test_pixels: np.ndarray
    test_labels: np.ndarray
    test_files: list[str]
    info: dict[str, Any]


def prepare_data(options: TrainingOptions, settings: TrainingSettings) -> PreparedData:
    layout = discover(options.data_dir or settings.data_dir)
    started = time.perf_counter()
    pixels = load_arrays(layout.train, options.image_size, settings.cache_dir)
    groups = duplicate_groups(pixels)
    info: dict[str, Any] = {
        "data_dir": str(layout.root),
        "image_size": options.image_size,
        "train_pool_images": len(layout.train),
        **group_summary(groups),
    }
    if layout.test is not None:
        test_pixels = load_arrays(layout.test, options.image_size, settings.cache_dir)
        train_idx = np.arange(len(layout.train))
        data = PreparedData(
            pixels,
            layout.train.labels,
            test_pixels,
            layout.test.labels,
            [str(p) for p in layout.test.paths],
            {**info, "test_source": "Testing/ folder"},
        )
    else:
        train_idx, test_idx = split_train_test(layout.train.labels, groups, options.test_fraction, options.seed)
        data = PreparedData(
            pixels[train_idx],
            layout.train.labels[train_idx],
            pixels[test_idx],
            layout.train.labels[test_idx],
            [str(layout.train.paths[i].relative_to(layout.root)) for i in test_idx],
            {
                **info,
                "test_source": f"stratified group split {options.test_fraction:.0%}, seed {options.seed}",
            },
        )
    data.info.update(
        train_images=len(data.train_labels),
        test_images=len(data.test_labels),
        test_files_sha256=hashlib.sha256("\n".join(data.test_files).encode()).hexdigest(),
        prepare_seconds=round(time.perf_counter() - started, 2),
    )
    data.info["train_groups"] = groups[train_idx] if layout.test is None else groups
    return data


def validation_split(labels: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A group-aware 10% slice of the training data for early stopping of Keras models."""
    return split_train_test(labels, groups, 0.1, seed + 1)


def train_family(
    family_name: str,
    data: PreparedData,
    options: TrainingOptions,
    settings: TrainingSettings,
    report: ProgressCallback,
    progress: FamilyProgress,
) -> FamilyProgress:
    progress.state, progress.step = FamilyState.RUNNING, "starting"
    report(progress)
    family = get_family(family_name, settings.mobilenetv2_weights)
    contract = family.contract(options.image_size)
    params = {**family.default_params(), "seed": options.seed}
    if options.epochs is not None and "epochs" in params:
        params["epochs"] = options.epochs

    with mlflow.start_run(run_name=f"{family_name}-final") as run:
        progress.mlflow_run_id = run.info.run_id
        mlflow.set_tags({"family": family_name, "stage": "final"})
        tracking.log_params({**params, "image_size": options.image_size, "search": options.search})
        tracking.log_text("\n".join(data.test_files), "split/test_files.txt")
        mlflow.log_params({"test_files_sha256": data.info["test_files_sha256"]})
        mlflow.log_metrics({k: float(v) for k, v in data.info.items() if isinstance(v, int | float)})

        progress.step = "fitting"
        report(progress)
        started = time.perf_counter()
        validation = None
        train_pixels, train_labels = data.train_pixels, data.train_labels
        if family_name != "rf":
            fit_idx, val_idx = validation_split(train_labels, data.info["train_groups"], options.seed)
            validation = (train_pixels[val_idx], train_labels[val_idx])
            train_pixels, train_labels = train_pixels[fit_idx], train_labels[fit_idx]
        fitted = family.fit(train_pixels, train_labels, params, contract, validation)
        train_seconds = time.perf_counter() - started
        for metric, values in fitted.history.items():
            for epoch, value in enumerate(values):
                mlflow.log_metric(f"curve_{metric}", value, step=epoch)

        progress.step = "evaluating"
        report(progress)
        started = time.perf_counter()
        native = family.predict_native(fitted, data.test_pixels)
        per_image_ms = 1000 * (time.perf_counter() - started) / max(len(data.test_pixels), 1)
        evaluation = evaluate(data.test_labels, native)
        tracking.log_text(evaluation.report, "evaluation/classification_report.txt")
        tracking.log_text(
            "\t".join(CLASS_NAMES) + "\n" + "\n".join("\t".join(map(str, row)) for row in evaluation.confusion),
            "evaluation/confusion_matrix.tsv",
        )

        progress.step = "converting to ONNX"
        report(progress)
        proto = family.to_onnx(fitted)
        model_bytes = embed_contract(proto, contract, {"family": family_name, "mlflow_run_id": run.info.run_id})
        tracking.log_onnx(model_bytes)
        converted = onnx_probabilities(model_bytes, family.tensor(data.test_pixels, contract))
        parity = check_parity(native, converted)
        metrics = {
            **evaluation.metrics,
            "train_seconds": train_seconds,
            "native_ms_per_image": per_image_ms,
            "onnx_bytes": float(len(model_bytes)),
            "parity_max_abs_diff": parity.max_abs_diff,
            "parity_argmax_agreement": parity.argmax_agreement,
        }
        mlflow.log_metrics(metrics)
        progress.metrics = {
            k: v
            for k, v in metrics.items()
            if not k.startswith(("test_precision_", "test_recall_", "test_f1_")) or k.endswith("macro")
        }
        if not parity.passed:
            raise RuntimeError(
                f"ONNX parity check failed for {family_name}: max abs diff {parity.max_abs_diff:.2e}, "
                f"arg-max agreement {parity.argmax_agreement:.4f}; the model was not registered"
            )
        if options.register_models:
            progress.step = "registering"
            report(progress)
            name = registered_name(family_name)
            progress.registered_name = name
            progress.registered_version = tracking.register_version(
                name,
                run.info.run_id,
                description=f"{family_name}: test accuracy {evaluation.metrics['test_accuracy']:.4f}",
                tags={"family": family_name, "image_size": str(options.image_size)},
            )
    progress.state, progress.step = FamilyState.DONE, "done"
    report(progress)
    return progress


def run_training(
    options: TrainingOptions, settings: TrainingSettings, report: ProgressCallback | None = None
) -> list[FamilyProgress]:
    """Train, evaluate, convert and register every family asked for. A failing family does not stop the rest."""
    callback = report or (lambda progress: None)
    discover(options.data_dir or settings.data_dir)  # a bad folder fails before anything else
    tracking.use_tracking(settings.tracking_uri, settings.experiment)
    data = prepare_data(options, settings)
    results = []
    for family_name in options.families:
        progress = FamilyProgress(family=family_name)  # type: ignore[arg-type]
        try:
            train_family(family_name, data, options, settings, callback, progress)
        except Exception as exc:  # one family's failure is reported, the others still train
            logger.exception("training %s failed", family_name)
            progress.state, progress.error = FamilyState.FAILED, f"{type(exc).__name__}: {exc}"
            callback(progress)
        results.append(progress)
    return results
