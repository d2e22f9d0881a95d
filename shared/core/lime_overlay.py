"""The overlay of a LIME explanation: the scan as a PNG with the regions' weights as a heat map.

Importable only with the ``[explain]`` extra: it imports scikit-image (and the explanation, lime).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from shared.core.lime_explanation import DEFAULT_NUM_REGIONS, Explanation

_SUPPORT_RGB = np.array([255.0, 72.0, 0.0])  # warm: the region pushes towards the explained class
_OPPOSE_RGB = np.array([0.0, 140.0, 255.0])  # cool: the region pushes away from it
_OUTLINE_RGB = np.array([255.0, 235.0, 0.0])
_MAX_ALPHA = 0.65
DEFAULT_MAX_SIDE = 1024


@dataclass(frozen=True)
class Overlay:
    """An encoded overlay and the size it was drawn at, so no caller has to decode the PNG again."""

    png: bytes
    width: int
    height: int


def _fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _segment_weights(explanation: Explanation) -> np.ndarray:
    """Each segment's weight scaled to -1..1, the background's set to 0."""
    weight_of = np.zeros(int(explanation.segments.max()) + 1)
    for seg, weight in explanation.weights.items():
        weight_of[seg] = weight
    if explanation.background_segment is not None:
        # Painting the whole background would hide the tissue's colours; its weight is in the regions list.
        weight_of[explanation.background_segment] = 0.0
    return weight_of / (float(np.abs(weight_of).max()) or 1.0)


def _outline_strongest(rgb: np.ndarray, labels: np.ndarray, explanation: Explanation, count: int) -> None:
    """Outline the ``count`` strongest supporting regions (never the background) in place."""
    strongest = [
        s for s in explanation.ranked_segments() if explanation.weights[s] > 0 and s != explanation.background_segment
    ][:count]
    if strongest:
        inside = np.isin(labels, strongest)
        rgb[find_boundaries(np.where(inside, labels, -1), mode="inner") & inside] = _OUTLINE_RGB


def render_overlay(
    scan: np.ndarray,
    explanation: Explanation,
    *,
    outline: int = DEFAULT_NUM_REGIONS,
    max_side: int = DEFAULT_MAX_SIDE,
) -> Overlay:
    """The grayscale scan (its own size, capped at ``max_side``) with the weights as a heat map, as a PNG.

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
    heat = _segment_weights(explanation)[labels]  # -1..1 per pixel
    alpha = (_MAX_ALPHA * np.abs(heat))[..., np.newaxis]
    color = np.where((heat >= 0)[..., np.newaxis], _SUPPORT_RGB, _OPPOSE_RGB)
    base = np.repeat(np.asarray(gray, dtype=np.float64)[..., np.newaxis], 3, axis=2)
    rgb = base * (1.0 - alpha) + color * alpha
    _outline_strongest(rgb, labels, explanation, outline)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return Overlay(png=buffer.getvalue(), width=width, height=height)
