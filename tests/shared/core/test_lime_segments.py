"""Superpixels for LIME: dense, deterministic, the background one region of its own."""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.core.lime_segments import background_segment, segment


def test_segments_are_dense_deterministic_and_follow_the_tissue(sample_arrays: Any) -> None:
    image = sample_arrays(128)[0][0]
    labels = segment(image)
    assert labels.shape == image.shape and labels.dtype == np.int32
    assert set(np.unique(labels)) == set(range(labels.max() + 1))  # 0..K-1 without gaps, as lime assumes
    assert 20 <= labels.max() + 1 <= 80
    np.testing.assert_array_equal(segment(image), labels)
    # The dark surroundings form one region of their own.
    corners = {labels[0, 0], labels[0, -1], labels[-1, 0], labels[-1, -1]}
    assert len(corners) == 1
    assert image[labels == corners.pop()].mean() < 20


def test_segmentation_of_a_flat_image_still_works() -> None:
    labels = segment(np.full((32, 32), 120, dtype=np.uint8), num_segments=8)
    assert labels.shape == (32, 32) and labels.min() == 0


def test_the_background_segment_is_the_dark_one_if_any() -> None:
    pixels = np.full((4, 4), 200, dtype=np.uint8)
    pixels[:, :2] = 3
    halves = np.zeros((4, 4), dtype=np.int32)
    halves[:, 2:] = 1
    assert background_segment(pixels, halves) == 0
    assert background_segment(np.full((4, 4), 200, dtype=np.uint8), halves) is None
