"""LIME for the zoo's classifiers: superpixels, the explanation, its top regions and an overlay PNG.

One module for both users: the explainer service (its predict function calls the inference
service's batch endpoint, so the served ONNX session does the work) and training (its overlays
run the ONNX model in process, exactly the file that gets registered; services/training/lime_overlays.py).

Importable only with the ``[explain]`` extra: it imports lime, and so scikit-learn, which the
inference service and the gateway never install.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from lime import lime_image
from PIL import Image
from skimage.filters import gaussian
from skimage.segmentation import find_boundaries, slic

logger = logging.getLogger(__name__)

# uint8 grayscale images (N, S, S) at the model's contract size -> class probabilities (N, classes).
PredictFn = Callable[[np.ndarray], np.ndarray]

DEFAULT_NUM_SAMPLES = 500
DEFAULT_NUM_SEGMENTS = 48
DEFAULT_NUM_REGIONS = 5
DEFAULT_BATCH_SIZE = 256
# SLIC on one channel scaled to [0, 1]: 0.1 follows tissue edges while keeping regions compact.
SLIC_COMPACTNESS = 0.1
# Pixels darker than this (after a light blur, on a 0..1 scale) are background, not tissue.
TISSUE_THRESHOLD = 0.06
# Hidden superpixels become black: the background of an MRI slice, so "hidden" means "no tissue here".
HIDE_VALUE = 0


# -- segmentation ----------------------------------------------------------------------------------


def segment(pixels: np.ndarray, num_segments: int = DEFAULT_NUM_SEGMENTS) -> np.ndarray:
    """Superpixels of a grayscale slice: (S, S) int labels 0..K-1, deterministic.

    SLIC runs on the single grayscale channel, inside a tissue mask: the dark background (with dark
    holes such as ventricles) is one region, so LIME's samples are spent on tissue. Falls back to
    SLIC over the whole image when the mask is nearly empty or nearly full.
    """
    gray = np.asarray(pixels, dtype=np.float64)
    if gray.ndim == 3:
        gray = gray[..., 0]
    gray = gray / 255.0
    mask = gaussian(gray, sigma=1.0) > TISSUE_THRESHOLD
    use_mask = 0.05 < mask.mean() < 0.98
    labels = slic(
        gray,
        n_segments=num_segments,
        compactness=SLIC_COMPACTNESS,
        sigma=0.5,
        channel_axis=None,
        mask=mask if use_mask else None,
        start_label=1 if use_mask else 0,
    )
    # lime assumes labels 0..K-1 without gaps; SLIC may skip numbers when it merges small regions.
    _, dense = np.unique(labels, return_inverse=True)
    return dense.reshape(labels.shape).astype(np.int32)


# -- the explanation -------------------------------------------------------------------------------


class _BatchedLimeImageExplainer(lime_image.LimeImageExplainer):
    """lime's image explainer with the perturbed images built as whole arrays.

    Same random draws, same pixels and the same ``classifier_fn`` batching as lime's own
    ``data_labels``, without its per-sample Python loops and progress bar (on a 2-core machine
    they cost as much as a small model), and in the slice's one channel rather than RGB copies.
    """

    def data_labels(
        self,
        image: np.ndarray,
        fudged_image: np.ndarray,
        segments: np.ndarray,
        classifier_fn: Callable[[np.ndarray], np.ndarray],
        num_samples: int,
        batch_size: int = 10,
    ) -> tuple[np.ndarray, np.ndarray]:
        n_features = np.unique(segments).shape[0]
        data = self.random_state.randint(0, 2, num_samples * n_features).reshape((num_samples, n_features))
        data[0, :] = 1  # the first sample is the image itself
        if image.ndim == 3:
            # lime made RGB copies of our grayscale slice: one channel carries everything.
            image, fudged_image = image[..., 0], fudged_image[..., 0]
        labels: list[np.ndarray] = []
        for start in range(0, num_samples, batch_size):
            keep = data[start : start + batch_size].astype(bool)[:, segments]
            labels.append(np.asarray(classifier_fn(np.where(keep, image, fudged_image))))
        return data, np.concatenate(labels, axis=0)


@dataclass(frozen=True)
class Region:
    """One superpixel and its LIME weight for the explained class (positive: supports it)."""

    segment: int
    weight: float
    area_fraction: float
    # x0, y0, x1, y1 as fractions of the image's width and height, so they hold at any resolution.
    bbox: tuple[float, float, float, float]
    background: bool


@dataclass
class Explanation:
    """What LIME found for one image and one class."""

    label_index: int
    class_names: tuple[str, ...]
    probabilities: np.ndarray
    segments: np.ndarray
    weights: dict[int, float]
    intercept: float
    score: float
    local_prediction: float
    num_samples: int
    seed: int
    background_segment: int | None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.class_names[self.label_index]

    @property
    def predicted_label(self) -> str:
        return self.class_names[int(np.argmax(self.probabilities))]

    def ranked_segments(self) -> list[int]:
        """Segments by decreasing absolute weight (ties: lower segment number first)."""
        return sorted(self.weights, key=lambda s: (-abs(self.weights[s]), s))

    def top_regions(self, count: int = DEFAULT_NUM_REGIONS) -> list[Region]:
        """The ``count`` regions with the largest absolute weights, with their size and place."""
        height, width = self.segments.shape
        regions = []
        for seg in self.ranked_segments()[:count]:
            ys, xs = np.nonzero(self.segments == seg)
            bbox = (
                round(float(xs.min()) / width, 4),
                round(float(ys.min()) / height, 4),
                round(float(xs.max() + 1) / width, 4),
                round(float(ys.max() + 1) / height, 4),
            )
            regions.append(
                Region(
                    segment=int(seg),
                    weight=float(self.weights[seg]),
                    area_fraction=round(len(xs) / (width * height), 4),
                    bbox=bbox,
                    background=seg == self.background_segment,
                )
            )
        return regions


def _background_segment(pixels: np.ndarray, segments: np.ndarray) -> int | None:
    """The region that is mostly dark background (mean below the tissue threshold), if one is."""
    means = np.bincount(segments.ravel(), weights=pixels.ravel().astype(np.float64)) / np.maximum(
        np.bincount(segments.ravel()), 1
    )
    darkest = int(np.argmin(means))
    return darkest if means[darkest] / 255.0 < TISSUE_THRESHOLD else None


def explain(
    pixels: np.ndarray,
    predict_fn: PredictFn,
    class_names: Sequence[str],
    *,
    label: int | None = None,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    num_segments: int = DEFAULT_NUM_SEGMENTS,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Explanation:
    """Explain one image (uint8 (S, S) at the model's contract size) for ``label`` or the predicted class.

    ``predict_fn`` gets uint8 batches (at most ``batch_size`` images). Deterministic for a given
    ``seed`` when ``predict_fn`` is.
    """
    image = np.asarray(pixels)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected one uint8 grayscale image (S, S), got {image.dtype} {image.shape}")
    if num_samples < 2:
        raise ValueError("num_samples must be at least 2")
    timings: dict[str, float] = {"predict": 0.0}
    first: list[np.ndarray] = []

    def classifier_fn(batch: np.ndarray) -> np.ndarray:
        # Batches come as (N, S, S); an RGB copy (N, S, S, 3) would carry the same value thrice.
        gray = np.ascontiguousarray(batch[..., 0] if batch.ndim == 4 else batch, dtype=np.uint8)
        started = time.perf_counter()
        probabilities = np.asarray(predict_fn(gray), dtype=np.float64)
        timings["predict"] += (time.perf_counter() - started) * 1000.0
        if probabilities.shape != (len(gray), len(class_names)):
            raise ValueError(f"predict_fn returned {probabilities.shape}, expected ({len(gray)}, {len(class_names)})")
        if not first:
            first.append(probabilities[0])  # sample 0 is the unperturbed image
        return probabilities

    started = time.perf_counter()
    segments = segment(image, num_segments)
    timings["segment"] = (time.perf_counter() - started) * 1000.0

    explainer = _BatchedLimeImageExplainer(feature_selection="none", random_state=seed)
    started = time.perf_counter()
    explained = explainer.explain_instance(
        image,
        classifier_fn,
        labels=(label,) if label is not None else (0,),
        top_labels=None if label is not None else 1,
        hide_color=HIDE_VALUE,
        num_features=int(segments.max()) + 1,
        num_samples=num_samples,
        batch_size=batch_size,
        segmentation_fn=lambda _: segments,
    )
    timings["lime"] = (time.perf_counter() - started) * 1000.0 - timings["predict"]
    chosen = label if label is not None else int(explained.top_labels[0])
    weights = {int(seg): float(weight) for seg, weight in explained.local_exp[chosen]}
    local_pred = np.asarray(explained.local_pred).reshape(-1)
    return Explanation(
        label_index=chosen,
        class_names=tuple(class_names),
        probabilities=first[0],
        segments=segments,
        weights=weights,
        intercept=float(explained.intercept[chosen]),
        score=float(explained.score),
        local_prediction=float(local_pred[0]) if local_pred.size else float("nan"),
        num_samples=num_samples,
        seed=seed,
        background_segment=_background_segment(image, segments),
        timings_ms={key: round(value, 2) for key, value in timings.items()},
    )


def top_overlap(a: Explanation, b: Explanation, count: int = DEFAULT_NUM_REGIONS) -> float:
    """Jaccard overlap of two explanations' top ``count`` regions (same image and segmentation)."""
    first, second = set(a.ranked_segments()[:count]), set(b.ranked_segments()[:count])
    union = first | second
    return len(first & second) / len(union) if union else 1.0


# -- the overlay -----------------------------------------------------------------------------------

_SUPPORT_RGB = np.array([255.0, 72.0, 0.0])  # warm: the region pushes towards the explained class
_OPPOSE_RGB = np.array([0.0, 140.0, 255.0])  # cool: the region pushes away from it
_OUTLINE_RGB = np.array([255.0, 235.0, 0.0])
_MAX_ALPHA = 0.65


def _fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def render_overlay(
    scan: np.ndarray,
    explanation: Explanation,
    *,
    outline: int = DEFAULT_NUM_REGIONS,
    max_side: int = 1024,
) -> bytes:
    """PNG of the grayscale scan (its own size, capped at ``max_side``) with the weights as a heat map.

    Supporting regions are warm, opposing ones cool, opacity grows with the absolute weight; the
    ``outline`` strongest supporting regions are outlined. The background region is left unpainted.
    """
    gray = Image.fromarray(np.asarray(scan, dtype=np.uint8))
    width, height = _fit_within(gray.width, gray.height, max_side)
    if (width, height) != gray.size:
        gray = gray.resize((width, height), Image.Resampling.BILINEAR)
    labels = np.asarray(
        Image.fromarray(explanation.segments.astype(np.int32)).resize((width, height), Image.Resampling.NEAREST),
        dtype=np.int64,
    )
    weight_of = np.zeros(int(explanation.segments.max()) + 1)
    for seg, weight in explanation.weights.items():
        weight_of[seg] = weight
    if explanation.background_segment is not None:
        # Painting the whole background would hide the tissue's colours; its weight is in the regions list.
        weight_of[explanation.background_segment] = 0.0
    scale = float(np.abs(weight_of).max()) or 1.0
    heat = weight_of[labels] / scale  # -1..1 per pixel
    alpha = (_MAX_ALPHA * np.abs(heat))[..., np.newaxis]
    color = np.where((heat >= 0)[..., np.newaxis], _SUPPORT_RGB, _OPPOSE_RGB)
    base = np.repeat(np.asarray(gray, dtype=np.float64)[..., np.newaxis], 3, axis=2)
    out = base * (1.0 - alpha) + color * alpha
    strongest = [
        s for s in explanation.ranked_segments() if explanation.weights[s] > 0 and s != explanation.background_segment
    ][:outline]
    if strongest:
        edges = find_boundaries(np.where(np.isin(labels, strongest), labels, -1), mode="inner") & np.isin(
            labels, strongest
        )
        out[edges] = _OUTLINE_RGB
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
