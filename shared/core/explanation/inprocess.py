"""A model run in this process on copies of a slice with regions hidden: training's overlays, tests, benchmarks.

The explainer service does not use it: its copies are made and classified by the inference service.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shared.core.explanation.result import PredictMasked
from shared.core.masking import RegionMasks

# uint8 grayscale images (N, H, W) -> class probabilities (N, classes).
PixelsPredict = Callable[[np.ndarray], np.ndarray]
DEFAULT_BATCH = 256


def pixels_predictor(pixels: np.ndarray, predict_fn: PixelsPredict, batch: int = DEFAULT_BATCH) -> PredictMasked:
    """The copies of ``pixels`` (uint8 (H, W), at the model's size) that masks ask for, classified by
    ``predict_fn`` ``batch`` at a time, so memory stays bounded however many copies there are."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    image = np.asarray(pixels, dtype=np.uint8)

    def predict(masks: RegionMasks) -> np.ndarray:
        answers = [
            np.asarray(predict_fn(masks.applied(image, slice(start, start + batch))))
            for start in range(0, masks.copies, batch)
        ]
        return np.concatenate(answers, axis=0)

    return predict
