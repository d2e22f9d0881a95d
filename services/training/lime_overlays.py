"""Explanation overlays of a few test images, logged to the family's MLflow run at training time.

They run the exported ONNX file in process (``shared.core.onnx_classifier``), the very file that gets
registered, on copies with regions hidden (``shared.core.explanation.inprocess``). Occlusion by default, as the
explainer service; LIME on request. Needs the ``[explain]`` extra, which ``[train]`` includes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import mlflow
import numpy as np

from services.training.tracking import log_bytes
from shared.core.contract import CLASS_NAMES
from shared.core.explanation.inprocess import PixelsPredict, pixels_predictor
from shared.core.explanation.lime import lime
from shared.core.explanation.occlusion import occlusion
from shared.core.explanation.overlay import render_overlay
from shared.core.explanation.result import Explanation
from shared.core.masking import Fill
from shared.core.onnx_classifier import OnnxClassifier
from shared.kit.schemas import ExplainMethod

logger = logging.getLogger(__name__)

# Copies per onnxruntime run; bounds the memory of one batch.
RUN_BATCH = 256


def onnx_predict_fn(model_bytes: bytes) -> PixelsPredict:
    """uint8 images (N, S, S) to probabilities, through the ONNX model and its embedded contract."""
    classifier = OnnxClassifier("overlay", "0", model_bytes)
    classifier.load()
    return lambda pixels: classifier.predict_pixels(pixels, RUN_BATCH)


def _first_of_each_class(labels: np.ndarray, class_names: Sequence[str], per_class: int) -> list[tuple[str, int, int]]:
    """(class name, n, image index) of the first ``per_class`` images of each class."""
    return [
        (class_name, n, int(index))
        for class_index, class_name in enumerate(class_names)
        for n, index in enumerate(np.flatnonzero(np.asarray(labels) == class_index)[:per_class])
    ]


def _explain(
    image: np.ndarray,
    predict_fn: PixelsPredict,
    names: Sequence[str],
    method: ExplainMethod,
    fill: Fill,
    num_samples: int,
    seed: int,
) -> Explanation:
    predict = pixels_predictor(image, predict_fn, RUN_BATCH)
    if method == "occlusion":
        return occlusion(image, predict, names, fill=fill)
    return lime(image, predict, names, fill=fill, num_samples=num_samples, seed=seed)


def _log_one_overlay(
    image: np.ndarray, explanation: Explanation, true_label: str, name: str, folder: str
) -> dict[str, Any]:
    """Log the overlay PNG as rendered (no decoding) and answer its entry of the summary."""
    log_bytes(render_overlay(image, explanation).png, f"{folder}/{name}")
    return {
        "file": name,
        "true_label": true_label,
        "predicted_label": explanation.predicted_label,
        "explained_label": explanation.label,
        "num_samples": explanation.num_samples,
        "num_regions": explanation.num_regions,
        "fit_r2": explanation.fit_r2,
        "regions": [asdict(region) for region in explanation.supporting()],
        "opposing_regions": [asdict(region) for region in explanation.opposing()],
    }


def log_overlays(
    predict_fn: PixelsPredict,
    pixels: np.ndarray,
    labels: np.ndarray,
    family: str,
    per_class: int = 2,
    *,
    class_names: Sequence[str] | None = None,
    method: ExplainMethod = "occlusion",
    fill: Fill = "blur",
    num_samples: int = 200,
    seed: int = 0,
    time_budget_s: float = 120.0,
    artifact_dir: str = "explanations",
) -> int:
    """Log explanation overlays of the first ``per_class`` test images of each class to the active MLflow run.

    Files: ``explanations/<true class>_<n>_<predicted>.png`` plus ``explanations/summary.json`` (method,
    supporting and opposing regions with their weights, LIME's fit R^2). ``num_samples`` and ``seed`` are
    LIME's. Bounded by ``time_budget_s`` overall; a failure is logged and tagged on the run, never raised:
    explanations must not block registration. Returns the number of overlays logged.
    """
    names = tuple(class_names or CLASS_NAMES)
    deadline = time.monotonic() + time_budget_s
    summary: list[dict[str, Any]] = []
    try:
        for class_name, n, index in _first_of_each_class(labels, names, per_class):
            if time.monotonic() > deadline:
                logger.warning("Explanation overlays for %s stopped at the %.0f s budget", family, time_budget_s)
                mlflow.set_tag("explanations_truncated", "true")
                break
            image = np.asarray(pixels[index], dtype=np.uint8)
            result = _explain(image, predict_fn, names, method, fill, num_samples, seed)
            name = f"{class_name}_{n}_{result.predicted_label}.png"
            summary.append(_log_one_overlay(image, result, class_name, name, artifact_dir))
    except Exception as exc:  # a diagnostic must never cost the family its registration
        logger.exception("Explanation overlays for %s failed", family)
        mlflow.set_tag("explanations_error", f"{type(exc).__name__}: {exc}"[:500])
    if summary:
        header = {"family": family, "method": method, "fill": fill}
        if method == "lime":
            header.update(num_samples=num_samples, seed=seed)
        mlflow.log_text(json.dumps({**header, "images": summary}, indent=2), f"{artifact_dir}/summary.json")
    return len(summary)
