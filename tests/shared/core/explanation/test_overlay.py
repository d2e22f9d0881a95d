"""The overlay PNG: the scan with the heat map, supporting regions outlined yellow and opposing ones cyan."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from shared.core.contract import CLASS_NAMES
from shared.core.explanation.inprocess import pixels_predictor
from shared.core.explanation.occlusion import occlusion
from shared.core.explanation.overlay import (
    OPPOSE_OUTLINE_RGB,
    SUPPORT_OUTLINE_RGB,
    Overlay,
    render_overlay,
)
from shared.core.explanation.result import Explanation
from tests.explanation_models import spot_model_for


def _png(overlay: Overlay) -> np.ndarray:
    image = Image.open(io.BytesIO(overlay.png))
    image.load()
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.size == (overlay.width, overlay.height)  # the size it reports is the size it drew
    return np.asarray(image, dtype=np.int64)


def _halves(size: int = 40) -> tuple[np.ndarray, Explanation]:
    """A flat scan; label 0 in a frame 8 px wide, region 1 (supports) on the left, region 2 (opposes) right."""
    labels = np.zeros((size, size), dtype=np.int32)
    labels[8:-8, 8 : size // 2] = 1
    labels[8:-8, size // 2 : -8] = 2
    explanation = Explanation(
        method="occlusion",
        fill="blur",
        label_index=0,
        class_names=tuple(CLASS_NAMES),
        probabilities=np.full(4, 0.25),
        labels=labels,
        weights={1: 0.3, 2: -0.3},
        num_samples=3,
        seed=None,
    )
    return np.full((size, size), 100, dtype=np.uint8), explanation


def test_warm_supports_cool_opposes_and_the_background_stays() -> None:
    scan, explanation = _halves()
    rgb = _png(render_overlay(scan, explanation))
    assert rgb.shape == (40, 40, 3)
    assert (rgb[:8] == 100).all() and (rgb[:, :8] == 100).all()  # label 0 is never painted
    assert rgb[20, 14, 0] - rgb[20, 14, 2] > 100  # inside region 1: warm
    assert rgb[20, 26, 2] - rgb[20, 26, 0] > 100  # inside region 2: cool
    assert (rgb[8, 8:20] == SUPPORT_OUTLINE_RGB).all()  # region 1's edge: yellow
    assert (rgb[8, 21:32] == OPPOSE_OUTLINE_RGB).all()  # region 2's edge: cyan


def test_outline_zero_draws_no_edge() -> None:
    scan, explanation = _halves()
    rgb = _png(render_overlay(scan, explanation, outline=0))
    assert not (rgb == SUPPORT_OUTLINE_RGB).all(axis=2).any()
    assert not (rgb == OPPOSE_OUTLINE_RGB).all(axis=2).any()


def test_overlay_keeps_the_scan_size_and_aspect_up_to_the_cap(sample_arrays: Any) -> None:
    pixels = sample_arrays(128)[0][0]
    result = occlusion(pixels, pixels_predictor(pixels, spot_model_for(128)), CLASS_NAMES, fill="black")
    wide = np.asarray(Image.fromarray(pixels).resize((300, 200)))
    assert _png(render_overlay(wide, result)).shape == (200, 300, 3)
    assert _png(render_overlay(wide, result, max_side=150)).shape == (100, 150, 3)
    # The spot supports the class: warm in the middle; the dark corner is outside the head, left as it is.
    rgb = _png(render_overlay(pixels, result))
    assert rgb[56, 56, 0] - rgb[56, 56, 2] > 40
    assert (rgb[0, 0] == pixels[0, 0]).all()


def test_same_explanation_same_overlay() -> None:
    scan, explanation = _halves()
    assert render_overlay(scan, explanation) == render_overlay(scan, explanation)
