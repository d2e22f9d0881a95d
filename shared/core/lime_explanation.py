"""LIME for the zoo's classifiers: the explanation of one image, its top regions, and their overlap.

One core for both users: the explainer service (its predict function calls the inference
service's batch endpoint, so the served ONNX session does the work) and training (its overlays
run the ONNX model in process, exactly the file that gets registered; services/training/lime_overlays.py).
Superpixels come from ``shared.core.lime_segments``, the overlay PNG from ``shared.core.lime_overlay``.

Importable only with the ``[explain]`` extra: it imports lime, and so scikit-learn, which the
inference service and the gateway never install.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from lime import lime_image

from shared.core.lime_segments import DEFAULT_NUM_SEGMENTS, background_segment, segment

# uint8 grayscale images (N, S, S) at the model's contract size -> class probabilities (N, classes).
PredictFn = Callable[[np.ndarray], np.ndarray]

DEFAULT_NUM_REGIONS = 5
DEFAULT_BATCH_SIZE = 256
# Hidden superpixels become black: the background of an MRI slice, so "hidden" means "no tissue here".
HIDE_VALUE = 0


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


class _TimedClassifier:
    """lime's ``classifier_fn`` around a PredictFn: grayscale uint8 batches in, checked probabilities out.

    Keeps the time spent predicting and the answer for the unperturbed image (lime's sample 0).
    """

    def __init__(self, predict_fn: PredictFn, num_classes: int) -> None:
        self.predict_fn = predict_fn
        self.num_classes = num_classes
        self.predict_ms = 0.0
        self.first: np.ndarray | None = None

    @property
    def unperturbed(self) -> np.ndarray:
        """The probabilities for the image itself: the first row of the first batch."""
        if self.first is None:
            raise RuntimeError("lime has not classified any image yet")
        return self.first

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        # Batches come as (N, S, S); an RGB copy (N, S, S, 3) would carry the same value thrice.
        gray = np.ascontiguousarray(batch[..., 0] if batch.ndim == 4 else batch, dtype=np.uint8)
        started = time.perf_counter()
        probabilities = np.asarray(self.predict_fn(gray), dtype=np.float64)
        self.predict_ms += (time.perf_counter() - started) * 1000.0
        if probabilities.shape != (len(gray), self.num_classes):
            raise ValueError(f"predict_fn returned {probabilities.shape}, expected ({len(gray)}, {self.num_classes})")
        if self.first is None:
            self.first = probabilities[0]
        return probabilities


def explain(
    pixels: np.ndarray,
    predict_fn: PredictFn,
    class_names: Sequence[str],
    *,
    num_samples: int,
    label: int | None = None,
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
    classifier = _TimedClassifier(predict_fn, len(class_names))
    started = time.perf_counter()
    segments = segment(image, num_segments)
    segment_ms = (time.perf_counter() - started) * 1000.0
    started = time.perf_counter()
    explained = _BatchedLimeImageExplainer(feature_selection="none", random_state=seed).explain_instance(
        image,
        classifier,
        labels=(label,) if label is not None else (0,),
        top_labels=None if label is not None else 1,
        hide_color=HIDE_VALUE,
        num_features=int(segments.max()) + 1,
        num_samples=num_samples,
        batch_size=batch_size,
        segmentation_fn=lambda _: segments,
    )
    lime_ms = (time.perf_counter() - started) * 1000.0 - classifier.predict_ms
    chosen = label if label is not None else int(explained.top_labels[0])
    local_prediction = np.asarray(explained.local_pred).reshape(-1)
    return Explanation(
        label_index=chosen,
        class_names=tuple(class_names),
        probabilities=classifier.unperturbed,
        segments=segments,
        weights={int(seg): float(weight) for seg, weight in explained.local_exp[chosen]},
        intercept=float(explained.intercept[chosen]),
        score=float(explained.score),
        local_prediction=float(local_prediction[0]) if local_prediction.size else float("nan"),
        num_samples=num_samples,
        seed=seed,
        background_segment=background_segment(image, segments),
        timings_ms={
            "predict": round(classifier.predict_ms, 2),
            "segment": round(segment_ms, 2),
            "lime": round(lime_ms, 2),
        },
    )


def top_overlap(a: Explanation, b: Explanation, count: int = DEFAULT_NUM_REGIONS) -> float:
    """Jaccard overlap of two explanations' top ``count`` regions (same image and segmentation)."""
    first, second = set(a.ranked_segments()[:count]), set(b.ranked_segments()[:count])
    union = first | second
    return len(first & second) / len(union) if union else 1.0
