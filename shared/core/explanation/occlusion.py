"""Occlusion: hide each region of a grid over the head in turn and see how much the class's probability drops.

Deterministic (nothing is drawn at random) and cheap: one copy per region plus the image itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from shared.core.explanation.regions import DEFAULT_CELLS, grid_regions
from shared.core.explanation.result import (
    Explanation,
    PredictMasked,
    checked_image,
    checked_probabilities,
    chosen_label,
    elapsed_ms,
)
from shared.core.masking import Fill, RegionMasks


def one_hidden_each(regions: int) -> np.ndarray:
    """The keep matrix (1 + regions, regions): the image itself, then each region hidden alone."""
    keep = np.ones((regions + 1, regions), dtype=bool)
    keep[np.arange(1, regions + 1), np.arange(regions)] = False
    return keep


def occlusion(
    pixels: np.ndarray,
    predict: PredictMasked,
    class_names: Sequence[str],
    *,
    label: int | None = None,
    fill: Fill = "blur",
    cells: int = DEFAULT_CELLS,
) -> Explanation:
    """Explain one image (uint8 (H, W), at the explained model's size) for ``label`` or the predicted class.

    A region's weight is p(class | image) - p(class | image with the region hidden): positive when hiding it
    lowers the class, so the region supports it.
    """
    image = checked_image(pixels)
    started = time.perf_counter()
    labels = grid_regions(image, cells)
    regions_ms = elapsed_ms(started)
    masks = RegionMasks(labels, one_hidden_each(int(labels.max())), fill)
    started = time.perf_counter()
    probabilities = checked_probabilities(predict(masks), masks.copies, len(class_names))
    predict_ms = elapsed_ms(started)
    started = time.perf_counter()
    chosen = chosen_label(label, probabilities[0])
    drops = probabilities[0, chosen] - probabilities[1:, chosen]
    return Explanation(
        method="occlusion",
        fill=fill,
        label_index=chosen,
        class_names=tuple(class_names),
        probabilities=probabilities[0],
        labels=labels,
        weights={region: float(drop) for region, drop in enumerate(drops, start=1)},
        num_samples=masks.copies,
        seed=None,
        timings_ms={"regions": regions_ms, "predict": predict_ms, "fit": elapsed_ms(started)},
    )
