"""The ensemble: the calibrated probabilities of a run's families, combined by weights chosen on the calibration
slice (``fit_weights``), evaluated on the test split and registered in MLflow as ``brain-tumor-ensemble``.

The ensemble has no ONNX graph of its own: its members take different image sizes and scalings, and resizing
inside a graph would not match the members' own preprocessing. Its registered version holds a JSON spec
(members {family: version} and weights, also as version tags); inference resolves it to the members' own
classifiers and reuses their sessions (``services/inference/ensemble.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import mlflow
import numpy as np

from services.training import plots, tracking
from services.training.calibration import calibration_metrics, fit_temperature, set_metrics
from services.training.ensemble_registration import log_spec, register_spec
from services.training.evaluation import evaluate
from shared.core.conformal import fit_conformal
from shared.core.ensemble_spec import EnsembleSpec, combine
from shared.kit.schemas import (
    ENSEMBLE_MODEL,
    RECIPE_RUN_TAG,
)

logger = logging.getLogger(__name__)

# A member whose accuracy on the calibration slice is more than this below the best member's is left out.
MEMBER_MARGIN = 0.05


def ensemble_temperature(member_probabilities: list[np.ndarray], weights: np.ndarray, labels: np.ndarray) -> float:
    """The ensemble's own temperature on its weighted mean, fitted on the calibration slice as a family's is (a
    refit's anew): a mean of calibrated members is not calibrated itself; an equal mean is less sharp than each
    (cross-validated ECE 0.038 without it, 0.009 with it: docs/calibration.md)."""
    return fit_temperature(combine(member_probabilities, weights), labels)


def fit_weights(member_probabilities: list[np.ndarray], labels: np.ndarray) -> tuple[np.ndarray, str]:
    """Equal weights over the members whose accuracy on the calibration slice is within ``MEMBER_MARGIN`` of the
    best member's, 0 for the others. Returns the weights and how they were chosen.

    Not weights fitted to the slice (minimising its NLL): on a slice of a few hundred images they swung from fold
    to fold (CNN 0.90, 0.50, 0.16) and cost 0.6 points of cross-validated accuracy against this rule; equal weights
    over the strong members lose nothing to the fit and never trust one member on a few hundred images
    (docs/calibration.md, "The ensemble")."""
    count = len(member_probabilities)
    if count < 2 or len(labels) == 0:
        return np.full(count, 1.0 / max(count, 1)), "equal"
    accuracies = np.array([float(np.mean(p.argmax(axis=1) == labels)) for p in member_probabilities])
    kept = accuracies >= accuracies.max() - MEMBER_MARGIN
    weights = kept / kept.sum()
    if kept.all():
        return weights, "equal"
    return weights, (
        f"equal over the members within {MEMBER_MARGIN:.0%} of the best calibration accuracy "
        f"({', '.join(f'{a:.3f}' for a in accuracies)})"
    )


def recipe_applies(recipe: tuple[dict[str, float], str] | None, families: set[str]) -> bool:
    """Whether a refit keeps the ensemble champion's weights: its members are exactly the refit's families."""
    return recipe is not None and set(recipe[0]) == families


def _recipe_weights(members: list[dict[str, Any]], recipe: tuple[dict[str, float], str] | None) -> np.ndarray | None:
    """A refit's weights: the ensemble champion's, when its members are exactly the refit's families."""
    if recipe is None or not recipe_applies(recipe, {row["family"] for row in members}):
        return None
    return np.array([recipe[0][row["family"]] for row in members])


def build_ensemble(
    rows: list[dict[str, Any]], calibration_labels: np.ndarray, test_labels: np.ndarray, split_sha256: str,
    register: bool, recipe: tuple[dict[str, float], str] | None = None,
) -> dict[str, Any] | None:  # fmt: skip
    """Fit the weights, evaluate on the test split, log an ``ensemble`` run and register its version.

    ``rows`` are the families' report rows carrying their calibrated probabilities on the calibration slice
    and the test split. ``recipe`` (a refit's): the ensemble champion's weights and run, kept instead of fitting
    new ones. Returns the ensemble's report row, or None with fewer than two registered members.
    """
    members = [row for row in rows if row.get("version") or not register]
    if len(members) < 2:
        logger.info("no ensemble: %d family trained", len(members))
        return None
    started = time.perf_counter()
    kept = _recipe_weights(members, recipe)
    recipe_tags = {} if kept is None or recipe is None else {RECIPE_RUN_TAG: recipe[1]}
    members_calibration = [row["calibration_probabilities"] for row in members]
    if kept is not None:
        weights, how = kept, "the ensemble champion's weights (a refit)"
    else:
        weights, how = fit_weights(members_calibration, calibration_labels)
    temperature = ensemble_temperature(members_calibration, weights, calibration_labels)
    calibration_probabilities = combine(members_calibration, weights, temperature)
    metrics: dict[str, float] = {}
    evaluation = None
    if len(test_labels):  # a refit has no test split
        test_probabilities = combine([row["test_probabilities"] for row in members], weights, temperature)
        evaluation = evaluate(test_labels, test_probabilities)
        metrics = {**evaluation.metrics, **calibration_metrics(test_probabilities, test_labels)}
    conformal = fit_conformal(calibration_probabilities, calibration_labels)
    if evaluation is not None:
        metrics.update(set_metrics(test_probabilities, test_labels, conformal))
    spec = {
        "members": {row["family"]: str(row.get("version") or "") for row in members},
        "weights": {row["family"]: round(float(w), 6) for row, w in zip(members, weights, strict=True)},
        "weighting": how,
        "temperature": temperature,
        "test_files_sha256": split_sha256,
        "conformal": conformal.model_dump(),
    }
    with mlflow.start_run(run_name=ENSEMBLE_MODEL) as run:
        mlflow.set_tags({"family": ENSEMBLE_MODEL, "stage": "ensemble", "weighting": how})
        mlflow.log_params({f"weight_{family}": weight for family, weight in spec["weights"].items()})
        mlflow.log_param("temperature", temperature)
        mlflow.set_tags(recipe_tags)
        mlflow.log_metrics(metrics)
        served = EnsembleSpec(spec["members"], spec["weights"], conformal, temperature)
        spec_bytes = log_spec(served, {"weighting": how, "test_files_sha256": split_sha256})
        if evaluation is not None:
            mlflow.log_text(evaluation.report, "evaluation/classification_report.txt")
            confusion = plots.confusion_png(evaluation.confusion, ENSEMBLE_MODEL)
            tracking.log_bytes(confusion, "evaluation/confusion_matrix.png")
            png = plots.reliability_png(test_labels, {"ensemble": test_probabilities}, ENSEMBLE_MODEL)
            tracking.log_bytes(png, "evaluation/reliability.png")
            description = f"test accuracy {metrics['test_accuracy']:.4f}"
        else:
            description = "refit without a test split"
        version = (
            register_spec(spec_bytes, served, split_sha256, run.info.run_id, description, recipe_tags)
            if register
            else None
        )
    return {
        "family": ENSEMBLE_MODEL, "version": version, "run_id": run.info.run_id, "params": spec,
        "metrics": metrics, "cv": {}, "stages": {}, "search_seconds": 0.0,
        "train_seconds": time.perf_counter() - started,
    }  # fmt: skip
