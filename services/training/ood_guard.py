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
The mixture is fitted on each training slice and on ``AUGMENTED_COPIES`` random realistic re-uploads of it
(``services.training.guard_augmentation``: crops, small rotations, other windows, noise, burned-in text, JPEG),
so that a cropped or re-windowed scan is not refused; a wide covariance ridge keeps the score's tail on real
slices short.

Two thresholds, both from cross-validated scores (``fit_guard_cv``): every training slice is scored by a guard
fitted without its duplicate group (``GUARD_FOLDS`` group folds). The "unusual" flag threshold is their
``FLAG_QUANTILE`` quantile; the refusal threshold extrapolates their tail beyond it (exceedances over the flag
threshold are about exponential: ``REFUSAL_TAIL`` of real slices above it). The false-refusal and flag rates
it reports are honest: each slice is judged by a guard not fitted on it and thresholds not computed from its
fold's scores.

It is exported as a small ONNX graph (inputs ``pixels`` (N, 1024) and ``features`` (N, F), output ``ood_score``
(N, 1)), its threshold and input kind in the ONNX metadata (``GUARD_METADATA_KEY``), and registered in MLflow as
``brain-tumor-guard``: inference runs it with onnxruntime only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.training.guard_augmentation import AUGMENTED_COPIES, augmented
from shared.core.guard_input import (
    FEATURE_NAMES,
    GUARD_FEATURES_INPUT_NAME,
    GUARD_INPUT_KIND,
    THUMBNAIL_SIZE,
    GuardInput,
    decode_colour,
    guard_input,
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
# The quantile of held-out MRI scores the threshold sits at in ``fit_guard`` (a threshold from one held-out set,
# for small fits and tests); ``fit_guard_cv`` sets both thresholds from cross-validated scores instead.
GUARD_QUANTILE = 0.995
# Group folds of the cross-validation that scores every training slice with a guard not fitted on it.
GUARD_FOLDS = 5
# The "unusual" flag threshold: this quantile of the cross-validated scores (about 1% of real slices flagged).
FLAG_QUANTILE = 0.99
# The refusal threshold: where the exponential tail fitted above the flag threshold leaves this share of real
# slices (0.05%: half the 0.1% aimed at, since the tail is extrapolated from about 57 scores).
REFUSAL_TAIL = 0.0005
# Added before every logarithm: a statistic at 0 (an exactly gray image's colour) stays finite, and differences
# below about 1% of its range do not count.
LOG_OFFSET = 0.01
# Gaussians in the mixture: where the held-out log-likelihood stops gaining much per component (docs/ood-guard.md).
GUARD_MIXTURE_COMPONENTS = 8
# Added to each covariance's diagonal (in log units: a standard deviation of at least 0.22): a statistic nearly
# constant on MRI slices (colour) must not make a density explode, which gave real slices a long tail of scores.
COVARIANCE_RIDGE = 0.05
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
    # Above it (and at most ``threshold``) an answer is given but flagged as unusual; NaN: none was set.
    flag_threshold: float = float("nan")
    # How the thresholds were set and what the cross-validation measured (the metadata carries it).
    validation: dict[str, object] = field(default_factory=dict)

    @property
    def flag(self) -> float:
        """The flag threshold, never above the refusal threshold."""
        return self.threshold if np.isnan(self.flag_threshold) else min(self.flag_threshold, self.threshold)

    def metadata(self) -> dict[str, object]:
        """What inference needs besides the graph (and what a reader wants to know about it)."""
        return {
            "threshold": self.threshold,
            "flag_threshold": self.flag,
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
            **self.validation,
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
    """PCA and Gaussian mixture on ``fit``; the refusal threshold the ``quantile`` of ``held_out``'s scores (held-out
    MRI images, never fitted on), the flag threshold their ``FLAG_QUANTILE`` (or the refusal one, if lower).
    ``fit_guard_cv`` is what training uses: its thresholds and rates are cross-validated."""
    if len(held_out.pixels) == 0:
        raise ValueError("the guard needs at least 2 images to fit and 1 held-out image for its threshold")
    fitted = fit_model(fit, components, seed)
    scores = guard_scores(fitted, held_out)
    threshold = float(np.quantile(scores, quantile))
    return OodGuard(**{**fitted.__dict__, "threshold": threshold, "threshold_images": len(held_out.pixels),
                       "quantile": quantile, "flag_threshold": float(np.quantile(scores, FLAG_QUANTILE))})  # fmt: skip


def fit_model(fit: GuardInput, components: int = GUARD_COMPONENTS, seed: int = 0) -> OodGuard:
    """PCA and Gaussian mixture on ``fit``, thresholds not set yet (infinite: nothing refused)."""
    pixels = fit.pixels.astype(np.float64)
    if len(pixels) < 2:
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
        np.zeros((1, dims)), np.eye(dims)[np.newaxis], np.zeros(1), float("inf"), size, len(pixels), 0, float("nan"),
    )  # fmt: skip
    return OodGuard(**{**partial.__dict__, **_fit_mixture(_log_vectors(fit, partial), seed)})


def thresholds_from_scores(scores: np.ndarray) -> tuple[float, float]:
    """(refusal, flag) thresholds from cross-validated scores of real slices: the flag threshold is their
    ``FLAG_QUANTILE``; above it the scores' excesses are taken as exponential (the tail of a negative
    log-likelihood), and the refusal threshold is where that tail leaves ``REFUSAL_TAIL`` of real slices."""
    scores = np.asarray(scores, dtype=np.float64)
    flag = float(np.quantile(scores, FLAG_QUANTILE))
    excess = scores[scores > flag] - flag
    scale = float(excess.mean()) if excess.size else 0.0
    return flag + scale * float(np.log((1 - FLAG_QUANTILE) / REFUSAL_TAIL)), flag


@dataclass(frozen=True)
class GuardValidation:
    """What ``fit_guard_cv`` measured: each slice's fold, the fold guards (each fitted without its fold, with
    the thresholds the other folds' scores give: what judges that fold's slices) and the out-of-fold scores."""

    folds: np.ndarray
    fold_guards: tuple[OodGuard, ...]
    scores: np.ndarray
    refused: int
    flagged: int
    fit_seconds: float

    def refused_mask(self) -> np.ndarray:
        return np.array([s > self.fold_guards[f].threshold for s, f in zip(self.scores, self.folds, strict=True)])


def clopper_pearson(count: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial rate."""
    from scipy.stats import beta

    alpha = 1 - level
    low = 0.0 if count == 0 else float(beta.ppf(alpha / 2, count, total - count + 1))
    high = 1.0 if count == total else float(beta.ppf(1 - alpha / 2, count + 1, total - count))
    return low, high


def guard_folds(groups: np.ndarray, labels: np.ndarray | None, folds: int, seed: int) -> np.ndarray:
    """Each image's fold: duplicate groups never straddle two folds (stratified by class when labels are given)."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = np.asarray(groups)
    count = min(folds, len(np.unique(groups)))
    if count < 2:
        raise ValueError("the guard's cross-validation needs at least 2 duplicate groups")
    dummy = np.zeros(len(groups))
    if labels is not None:
        splits = StratifiedGroupKFold(count, shuffle=True, random_state=seed).split(dummy, labels, groups)
    else:
        splits = GroupKFold(count).split(dummy, groups=groups)
    fold_of = np.full(len(groups), -1)
    for fold, (_, held) in enumerate(splits):
        fold_of[held] = fold
    return fold_of


def augmented_inputs(paths: Sequence[Path], copies: int = AUGMENTED_COPIES, seed: int = 0) -> list[GuardInput]:
    """``copies`` random re-uploads of every file (``guard_augmentation``), each decoded as an upload: one
    GuardInput per copy, row i a re-upload of ``paths[i]``."""
    inputs = []
    for copy in range(copies):
        rng = np.random.default_rng([seed, copy])
        inputs.append(_stacked([guard_input(augmented(Path(path).read_bytes(), rng)) for path in paths]))
    return inputs


def fit_guard_cv(
    paths: Sequence[Path],
    thumbnails: np.ndarray,
    groups: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    seed: int = 0,
    folds: int = GUARD_FOLDS,
    copies: int = AUGMENTED_COPIES,
    components: int = GUARD_COMPONENTS,
) -> tuple[OodGuard, GuardValidation]:
    """The guard training registers, fitted on every given MRI slice (and ``copies`` re-uploads of each), its two
    thresholds from cross-validated scores; also what the cross-validation measured.

    ``paths``/``thumbnails`` (N, S, S) uint8: the images (the thumbnails as ``shared.core.imaging`` decodes them,
    e.g. the image cache's); ``groups``: each image's duplicate group (near-duplicates share one: a slice is never
    scored by a guard fitted on its copy); ``labels`` (optional) stratify the folds by class.

    Each fold's slices are scored by a guard fitted on the other folds (their slices and re-uploads) and judged
    against the thresholds the *other* folds' scores give, so the false-refusal and flag rates are estimates, not
    true by construction. The shipped thresholds come from all the out-of-fold scores."""
    import time

    started = time.perf_counter()
    base = files_input(paths, thumbnails)
    extra = augmented_inputs(paths, copies, seed)
    fold_of = guard_folds(groups, labels, folds, seed)
    count = int(fold_of.max()) + 1
    scores = np.zeros(len(fold_of))
    fitted = []
    for fold in range(count):
        train = fold_of != fold
        fitted.append(fit_model(_stacked([_part(part, train) for part in (base, *extra)]), components, seed))
        scores[~train] = guard_scores(fitted[-1], _part(base, ~train))
    fold_guards, refused, flagged = [], 0, 0
    for fold in range(count):
        threshold, flag = thresholds_from_scores(scores[fold_of != fold])
        held = scores[fold_of == fold]
        refused, flagged = refused + int((held > threshold).sum()), flagged + int((held > flag).sum())
        fold_guards.append(OodGuard(**{**fitted[fold].__dict__, "threshold": threshold, "flag_threshold": flag}))
    threshold, flag = thresholds_from_scores(scores)
    final = fit_model(_stacked([base, *extra]), components, seed)
    total = len(scores)
    low, high = clopper_pearson(refused, total)
    validation = {
        "threshold_rule": (
            f"flag: quantile {FLAG_QUANTILE} of {total} out-of-fold scores ({count} duplicate-group folds); "
            f"refusal: the exponential tail above it at {REFUSAL_TAIL}"
        ),
        "false_refusal_cv": refused / total,
        "false_refusal_cv_count": refused,
        "false_refusal_cv_interval": [low, high],
        "false_refusal_cv_interval_method": "Clopper-Pearson 95%",
        "flag_rate_cv": flagged / total,
        "cv_images": total,
        "cv_folds": count,
        "augmented_copies": copies,
    }
    guard = OodGuard(**{**final.__dict__, "threshold": threshold, "flag_threshold": flag, "threshold_images": total,
                        "quantile": 1 - REFUSAL_TAIL, "validation": validation})  # fmt: skip
    seconds = time.perf_counter() - started
    return guard, GuardValidation(fold_of, tuple(fold_guards), scores, refused, flagged, seconds)


def _part(inputs: GuardInput, mask: np.ndarray) -> GuardInput:
    return GuardInput(inputs.pixels[mask], inputs.features[mask])


def _stacked(inputs: Sequence[GuardInput]) -> GuardInput:
    return GuardInput(np.concatenate([i.pixels for i in inputs]), np.concatenate([i.features for i in inputs]))


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
