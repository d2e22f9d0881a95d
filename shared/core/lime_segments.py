"""Superpixels of a grayscale MRI slice for LIME: SLIC inside the tissue, and which region is background.

Importable only with the ``[explain]`` extra: it imports scikit-image, which the inference service
and the gateway never install.
"""

from __future__ import annotations

import numpy as np
from skimage.filters import gaussian
from skimage.segmentation import slic

DEFAULT_NUM_SEGMENTS = 48
# SLIC on one channel scaled to [0, 1]: 0.1 follows tissue edges while keeping regions compact.
SLIC_COMPACTNESS = 0.1
# Pixels darker than this (after a light blur, on a 0..1 scale) are background, not tissue.
TISSUE_THRESHOLD = 0.06


def segment(pixels: np.ndarray, num_segments: int = DEFAULT_NUM_SEGMENTS) -> np.ndarray:
    """Superpixels of a grayscale slice: (S, S) int labels 0..K-1, deterministic.

    SLIC runs on the single grayscale channel, inside a tissue mask: the dark background (with dark
    holes such as ventricles) is one region, so LIME's samples are spent on tissue. Falls back to
    SLIC over the whole image when the mask is nearly empty or nearly full.
    """
    gray = np.asarray(pixels, dtype=np.float64)
    if gray.ndim == 3:
        gray = gray[..., 0]
    gray = gray / 255.0
    mask = gaussian(gray, sigma=1.0) > TISSUE_THRESHOLD
    use_mask = 0.05 < mask.mean() < 0.98
    labels = slic(
        gray,
        n_segments=num_segments,
        compactness=SLIC_COMPACTNESS,
        sigma=0.5,
        channel_axis=None,
        mask=mask if use_mask else None,
        start_label=1 if use_mask else 0,
    )
    # lime assumes labels 0..K-1 without gaps; SLIC may skip numbers when it merges small regions.
    _, dense = np.unique(labels, return_inverse=True)
    return dense.reshape(labels.shape).astype(np.int32)


def background_segment(pixels: np.ndarray, segments: np.ndarray) -> int | None:
    """The region that is mostly dark background (mean below the tissue threshold), if one is."""
    means = np.bincount(segments.ravel(), weights=pixels.ravel().astype(np.float64)) / np.maximum(
        np.bincount(segments.ravel()), 1
    )
    darkest = int(np.argmin(means))
    return darkest if means[darkest] / 255.0 < TISSUE_THRESHOLD else None
