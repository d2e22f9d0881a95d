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

A second detector (v4, ``services.training.guard_texture``) scores the colour thumbnail's texture as early layers of
ImageNet MobileNetV2 see it: the statistics cannot tell an inverted gray photo or a rotated texture on black from a
slice. It is fitted on the same slices and re-uploads. Each detector's score is normalised by its own two
thresholds (the rule below, on its own cross-validated scores) and the guard's score is the larger: one score,
two thresholds, for inference as before.

Two thresholds, both from cross-validated scores (``fit_guard_cv``): every training slice is scored by a guard
fitted without its duplicate group (``GUARD_FOLDS`` group folds). The "unusual" flag threshold is their
``FLAG_QUANTILE`` quantile; the refusal threshold extrapolates their tail beyond it (exceedances over the flag
threshold are about exponential: ``REFUSAL_TAIL`` of real slices above it). The false-refusal and flag rates
it reports are honest: each slice is judged by a guard not fitted on it and thresholds not computed from its
fold's scores.

It is exported as one ONNX graph (``guard_graph``: inputs ``pixels`` (N, 1024), ``features`` (N, F) and ``colour``
(N, 64, 64, 3), output ``ood_score`` (N, 1)), its thresholds and input kind in the ONNX metadata
(``GUARD_METADATA_KEY``), and registered in MLflow as ``brain-tumor-guard``: inference runs it with onnxruntime only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.training.guard_augmentation import AUGMENTED_COPIES, augmented
from services.training.guard_graph import guard_onnx
from services.training.guard_texture import (
    TEXTURE_COMPONENTS,
    TEXTURE_LAYER,
    TextureModel,
    extractor_onnx,
    fit_texture,
    texture_features,
    texture_scores,
)
from shared.core.guard_input import (
    FEATURE_NAMES,
    GUARD_COLOUR_INPUT_NAME,
    GUARD_FEATURES_INPUT_NAME,
    GUARD_INPUT_KIND,
    THUMBNAIL_SIZE,
    GuardInput,
    decode_colour,
    guard_input,
    guard_input_of,
    stacked,
)
from shared.kit.schemas import GUARD_INPUT_NAME, GUARD_OUTPUT_NAME

__all__ = ["guard_onnx"]  # re-exported: the pipeline, the bundle and the benchmark export through this module

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
    # v4: the texture detector, and each detector's (flag, refusal) thresholds that put its score on the common
    # scale; the guard's score is the larger of the two normalised scores. None: the mixture alone (mid-fit).
    texture: TextureModel | None = None
    mixture_scale: tuple[float, float] = (0.0, 1.0)
    texture_scale: tuple[float, float] = (0.0, 1.0)

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
            "colour_input_name": GUARD_COLOUR_INPUT_NAME,
            "feature_names": list(FEATURE_NAMES),
            "output_name": GUARD_OUTPUT_NAME,
            "components": len(self.variances),
            "mixture_components": len(self.mixture_means),
            "texture_layer": TEXTURE_LAYER,
            "texture_components": 0 if self.texture is None else len(self.texture.components),
            "mixture_thresholds": list(self.mixture_scale),
            "texture_thresholds": list(self.texture_scale),
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
    *,
    weights: Path | None = None,
    labels: np.ndarray | None = None,
    texture_components: int = TEXTURE_COMPONENTS,
) -> OodGuard:
    """Both detectors on ``fit`` (``labels``: its classes, for the texture detector's Gaussians; ``weights``: the
    MobileNetV2 weights file, ``services.training.weights.resolve_weights``'s default when None;
    ``texture_components``: the texture detector's PCA components); each detector's and the guard's refusal
    threshold the ``quantile`` of ``held_out``'s scores (held-out MRI images, never fitted on), the flag thresholds
    their ``FLAG_QUANTILE``. ``fit_guard_cv`` is what training uses: its thresholds and
    rates are cross-validated."""
    if len(held_out.pixels) == 0:
        raise ValueError("the guard needs at least 2 images to fit and 1 held-out image for its threshold")
    mixture = fit_model(fit, components, seed)
    extractor = extractor_onnx(weights)
    texture = fit_texture(texture_features(extractor, fit.colours), labels, extractor, texture_components)
    held_mixture = guard_scores(mixture, held_out)
    held_texture = texture_scores(texture, texture.features(held_out.colours))

    def scale(scores: np.ndarray) -> tuple[float, float]:
        return _scale(float(np.quantile(scores, FLAG_QUANTILE)), float(np.quantile(scores, quantile)))

    parts = {"texture": texture, "mixture_scale": scale(held_mixture), "texture_scale": scale(held_texture)}
    scores = combined_scores(OodGuard(**{**mixture.__dict__, **parts}), held_mixture, held_texture)
    return OodGuard(**{**mixture.__dict__, **parts, "threshold": float(np.quantile(scores, quantile)),
                       "threshold_images": len(held_out.pixels), "quantile": quantile,
                       "flag_threshold": float(np.quantile(scores, FLAG_QUANTILE))})  # fmt: skip


def _scale(flag: float, refusal: float) -> tuple[float, float]:
    """A detector's (flag, refusal) pair, the refusal kept above the flag (its gap divides the score)."""
    return flag, max(refusal, flag + 1e-6 * max(1.0, abs(flag)))


def combined_scores(guard: OodGuard, mixture: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """The guard's score from its two detectors' scores: each normalised by its own (flag, refusal) thresholds,
    z = (s - flag) / (refusal - flag), and the larger kept (either detector can refuse)."""
    (mixture_flag, mixture_refusal), (texture_flag, texture_refusal) = guard.mixture_scale, guard.texture_scale
    return np.maximum(
        (mixture - mixture_flag) / (mixture_refusal - mixture_flag),
        (texture - texture_flag) / (texture_refusal - texture_flag),
    )


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
    the normalisers and thresholds the other folds' scores give: what judges that fold's slices) and the
    out-of-fold scores (each slice's on its fold guard's normalised scale)."""

    folds: np.ndarray
    fold_guards: tuple[OodGuard, ...]
    scores: np.ndarray
    refused: int
    flagged: int
    fit_seconds: float
    # Each detector's own out-of-fold scores (mixture, texture), before normalising: what the normalisers and
    # the combined scores above are computed from.
    detector_scores: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))

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
        inputs.append(stacked([guard_input(augmented(Path(path).read_bytes(), rng)) for path in paths]))
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
    weights: Path | None = None,
    texture_components: int = TEXTURE_COMPONENTS,
) -> tuple[OodGuard, GuardValidation]:
    """The guard training registers, fitted on every given MRI slice (and ``copies`` re-uploads of each), its two
    thresholds from cross-validated scores; also what the cross-validation measured.

    ``paths``/``thumbnails`` (N, S, S) uint8: the images (the thumbnails as ``shared.core.imaging`` decodes them,
    e.g. the image cache's); ``groups``: each image's duplicate group (near-duplicates share one: a slice is never
    scored by a guard fitted on its copy); ``labels`` (optional) stratify the folds by class and give the texture
    detector one Gaussian per class; ``weights``: the MobileNetV2 weights file of the texture detector
    (``services.training.weights.resolve_weights``'s default when None; none found: WEIGHTS_NOT_FOUND);
    ``texture_components``: the texture detector's PCA components (each fold's and the final one's).

    Each fold's slices are scored by a guard fitted on the other folds (their slices and re-uploads) and judged
    against the thresholds the *other* folds' scores give, so the false-refusal and flag rates are estimates, not
    true by construction: the detectors' normalising thresholds too come from the other folds' scores only. The
    shipped thresholds come from all the out-of-fold scores."""
    import time

    started = time.perf_counter()
    extractor = extractor_onnx(weights)  # first: without weights, fail before the slow part
    base = files_input(paths, thumbnails)
    extra = augmented_inputs(paths, copies, seed)
    fold_of = guard_folds(groups, labels, folds, seed)
    count = int(fold_of.max()) + 1
    # The extractor's features of every slice and re-upload, computed once (row i of each: a copy of slice i).
    textures = [texture_features(extractor, part.colours) for part in (base, *extra)]
    every_label = None if labels is None else np.asarray(labels)
    mixture_oof, texture_oof = np.zeros(len(fold_of)), np.zeros(len(fold_of))
    mixtures, detectors = [], []
    for fold in range(count):
        train = fold_of != fold
        mixtures.append(fit_model(stacked([part.part(train) for part in (base, *extra)]), components, seed))
        fold_labels = None if every_label is None else np.tile(every_label[train], 1 + len(extra))
        fold_textures = np.concatenate([t[train] for t in textures])
        detectors.append(fit_texture(fold_textures, fold_labels, extractor, texture_components))
        mixture_oof[~train] = guard_scores(mixtures[-1], base.part(~train))
        texture_oof[~train] = texture_scores(detectors[-1], textures[0][~train])
    scores = np.zeros(len(fold_of))
    fold_guards, refused, flagged = [], 0, 0
    for fold in range(count):
        others, held = fold_of != fold, fold_of == fold
        # The normalisers and the thresholds that judge this fold: from the other folds' scores only.
        parts = _detector_parts(mixture_oof[others], texture_oof[others], detectors[fold])
        judged = OodGuard(**{**mixtures[fold].__dict__, **parts})
        threshold, flag = thresholds_from_scores(combined_scores(judged, mixture_oof[others], texture_oof[others]))
        scores[held] = combined_scores(judged, mixture_oof[held], texture_oof[held])
        refused, flagged = refused + int((scores[held] > threshold).sum()), flagged + int((scores[held] > flag).sum())
        fold_guards.append(OodGuard(**{**judged.__dict__, "threshold": threshold, "flag_threshold": flag}))
    final_labels = None if every_label is None else np.tile(every_label, 1 + len(extra))
    detector = fit_texture(np.concatenate(textures), final_labels, extractor, texture_components)
    parts = _detector_parts(mixture_oof, texture_oof, detector)
    final = OodGuard(**{**fit_model(stacked([base, *extra]), components, seed).__dict__, **parts})
    threshold, flag = thresholds_from_scores(combined_scores(final, mixture_oof, texture_oof))
    total = len(scores)
    low, high = clopper_pearson(refused, total)
    validation = {
        "threshold_rule": (
            f"flag: quantile {FLAG_QUANTILE} of {total} out-of-fold scores ({count} duplicate-group folds); "
            f"refusal: the exponential tail above it at {REFUSAL_TAIL}; of the larger of the two detectors' scores, "
            "each normalised by its own thresholds (the same rule on its out-of-fold scores)"
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
    oof = (mixture_oof, texture_oof)
    return guard, GuardValidation(fold_of, tuple(fold_guards), scores, refused, flagged, seconds, oof)


def _detector_parts(mixture: np.ndarray, texture: np.ndarray, detector: TextureModel) -> dict[str, object]:
    """The texture detector and both detectors' (flag, refusal) normalisers from their out-of-fold scores."""
    mixture_refusal, mixture_flag = thresholds_from_scores(mixture)
    texture_refusal, texture_flag = thresholds_from_scores(texture)
    return {
        "texture": detector,
        "mixture_scale": _scale(mixture_flag, mixture_refusal),
        "texture_scale": _scale(texture_flag, texture_refusal),
    }


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
    """The guard's scores in numpy and the ONNX extractor (what the ONNX graph computes): the larger of the two
    detectors' normalised scores (``combined_scores``); a guard without its texture detector (mid-fit) gives the
    mixture's negative log-likelihood alone. Higher is less like an MRI slice."""
    mixture = _mixture_scores(guard, inputs)
    if guard.texture is None:
        return mixture
    return combined_scores(guard, mixture, texture_scores(guard.texture, guard.texture.features(inputs.colours)))


def _mixture_scores(guard: OodGuard, inputs: GuardInput) -> np.ndarray:
    """The negative log-likelihood of the image's log vector under the mixture."""
    vectors = _log_vectors(inputs, guard)
    centred = vectors[:, np.newaxis, :] - guard.mixture_means[np.newaxis]  # (N, K, V)
    whitened = np.einsum("nkv,kvw->nkw", centred, guard.mixture_whitening)
    log_likelihoods = guard.mixture_log_constants - 0.5 * (whitened**2).sum(axis=2)  # (N, K)
    top = log_likelihoods.max(axis=1)
    return -(top + np.log(np.exp(log_likelihoods - top[:, np.newaxis]).sum(axis=1)))
