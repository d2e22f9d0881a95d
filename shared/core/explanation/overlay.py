"""The overlay of an explanation: the scan as a PNG with the regions' weights as a heat map.

Importable only with the ``[explain]`` extra: it imports scikit-image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from shared.core.explanation.result import DEFAULT_NUM_REGIONS, Explanation
from shared.core.masking import labels_at

SUPPORT_RGB = np.array([255.0, 72.0, 0.0])  # warm: the region pushes towards the explained class
OPPOSE_RGB = np.array([0.0, 140.0, 255.0])  # cool: the region pushes away from it
SUPPORT_OUTLINE_RGB = np.array([255.0, 235.0, 0.0])  # yellow
OPPOSE_OUTLINE_RGB = np.array([0.0, 255.0, 255.0])  # cyan
MAX_ALPHA = 0.65
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


def _scaled_weights(explanation: Explanation) -> np.ndarray:
    """Weight per label, -1..1; label 0 (outside the head) stays 0, so it is never painted."""
    weight_of = np.zeros(explanation.num_regions + 1)
    for segment, weight in explanation.weights.items():
        weight_of[segment] = weight
    return weight_of / (float(np.abs(weight_of).max()) or 1.0)


def _outline(rgb: np.ndarray, labels: np.ndarray, segments: list[int], color: np.ndarray) -> None:
    """Draw the inner edge of each of ``segments`` in ``color``, in place."""
    if segments:
        inside = np.isin(labels, segments)
        rgb[find_boundaries(np.where(inside, labels, -1), mode="inner") & inside] = color


def render_overlay(
    scan: np.ndarray,
    explanation: Explanation,
    *,
    outline: int = DEFAULT_NUM_REGIONS,
    max_side: int = DEFAULT_MAX_SIDE,
) -> Overlay:
    """The grayscale scan (its own size, capped at ``max_side``) with the weights as a heat map, as a PNG.

    Supporting regions are warm, opposing ones cool, the opacity grows with the absolute weight; the ``outline``
    strongest supporting regions are outlined in yellow, the ``outline`` strongest opposing ones in cyan.
    """
    gray = Image.fromarray(np.asarray(scan, dtype=np.uint8))
    width, height = _fit_within(gray.width, gray.height, max_side)
    if (width, height) != gray.size:
        gray = gray.resize((width, height), Image.Resampling.BILINEAR)
    labels = labels_at(explanation.labels, height, width)
    heat = _scaled_weights(explanation)[labels]  # -1..1 per pixel
    alpha = (MAX_ALPHA * np.abs(heat))[..., np.newaxis]
    color = np.where((heat >= 0)[..., np.newaxis], SUPPORT_RGB, OPPOSE_RGB)
    base = np.repeat(np.asarray(gray, dtype=np.float64)[..., np.newaxis], 3, axis=2)
    rgb = base * (1.0 - alpha) + color * alpha
    _outline(rgb, labels, [region.segment for region in explanation.supporting(outline)], SUPPORT_OUTLINE_RGB)
    _outline(rgb, labels, [region.segment for region in explanation.opposing(outline)], OPPOSE_OUTLINE_RGB)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return Overlay(png=buffer.getvalue(), width=width, height=height)
