"""Test-set metrics: accuracy, macro and per-class precision/recall/F1, ROC-AUC, confusion matrix; and the
evaluation step of a family's run, which logs them with their plots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlflow
import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from services.training import plots, tracking
from shared.core.contract import CLASS_NAMES

if TYPE_CHECKING:  # the families use evaluate() themselves
    from services.training.families import FittedModel, ModelFamily


@dataclass
class Evaluation:
    metrics: dict[str, float]
    confusion: np.ndarray
    report: str


def evaluate(labels: np.ndarray, probabilities: np.ndarray, prefix: str = "test_") -> Evaluation:
    predicted = probabilities.argmax(axis=1)
    classes = list(range(len(CLASS_NAMES)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, labels=classes, average="macro", zero_division=0
    )
    metrics = {
        f"{prefix}accuracy": float(accuracy_score(labels, predicted)),
        f"{prefix}precision_macro": float(precision),
        f"{prefix}recall_macro": float(recall),
        f"{prefix}f1_macro": float(f1),
    }
    per_p, per_r, per_f, _ = precision_recall_fscore_support(
        labels, predicted, labels=classes, average=None, zero_division=0
    )
    for i, name in enumerate(CLASS_NAMES):
        metrics[f"{prefix}precision_{name}"] = float(per_p[i])
        metrics[f"{prefix}recall_{name}"] = float(per_r[i])
        metrics[f"{prefix}f1_{name}"] = float(per_f[i])
    if len(np.unique(labels)) == len(classes):
        metrics[f"{prefix}roc_auc_ovr_macro"] = float(
            roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=classes)
        )
    report = classification_report(
        labels, predicted, labels=classes, target_names=list(CLASS_NAMES), digits=4, zero_division=0
    )
    return Evaluation(metrics, confusion_matrix(labels, predicted, labels=classes), str(report))


def _log_evaluation(family_name: str, evaluation: Evaluation, labels: np.ndarray, probabilities: np.ndarray) -> None:
    """The test split's classification report, confusion matrix and ROC curves, as run artifacts."""
    mlflow.log_text(evaluation.report, "evaluation/classification_report.txt")
    header = "\t".join(CLASS_NAMES)
    rows = "\n".join("\t".join(map(str, row)) for row in evaluation.confusion)
    mlflow.log_text(f"{header}\n{rows}\n", "evaluation/confusion_matrix.tsv")
    tracking.log_bytes(plots.confusion_png(evaluation.confusion, family_name), "evaluation/confusion_matrix.png")
    tracking.log_bytes(plots.roc_png(labels, probabilities, family_name), "evaluation/roc_curves.png")


def evaluate_and_log(
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
