"""The overlay PNG: the scan with the heat map, at the scan's size up to a cap, and the size it reports."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from shared.core.contract import CLASS_NAMES
from shared.core.lime_explanation import explain
from shared.core.lime_overlay import Overlay, render_overlay
from tests.lime_models import spot_model_for

spot_model = spot_model_for(128)


def _png(overlay: Overlay) -> Image.Image:
    image = Image.open(io.BytesIO(overlay.png))
    image.load()
    assert image.format == "PNG"
    assert image.size == (overlay.width, overlay.height)  # the size it reports is the size it drew
    return image


def test_overlay_is_the_scan_with_the_heat_map(sample_arrays: Any) -> None:
    image = sample_arrays(128)[0][0]
    result = explain(image, spot_model, CLASS_NAMES, num_samples=200, seed=0)
    overlay = _png(render_overlay(image, result))
    assert overlay.size == (128, 128) and overlay.mode == "RGB"
    rgb = np.asarray(overlay, dtype=np.int64)
    red_minus_blue = rgb[..., 0] - rgb[..., 2]
    # Supporting regions (the spot) are warm, and the background is left as it was (gray).
    assert red_minus_blue[56, 56] > 40
    assert np.all(rgb[0, 0] == image[0, 0])


def test_same_explanation_same_overlay(sample_arrays: Any) -> None:
    image = sample_arrays(128)[0][5]
    first = explain(image, spot_model, CLASS_NAMES, num_samples=200, seed=7)
    again = explain(image, spot_model, CLASS_NAMES, num_samples=200, seed=7)
    assert render_overlay(image, first) == render_overlay(image, again)


def test_overlay_keeps_the_scan_size_and_aspect_up_to_the_cap(sample_arrays: Any) -> None:
    pixels = sample_arrays(128)[0][0]
    result = explain(pixels, spot_model, CLASS_NAMES, num_samples=100, seed=0)
    wide = np.asarray(Image.fromarray(pixels).resize((300, 200)))
    assert _png(render_overlay(wide, result)).size == (300, 200)
    assert _png(render_overlay(wide, result, max_side=150)).size == (150, 100)
