"""The guard against input that is not a brain MRI slice: a one-class model fitted on MRI training images only.

Why one-class: a classifier trained on a few generated negatives learns those negatives; a photo, an X-ray or a
screenshot nobody generated falls anywhere. A model of what MRI slices look like refuses whatever is far from
them, whatever it is (docs/ood-guard.md gives the measurements behind each choice).

Its input is ``shared.core.guard_input`` (the same code scores uploads in inference): the 32x32 grayscale thumbnail and
a few statistics of the image, colour first. The model:
- PCA of the training thumbnails gives two distances, each over its median on the fitting images: the
  reconstruction error (energy outside the MRI subspace: text, edges, texture) and the Mahalanobis distance of the
  coefficients (inside it, but unlike a slice);
- their logarithms and the logarithms of the statistics (``log(x + LOG_OFFSET)``: all are non-negative and
  right-skewed on MRI slices) form one vector per image; a Gaussian mixture (``GUARD_MIXTURE_COMPONENTS`` full
  Gaussians: slices come in several views and contrasts, one Gaussian alone is too wide) is fitted on the
  training images' vectors, and the score is the vector's negative log-likelihood under it. A photo is far on
  colour, a page on texture, a dark photo on its layout's distances and its texture together.
The threshold is a high quantile of the scores of held-out training images (the calibration slice, never fitted
on), so about ``1 - quantile`` of real scans are refused by construction.

It is exported as a small ONNX graph (inputs ``pixels`` (N, 1024) and ``features`` (N, F), output ``ood_score``
(N, 1)), its threshold and input kind in the ONNX metadata (``GUARD_METADATA_KEY``), and registered in MLflow as
``brain-tumor-guard``: inference runs it with onnxruntime only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shared.core.guard_input import (
    FEATURE_NAMES,
    GUARD_FEATURES_INPUT_NAME,
    GUARD_INPUT_KIND,
    THUMBNAIL_SIZE,
    GuardInput,
    decode_colour,
    guard_input_of,
)
from shared.kit.schemas import (
    GUARD_INPUT_NAME,
    GUARD_METADATA_KEY,
    GUARD_OUTPUT_NAME,
)

logger = logging.getLogger(__name__)

# Thumbnail side (shared.core.guard_input decides it; re-exported for the pipeline and the benchmark).
GUARD_IMAGE_SIZE = THUMBNAIL_SIZE
# PCA components kept: enough to rebuild a slice's layout, too few to rebuild arbitrary pictures.
GUARD_COMPONENTS = 24
# The quantile of held-out MRI scores the threshold sits at: about 0.5% of real scans are refused.
GUARD_QUANTILE = 0.995
# Added before every logarithm: a statistic at 0 (an exactly gray image's colour) stays finite, and differences
# below about 1% of its range do not count.
LOG_OFFSET = 0.01
# Gaussians in the mixture: where the held-out log-likelihood stops gaining much per component (docs/ood-guard.md).
GUARD_MIXTURE_COMPONENTS = 4
# Added to each covariance's diagonal: a statistic nearly constant on MRI slices must not make a density explode.
COVARIANCE_RIDGE = 1e-3
# Fits of the mixture from different starts; the likeliest is kept.
MIXTURE_STARTS = 2
_OPSET = 17


@dataclass(frozen=True)
class OodGuard:
    """A fitted guard: the PCA, the Gaussian over the log distances and statistics, and the refusal threshold."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D), orthonormal rows
    variances: np.ndarray  # (k,)
    residual_scale: float
    mahalanobis_scale: float
    # The mixture over log vectors of V = 2 + F values: each Gaussian's mean (K, V), the Cholesky factor of its
    # precision (K, V, V), and its log weight + log determinant - V/2 log(2 pi) (K,).
    mixture_means: np.ndarray
    mixture_whitening: np.ndarray
    mixture_log_constants: np.ndarray
    threshold: float
    image_size: int
    fitted_images: int
    threshold_images: int
    quantile: float

    def metadata(self) -> dict[str, object]:
        """What inference needs besides the graph (and what a reader wants to know about it)."""
        return {
            "threshold": self.threshold,
            "image_size": self.image_size,
            "input_kind": GUARD_INPUT_KIND,
            "input_name": GUARD_INPUT_NAME,
            "features_input_name": GUARD_FEATURES_INPUT_NAME,
            "feature_names": list(FEATURE_NAMES),
            "output_name": GUARD_OUTPUT_NAME,
            "components": len(self.variances),
            "mixture_components": len(self.mixture_means),
            "fitted_images": self.fitted_images,
            "threshold_images": self.threshold_images,
            "threshold_quantile": self.quantile,
        }


def files_input(paths: Sequence[Path], thumbnails: np.ndarray) -> GuardInput:
    """The guard input of training files: their cached thumbnails (decoded as ``shared.core.imaging`` decodes uploads)
    and their colour thumbnails, decoded here (about a millisecond a JPEG)."""
    if len(paths) != len(thumbnails):
        raise ValueError(f"{len(paths)} files but {len(thumbnails)} thumbnails")
    if not len(paths):
        raise ValueError("the guard needs images")
    return guard_input_of(thumbnails, np.stack([decode_colour(Path(path).read_bytes()) for path in paths]))


def _distances(
    pixels: np.ndarray, mean: np.ndarray, components: np.ndarray, variances: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    centred = pixels.astype(np.float64) - mean
    coefficients = centred @ components.T
    residual = ((centred - coefficients @ components) ** 2).sum(axis=1)
    mahalanobis = (coefficients**2 / variances).sum(axis=1)
    return residual, mahalanobis


def _log_vectors(inputs: GuardInput, guard: OodGuard) -> np.ndarray:
    residual, mahalanobis = _distances(inputs.pixels, guard.mean, guard.components, guard.variances)
    return np.column_stack([
        np.log(residual / guard.residual_scale + LOG_OFFSET),
        np.log(mahalanobis / guard.mahalanobis_scale + LOG_OFFSET),
        np.log(inputs.features.astype(np.float64) + LOG_OFFSET),
    ])  # fmt: skip


def fit_guard(
    fit: GuardInput,
    held_out: GuardInput,
    components: int = GUARD_COMPONENTS,
    quantile: float = GUARD_QUANTILE,
    seed: int = 0,
) -> OodGuard:
    """PCA and Gaussian mixture on ``fit``; the threshold from ``held_out`` (held-out MRI images, never fitted on)."""
    pixels = fit.pixels.astype(np.float64)
    if len(pixels) < 2 or len(held_out.pixels) == 0:
        raise ValueError("the guard needs at least 2 images to fit and 1 held-out image for its threshold")
    mean = pixels.mean(axis=0)
    _, singular, vt = np.linalg.svd(pixels - mean, full_matrices=False)
    k = max(1, min(components, len(pixels) - 1, vt.shape[0]))
    basis = vt[:k]
    # A tiny floor: with very few images a component's variance can be ~0 and its distance would explode.
    variances = np.maximum(singular[:k] ** 2 / (len(pixels) - 1), 1e-6)
    residual, mahalanobis = _distances(pixels, mean, basis, variances)
    size = int(round(np.sqrt(pixels.shape[1])))
    dims = 2 + fit.features.shape[1]
    partial = OodGuard(
        mean, basis, variances, float(max(np.median(residual), 1e-6)), float(max(np.median(mahalanobis), 1e-6)),
        np.zeros((1, dims)), np.eye(dims)[np.newaxis], np.zeros(1), 0.0, size, len(pixels), len(held_out.pixels),
        quantile,
    )  # fmt: skip
    fitted = OodGuard(**{**partial.__dict__, **_fit_mixture(_log_vectors(fit, partial), seed)})
    threshold = float(np.quantile(guard_scores(fitted, held_out), quantile))
    return OodGuard(**{**fitted.__dict__, "threshold": threshold})


def _fit_mixture(vectors: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The Gaussian mixture's arrays (scikit-learn fits it; the score is computed from these, in numpy or ONNX).
    At least about 20 images a Gaussian: a small folder gets fewer Gaussians."""
    from sklearn.mixture import GaussianMixture

    count = max(1, min(GUARD_MIXTURE_COMPONENTS, len(vectors) // 20))
    mixture = GaussianMixture(
        count, covariance_type="full", reg_covar=COVARIANCE_RIDGE, n_init=MIXTURE_STARTS, random_state=seed
    ).fit(vectors)
    whitening = mixture.precisions_cholesky_  # (K, V, V): (x - mean) @ whitening[k] is whitened
    log_determinants = np.log(np.diagonal(whitening, axis1=1, axis2=2)).sum(axis=1)
    constants = np.log(mixture.weights_) + log_determinants - 0.5 * vectors.shape[1] * np.log(2 * np.pi)
    return {"mixture_means": mixture.means_, "mixture_whitening": whitening, "mixture_log_constants": constants}


def guard_scores(guard: OodGuard, inputs: GuardInput) -> np.ndarray:
    """The guard's scores in numpy (what the ONNX graph computes): the negative log-likelihood of the image's log
    vector under the mixture; higher is less like an MRI slice."""
    vectors = _log_vectors(inputs, guard)
    centred = vectors[:, np.newaxis, :] - guard.mixture_means[np.newaxis]  # (N, K, V)
    whitened = np.einsum("nkv,kvw->nkw", centred, guard.mixture_whitening)
    log_likelihoods = guard.mixture_log_constants - 0.5 * (whitened**2).sum(axis=2)  # (N, K)
    top = log_likelihoods.max(axis=1)
    return -(top + np.log(np.exp(log_likelihoods - top[:, np.newaxis]).sum(axis=1)))


def _constant(name: str, value: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _log_ratio_nodes(source: str, scale: str, out: str) -> list[onnx.NodeProto]:
    """out = log(source / scale + LOG_OFFSET)."""
    return [
        helper.make_node("Div", [source, scale], [f"{out}_ratio"]),
        helper.make_node("Add", [f"{out}_ratio", "log_offset"], [f"{out}_shifted"]),
        helper.make_node("Log", [f"{out}_shifted"], [out]),
    ]


def guard_onnx(guard: OodGuard) -> bytes:
    """The guard as an ONNX graph: (pixels (N, D), features (N, F)) -> ood_score (N, 1), threshold in metadata."""
    dim, (gaussians, values) = guard.mean.shape[0], guard.mixture_means.shape
    features = values - 2
    # Every Gaussian's whitening side by side: vector @ whitening - offsets = each Gaussian's whitened vector.
    stacked = np.concatenate(list(guard.mixture_whitening), axis=1)  # (V, K * V)
    offsets = np.concatenate([m @ w for m, w in zip(guard.mixture_means, guard.mixture_whitening, strict=True)])
    initializers = [
        _constant("mean", guard.mean),
        _constant("basis_t", guard.components.T),  # (D, k)
        _constant("basis", guard.components),  # (k, D)
        _constant("inv_variances", 1.0 / guard.variances),
        _constant("residual_scale", np.array([guard.residual_scale])),
        _constant("mahalanobis_scale", np.array([guard.mahalanobis_scale])),
        _constant("log_offset", np.array([LOG_OFFSET])),
        _constant("mixture_whitening", stacked),
        _constant("mixture_offsets", offsets),
        _constant("minus_half", np.array([-0.5])),
        _constant("mixture_log_constants", guard.mixture_log_constants),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis_2"),
        numpy_helper.from_array(np.array([-1, gaussians, values], dtype=np.int64), "per_gaussian_shape"),
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
        *_log_ratio_nodes("residual", "residual_scale", "log_residual"),
        *_log_ratio_nodes("mahalanobis", "mahalanobis_scale", "log_mahalanobis"),
        helper.make_node("Add", [GUARD_FEATURES_INPUT_NAME, "log_offset"], ["features_shifted"]),
        helper.make_node("Log", ["features_shifted"], ["log_features"]),
        helper.make_node("Concat", ["log_residual", "log_mahalanobis", "log_features"], ["vector"], axis=1),
        helper.make_node("MatMul", ["vector", "mixture_whitening"], ["projected"]),
        helper.make_node("Sub", ["projected", "mixture_offsets"], ["whitened"]),
        helper.make_node("Mul", ["whitened", "whitened"], ["whitened_squares_flat"]),
        helper.make_node("Reshape", ["whitened_squares_flat", "per_gaussian_shape"], ["whitened_squares_by_gaussian"]),
        helper.make_node("ReduceSum", ["whitened_squares_by_gaussian", "axis_2"], ["distances"], keepdims=0),
        helper.make_node("Mul", ["distances", "minus_half"], ["half_distances"]),
        helper.make_node("Add", ["half_distances", "mixture_log_constants"], ["log_likelihoods"]),
        helper.make_node("ReduceLogSumExp", ["log_likelihoods"], ["log_likelihood"], axes=[1], keepdims=1),
        helper.make_node("Neg", ["log_likelihood"], [GUARD_OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        "brain_tumor_guard",
        [
            helper.make_tensor_value_info(GUARD_INPUT_NAME, TensorProto.FLOAT, [None, dim]),
            helper.make_tensor_value_info(GUARD_FEATURES_INPUT_NAME, TensorProto.FLOAT, [None, features]),
        ],
        [helper.make_tensor_value_info(GUARD_OUTPUT_NAME, TensorProto.FLOAT, [None, 1])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="brain-tumor-guard")
    model.ir_version = 8  # readable by every onnxruntime this project pins
    onnx.helper.set_model_props(model, {GUARD_METADATA_KEY: json.dumps(guard.metadata())})
    onnx.checker.check_model(model)
    return model.SerializeToString()
