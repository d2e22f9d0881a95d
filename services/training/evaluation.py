"""Test-set metrics: accuracy, macro and per-class precision/recall/F1, ROC-AUC, confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from shared.core.contract import CLASS_NAMES


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
