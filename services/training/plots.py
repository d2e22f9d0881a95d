"""Evaluation figures as PNG bytes: confusion matrix, ROC curves, the families side by side."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402

from shared.core.contract import CLASS_NAMES  # noqa: E402


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def confusion_png(confusion: np.ndarray, title: str) -> bytes:
    figure, axis = plt.subplots(figsize=(5, 4.2))
    axis.imshow(confusion, cmap="Blues")
    axis.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=30)
    axis.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    threshold = confusion.max() / 2 if confusion.size else 0
    for (row, col), value in np.ndenumerate(confusion):
        axis.text(col, row, int(value), ha="center", va="center", color="white" if value > threshold else "black")
    return _png(figure)


def roc_png(labels: np.ndarray, probabilities: np.ndarray, title: str) -> bytes:
    figure, axis = plt.subplots(figsize=(5, 4.2))
    for index, name in enumerate(CLASS_NAMES):
        if len(np.unique(labels == index)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels == index, probabilities[:, index])
        axis.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    return _png(figure)


def comparison_png(rows: list[dict[str, float | str]]) -> bytes:
    """Test accuracy and macro F1 per family, with the study's accuracy where it reported one."""
    names = [str(row["family"]) for row in rows]
    positions = np.arange(len(names))
    width = 0.27
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.bar(positions - width, [float(row["accuracy"]) for row in rows], width, label="accuracy (this run)")
    axis.bar(positions, [float(row["f1_macro"]) for row in rows], width, label="macro F1 (this run)")
    study = [float(row["study_accuracy"]) if row.get("study_accuracy") not in (None, "") else 0 for row in rows]
    axis.bar(positions + width, study, width, label="accuracy (original study, leaky split)", color="lightgrey")
    axis.set_xticks(positions, names)
    axis.set_ylim(0.5, 1.0)
    axis.set_ylabel("test set")
    axis.legend(loc="lower right", fontsize=8)
    axis.set_title("Brain tumour MRI: the four families on the held-out test split")
    return _png(figure)


def reliability_png(labels: np.ndarray, curves: dict[str, np.ndarray], title: str) -> bytes:
    """Reliability diagram: accuracy against mean top-label confidence per bin (15 equal-width bins), one line
    per set of probabilities (e.g. before and after calibration); the diagonal is perfect calibration."""
    from services.training.calibration import expected_calibration_error, reliability_bins

    figure, axis = plt.subplots(figsize=(5, 4.2))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, probabilities in curves.items():
        confidence, accuracy, counts = reliability_bins(probabilities, labels)
        shown = counts > 0
        ece = expected_calibration_error(probabilities, labels)
        axis.plot(confidence[shown], accuracy[shown], marker="o", label=f"{name} (ECE {ece:.3f})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("mean confidence of the top label")
    axis.set_ylabel("accuracy")
    axis.set_title(f"{title}: reliability")
    axis.legend(loc="upper left", fontsize=8)
    return _png(figure)
