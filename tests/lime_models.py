"""A fake classifier whose answer we know, for the LIME tests of shared/ and of training's overlays."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shared.core.contract import CLASS_NAMES

GLIOMA = CLASS_NAMES.index("glioma")


def spot_model_for(size: int) -> Callable[[np.ndarray], np.ndarray]:
    """A fake model that says "glioma" as strongly as a central square is bright, ignoring the rest.

    The square is rows/columns size*5/16 .. size*9/16 (40..72 of a 128 px slice).
    """
    low, high = size * 5 // 16, size * 9 // 16

    def model(batch: np.ndarray) -> np.ndarray:
        brightness = batch[:, low:high, low:high].reshape(len(batch), -1).mean(axis=1) / 255.0
        glioma = 0.4 + 0.5 * brightness  # always the top class
        out = np.repeat(((1.0 - glioma) / 3.0)[:, None], len(CLASS_NAMES), axis=1)
        out[:, GLIOMA] = glioma
        return out

    return model
