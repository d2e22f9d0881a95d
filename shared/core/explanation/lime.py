"""LIME on the head's superpixels: random subsets hidden, a weighted linear model of the class's probability.

The samples and the fit are those of the ``lime`` library's image explainer (``lime_image``): a seeded 0/1
matrix with the first row all ones, cosine distances to that row, the kernel sqrt(exp(-d^2 / 0.25^2)), and
``lime_base.LimeBase``'s ridge fit over every region. Only the regions differ: SLIC superpixels inside the head,
the background never a feature, and the copies made by ``shared.core.masking`` at the model's own size.

Importable only with the ``[explain]`` extra: it imports lime and scikit-learn.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from lime import lime_base
from sklearn.metrics import pairwise_distances

from shared.core.explanation.regions import DEFAULT_NUM_SEGMENTS, slic_regions
from shared.core.explanation.result import (
    Explanation,
    PredictMasked,
    checked_image,
    checked_probabilities,
    chosen_label,
    elapsed_ms,
)
from shared.core.masking import Fill, RegionMasks

KERNEL_WIDTH = 0.25
DEFAULT_NUM_SAMPLES = 500


def kernel(distances: np.ndarray) -> np.ndarray:
    """``lime_image``'s sample weights: an exponential kernel of width 0.25 on the cosine distance."""
    return np.sqrt(np.exp(-(distances**2) / KERNEL_WIDTH**2))


def random_keep(num_samples: int, regions: int, seed: int) -> np.ndarray:
    """``lime_image``'s samples: a seeded 0/1 matrix (num_samples, regions), the first row the image itself."""
    data = np.random.RandomState(seed).randint(0, 2, num_samples * regions).reshape((num_samples, regions))
    data[0, :] = 1
    return data


def lime(
    pixels: np.ndarray,
    predict: PredictMasked,
    class_names: Sequence[str],
    *,
    label: int | None = None,
    fill: Fill = "blur",
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    num_segments: int = DEFAULT_NUM_SEGMENTS,
) -> Explanation:
    """Explain one image (uint8 (H, W), at the explained model's size) for ``label`` or the predicted class.

    Deterministic for a given ``seed`` when ``predict`` is. ``fit_r2`` says how well the linear model fits the
    samples: a low value means the weights describe the model poorly.
    """
    image = checked_image(pixels)
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    started = time.perf_counter()
    labels = slic_regions(image, num_segments)
    regions_ms = elapsed_ms(started)
    data = random_keep(num_samples, int(labels.max()), seed)
    masks = RegionMasks(labels, data.astype(bool), fill)
    started = time.perf_counter()
    probabilities = checked_probabilities(predict(masks), num_samples, len(class_names))
    predict_ms = elapsed_ms(started)
    started = time.perf_counter()
    chosen = chosen_label(label, probabilities[0])
    distances = pairwise_distances(data, data[0:1], metric="cosine").ravel()
    intercept, features, fit_r2, local_prediction = lime_base.LimeBase(
        kernel, verbose=False, random_state=seed
    ).explain_instance_with_data(
        data, probabilities, distances, chosen, num_features=data.shape[1], feature_selection="none"
    )
    return Explanation(
        method="lime",
        fill=fill,
        label_index=chosen,
        class_names=tuple(class_names),
        probabilities=probabilities[0],
        labels=labels,
        # Feature i is column i of the keep matrix: region i + 1.
        weights={int(feature) + 1: float(weight) for feature, weight in sorted(features)},
        num_samples=num_samples,
        seed=seed,
        fit_r2=float(fit_r2),
        intercept=float(intercept),
        local_prediction=float(np.asarray(local_prediction).reshape(-1)[0]),
        timings_ms={"regions": regions_ms, "predict": predict_ms, "fit": elapsed_ms(started)},
    )
