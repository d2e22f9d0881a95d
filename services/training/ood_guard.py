"""The guard against input that is not a brain MRI slice: a one-class model fitted on MRI training images only.

Why one-class: a classifier trained on a few generated negatives learns those negatives; a photo, an X-ray or a
screenshot nobody generated falls anywhere. A model of what MRI slices look like refuses whatever is far from
them, whatever it is.

The model: PCA of 32x32 grayscale thumbnails (pixels / 255) of the training images. The score adds two distances,
each divided by its median on the fitting images (so a typical slice scores about 2):
- the reconstruction error (energy outside the PCA subspace: what no MRI slice has, e.g. text, edges, texture);
- the Mahalanobis distance of the PCA coefficients (inside the subspace, but unlike any slice, e.g. a bright
  background or an uneven layout).
A third term is the brightness of the thumbnail's 2-pixel border over its training median: slices sit on black.
The threshold is a high quantile of the scores of held-out training images (the calibration slice, never fitted
on), so about ``1 - quantile`` of real scans are refused by construction.

It is exported as a small ONNX graph (Sub, MatMul, ReduceSum, Div, Add; input ``pixels`` (N, 1024) float32,
output ``ood_score`` (N, 1)), its threshold and thumbnail size in the ONNX metadata (``GUARD_METADATA_KEY``), and
registered in MLflow as ``brain-tumor-guard``: inference runs it with onnxruntime only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import mlflow
import numpy as np
import onnx
from mlflow import MlflowClient
from onnx import TensorProto, helper, numpy_helper

from services.training import tracking
from shared.schemas import (
    CHAMPION_ALIAS,
    GUARD_INPUT_NAME,
    GUARD_METADATA_KEY,
    GUARD_OUTPUT_NAME,
    GUARD_REGISTERED_NAME,
)

logger = logging.getLogger(__name__)

# Thumbnail side: a slice's layout (skull ring, dark background, symmetry) survives at 32 px; text and texture do not.
GUARD_IMAGE_SIZE = 32
# PCA components kept: enough to rebuild a slice's layout, too few to rebuild arbitrary pictures.
GUARD_COMPONENTS = 24
# The quantile of held-out MRI scores the threshold sits at: about 0.5% of real scans are refused.
GUARD_QUANTILE = 0.995
_OPSET = 17
# The border ring whose brightness is the score's third term.
BORDER_PIXELS = 2


@dataclass(frozen=True)
class OodGuard:
    """A fitted guard: the PCA, the two medians that scale its distances, and the refusal threshold."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D), orthonormal rows
    variances: np.ndarray  # (k,)
    residual_scale: float
    mahalanobis_scale: float
    threshold: float
    # (D,): the mean of the 2-pixel border ring divided by its median on the fitting images (features @ this).
    border_weights: np.ndarray
    image_size: int
    fitted_images: int
    threshold_images: int
    quantile: float

    def metadata(self) -> dict[str, float | int | str]:
        """What inference needs besides the graph (and what a reader wants to know about it)."""
        return {
            "threshold": self.threshold,
            "image_size": self.image_size,
            "scaling": "unit",
            "input_name": GUARD_INPUT_NAME,
            "output_name": GUARD_OUTPUT_NAME,
            "components": len(self.variances),
            "fitted_images": self.fitted_images,
            "threshold_images": self.threshold_images,
            "threshold_quantile": self.quantile,
        }


def guard_features(pixels: np.ndarray) -> np.ndarray:
    """uint8 images (N, S, S) to the guard's input: float32 (N, S*S) in [0, 1]."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    return pixels.reshape(len(pixels), -1).astype(np.float32) / 255.0


def _border_weights(size: int, features: np.ndarray) -> np.ndarray:
    """Weights whose dot product with a thumbnail is its border brightness over the training median: an MRI slice
    sits on a black background (median ~0.04), a photo or a page does not (measured AUC 0.86 on its own)."""
    ring = np.zeros((size, size))
    ring[:BORDER_PIXELS, :] = ring[-BORDER_PIXELS:, :] = ring[:, :BORDER_PIXELS] = ring[:, -BORDER_PIXELS:] = 1.0
    weights = ring.ravel() / ring.sum()
    return weights / max(float(np.median(features @ weights)), 1e-3)


def _distances(
    features: np.ndarray, mean: np.ndarray, components: np.ndarray, variances: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    centred = features.astype(np.float64) - mean
    coefficients = centred @ components.T
    residual = ((centred - coefficients @ components) ** 2).sum(axis=1)
    mahalanobis = (coefficients**2 / variances).sum(axis=1)
    return residual, mahalanobis


def fit_guard(
    fit_pixels: np.ndarray,
    threshold_pixels: np.ndarray,
    components: int = GUARD_COMPONENTS,
    quantile: float = GUARD_QUANTILE,
) -> OodGuard:
    """PCA on ``fit_pixels``; the threshold from ``threshold_pixels`` (held-out MRI images, never fitted on)."""
    features = guard_features(fit_pixels).astype(np.float64)
    if len(features) < 2 or len(threshold_pixels) == 0:
        raise ValueError("the guard needs at least 2 images to fit and 1 held-out image for its threshold")
    mean = features.mean(axis=0)
    _, singular, vt = np.linalg.svd(features - mean, full_matrices=False)
    k = max(1, min(components, len(features) - 1, vt.shape[0]))
    basis = vt[:k]
    # A tiny floor: with very few images a component's variance can be ~0 and its distance would explode.
    variances = np.maximum(singular[:k] ** 2 / (len(features) - 1), 1e-6)
    residual, mahalanobis = _distances(features, mean, basis, variances)
    residual_scale = float(max(np.median(residual), 1e-6))
    mahalanobis_scale = float(max(np.median(mahalanobis), 1e-6))
    size = int(fit_pixels.shape[-1])
    partial = OodGuard(
        mean, basis, variances, residual_scale, mahalanobis_scale, 0.0, _border_weights(size, features),
        size, len(features), len(threshold_pixels), quantile,
    )  # fmt: skip
    threshold = float(np.quantile(guard_scores(partial, threshold_pixels), quantile))
    return OodGuard(**{**partial.__dict__, "threshold": threshold})


def guard_scores(guard: OodGuard, pixels: np.ndarray) -> np.ndarray:
    """The guard's scores in numpy (what the ONNX graph computes): higher is less like an MRI slice."""
    features = guard_features(pixels)
    residual, mahalanobis = _distances(features, guard.mean, guard.components, guard.variances)
    border = features.astype(np.float64) @ guard.border_weights
    return residual / guard.residual_scale + mahalanobis / guard.mahalanobis_scale + border


def _constant(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def guard_onnx(guard: OodGuard) -> bytes:
    """The guard as an ONNX graph: pixels (N, D) -> ood_score (N, 1), threshold in its metadata."""
    dim = guard.mean.shape[0]
    initializers = [
        _constant("mean", guard.mean),
        _constant("basis_t", guard.components.T),  # (D, k)
        _constant("basis", guard.components),  # (k, D)
        _constant("inv_variances", 1.0 / guard.variances),
        _constant("residual_scale", np.array([guard.residual_scale])),
        _constant("mahalanobis_scale", np.array([guard.mahalanobis_scale])),
        _constant("border_weights", guard.border_weights[:, np.newaxis]),  # (D, 1)
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
    ]
    nodes = [
        helper.make_node("Sub", [GUARD_INPUT_NAME, "mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "basis_t"], ["coefficients"]),
        helper.make_node("MatMul", ["coefficients", "basis"], ["rebuilt"]),
        helper.make_node("Sub", ["centred", "rebuilt"], ["residual_vector"]),
        helper.make_node("Mul", ["residual_vector", "residual_vector"], ["residual_squares"]),
        helper.make_node("ReduceSum", ["residual_squares", "axis_1"], ["residual"], keepdims=1),
        helper.make_node("Mul", ["coefficients", "coefficients"], ["coefficient_squares"]),
        helper.make_node("Mul", ["coefficient_squares", "inv_variances"], ["whitened_squares"]),
        helper.make_node("ReduceSum", ["whitened_squares", "axis_1"], ["mahalanobis"], keepdims=1),
        helper.make_node("Div", ["residual", "residual_scale"], ["residual_scaled"]),
        helper.make_node("Div", ["mahalanobis", "mahalanobis_scale"], ["mahalanobis_scaled"]),
        helper.make_node("Add", ["residual_scaled", "mahalanobis_scaled"], ["distance"]),
        helper.make_node("MatMul", [GUARD_INPUT_NAME, "border_weights"], ["border"]),
        helper.make_node("Add", ["distance", "border"], [GUARD_OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        "brain_tumor_guard",
        [helper.make_tensor_value_info(GUARD_INPUT_NAME, TensorProto.FLOAT, [None, dim])],
        [helper.make_tensor_value_info(GUARD_OUTPUT_NAME, TensorProto.FLOAT, [None, 1])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="brain-tumor-guard")
    model.ir_version = 8  # readable by every onnxruntime this project pins
    onnx.helper.set_model_props(model, {GUARD_METADATA_KEY: json.dumps(guard.metadata())})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def register_guard(guard: OodGuard, split_sha256: str) -> str:
    """Log the guard's ONNX file as an MLflow Model in the active run, register it as a new version of
    ``brain-tumor-guard`` (sha256-tagged like every model) and point ``champion`` at it; returns the version."""
    model_bytes = guard_onnx(guard)
    proto = onnx.load_from_string(model_bytes)
    logged = mlflow.onnx.log_model(
        proto,
        name="guard",
        metadata={GUARD_METADATA_KEY: guard.metadata()},
        pip_requirements=mlflow.onnx.get_default_pip_requirements(),
        onnx_execution_providers=["CPUExecutionProvider"],
        save_as_external_data=False,
    )
    mlflow.log_metrics(
        {"guard_threshold": guard.threshold, "guard_fitted_images": guard.fitted_images,
         "guard_threshold_images": guard.threshold_images}
    )  # fmt: skip
    version = tracking.register_version(
        GUARD_REGISTERED_NAME,
        logged,
        model_bytes,
        description=f"guard: threshold {guard.threshold:.3f} (quantile {guard.quantile} of held-out MRI images)",
        tags={"family": "guard", "test_files_sha256": split_sha256, "threshold": f"{guard.threshold:.6f}"},
    )
    MlflowClient().set_registered_model_alias(GUARD_REGISTERED_NAME, CHAMPION_ALIAS, version)
    return version
