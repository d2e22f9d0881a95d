"""The export step of a family's run: the fitted model converted to ONNX with its contract, checked against the
native model, calibrated (temperature and prediction sets fitted on the calibration slice) and checked again:
what is registered is exactly what passed both checks."""

from __future__ import annotations

import time

import mlflow
import numpy as np

from services.training import plots, tracking
from services.training.calibration import (
    Calibration,
    CalibrationSlice,
    apply_temperature,
    calibrated_bytes,
    calibration_metrics,
    fit_temperature,
    set_metrics,
)
from services.training.families import FittedModel, ModelFamily
from services.training.onnx_export import ParityReport, check_parity, embed_contract, exported_classifier
from shared.core.conformal import fit_conformal
from shared.core.contract import CLASS_NAMES
from shared.core.onnx_classifier import OnnxClassifier


def require_parity(family_name: str, parity: ParityReport) -> None:
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


def export_and_check(
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


def calibrate(
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


def calibrated_export(
    family_name: str, family: ModelFamily, fitted: FittedModel, model_bytes: bytes, calibration: Calibration,
    test_pixels: np.ndarray, native: np.ndarray, test_labels: np.ndarray,
) -> tuple[bytes, np.ndarray, dict[str, float]]:  # fmt: skip
    """Append the calibration to the parity-checked graph and check the result against the same calibration
    applied to the native probabilities; test-split ECE and Brier before and after, reliability diagram."""
    calibrated = calibrated_bytes(model_bytes, calibration)
    expected = apply_temperature(native, calibration.temperature)
    served = exported_classifier(calibrated).predict(family.tensor(test_pixels, fitted.contract), 64)
    parity = check_parity(expected, served)
    require_parity(f"{family_name} (calibrated)", parity)
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
