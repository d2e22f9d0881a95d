"""Fake classifiers whose answer we know, for the explanation tests of shared/ and of training's overlays."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shared.core.contract import CLASS_NAMES

GLIOMA = CLASS_NAMES.index("glioma")
PixelsModel = Callable[[np.ndarray], np.ndarray]


def _glioma_by(score: np.ndarray) -> np.ndarray:
    """Probabilities with glioma = 0.4 + 0.5 * score (score 0..1, so always the top class), the rest equal."""
    glioma = 0.4 + 0.5 * score
    out = np.repeat(((1.0 - glioma) / 3.0)[:, None], len(CLASS_NAMES), axis=1)
    out[:, GLIOMA] = glioma
    return out


def spot_model_for(size: int) -> PixelsModel:
    """A fake model that says "glioma" as strongly as a central square is bright, ignoring the rest.

    The square is rows/columns size*5/16 .. size*9/16 (40..72 of a 128 px slice).
    """
    low, high = size * 5 // 16, size * 9 // 16

    def model(batch: np.ndarray) -> np.ndarray:
        return _glioma_by(batch[:, low:high, low:high].reshape(len(batch), -1).mean(axis=1) / 255.0)

    return model


def looking_at(original: np.ndarray, where: np.ndarray) -> PixelsModel:
    """A fake model that says "glioma" as strongly as the pixels ``where`` (bool, the image's shape) are those of
    ``original``, whatever the rest shows: hiding any of them, by any fill, lowers it."""

    def model(batch: np.ndarray) -> np.ndarray:
        same = (batch == original[None]) & where[None]
        return _glioma_by(same.reshape(len(batch), -1).sum(axis=1) / where.sum())

    return model
