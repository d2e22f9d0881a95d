"""Label maps: the head mask (holes filled, specks and background out) and the regions drawn inside it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shared.core.explanation.regions import dense_labels, grid_regions, head_mask, head_rim, slic_regions


def _disc(size: int = 96, radius: float = 36, value: int = 160, background: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc (the head) on a flat background, and where the disc is."""
    rows, cols = np.mgrid[:size, :size]
    inside = (rows - size / 2) ** 2 + (cols - size / 2) ** 2 <= radius**2
    return np.where(inside, value, background).astype(np.uint8), inside


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_the_head_mask_fills_holes_and_drops_specks() -> None:
    image, disc = _disc()
    image[40:56, 40:56] = 0  # a dark ventricle inside the head
    image[2:4, 2:4] = 255  # a bright speck in the corner
    mask = head_mask(image)
    assert mask.dtype == np.bool_ and mask.shape == image.shape
    assert mask[40:56, 40:56].all()  # the ventricle is head
    assert not mask[:6, :6].any()  # the speck is not
    assert mask[disc].all() and _overlap(mask, disc) > 0.9  # the blur widens the outline by a pixel or two


def test_the_head_mask_of_a_sample_slice_leaves_the_dark_corners_out(sample_arrays: Any) -> None:
    image = sample_arrays(128)[0][0]
    mask = head_mask(image)
    assert 0.3 < mask.mean() < 0.95
    assert not mask[[0, 0, -1, -1], [0, -1, 0, -1]].any()
    assert image[~mask].mean() < 20


def test_a_noisy_background_is_not_head() -> None:
    image, disc = _disc(background=0)
    noise = np.random.default_rng(0).integers(15, 40, image.shape)  # above the fixed threshold (0.06 = 15)
    mask = head_mask(np.where(disc, image, noise).astype(np.uint8))
    assert _overlap(mask, disc) > 0.9


def test_a_frame_burnt_into_the_image_does_not_make_the_background_head() -> None:
    image, disc = _disc()
    image[:2, :], image[-2:, :], image[:, :2], image[:, -2:] = 255, 255, 255, 255
    mask = head_mask(image)
    assert not mask[10:20, 10:20].any()  # the background between frame and head
    assert mask[disc].all()


@pytest.mark.parametrize("value", [0, 3, 120, 255])
def test_without_a_head_outline_the_whole_image_is_head(value: int) -> None:
    assert head_mask(np.full((32, 32), value, dtype=np.uint8)).all()


def test_the_rim_is_the_heads_outer_band() -> None:
    image, disc = _disc()
    mask = head_mask(image)
    rim = head_rim(mask)
    assert not (rim & ~mask).any()
    assert rim[48, 12:16].all() and not rim[48, 30:66].any()  # the edge of the disc, not its middle
    wider = head_rim(mask, fraction=0.5)
    assert rim.sum() < wider.sum() and not (rim & ~wider).any()


def test_the_rim_counts_the_image_edge_as_outside() -> None:
    whole = np.ones((20, 20), dtype=bool)
    rim = head_rim(whole, fraction=0.2)
    assert rim[0].all() and rim[:, -1].all() and not rim[10, 10]


def test_dense_labels_close_the_gaps_and_keep_zero() -> None:
    labels = np.array([[0, 5, 5], [9, 0, 2]])
    np.testing.assert_array_equal(dense_labels(labels), [[0, 2, 2], [3, 0, 1]])
    np.testing.assert_array_equal(dense_labels(np.array([[4, 7]])), [[1, 2]])


def _check_labels(labels: np.ndarray, image: np.ndarray) -> int:
    """Dense 1..R inside the head, 0 exactly outside it; answers R."""
    assert labels.dtype == np.int32 and labels.shape == image.shape
    regions = int(labels.max())
    assert set(np.unique(labels)) == {0, *range(1, regions + 1)}
    np.testing.assert_array_equal(labels > 0, head_mask(image))
    return regions


def test_the_grid_covers_the_head_only(sample_arrays: Any) -> None:
    image = sample_arrays(128)[0][0]
    labels = grid_regions(image, cells=8)
    regions = _check_labels(labels, image)
    assert 30 <= regions <= 64
    rows, cols = np.nonzero(labels)
    # Each region is one cell of the grid over the head's bounding box: at most an eighth of it each way.
    for region in range(1, regions + 1):
        r, c = np.nonzero(labels == region)
        assert np.ptp(r) < (np.ptp(rows) + 1) / 8 + 1 and np.ptp(c) < (np.ptp(cols) + 1) / 8 + 1
    assert grid_regions(image, cells=4).max() <= 16
    np.testing.assert_array_equal(grid_regions(image, cells=8), labels)


def test_a_grid_of_a_headless_image_covers_it_all() -> None:
    labels = grid_regions(np.full((16, 16), 90, dtype=np.uint8), cells=4)
    assert labels.min() == 1 and labels.max() == 16
    with pytest.raises(ValueError, match="cells"):
        grid_regions(np.full((16, 16), 90, dtype=np.uint8), cells=0)


def test_superpixels_lie_inside_the_head_and_are_deterministic(sample_arrays: Any) -> None:
    image = sample_arrays(128)[0][3]
    labels = slic_regions(image, num_segments=48)
    regions = _check_labels(labels, image)
    assert 20 <= regions <= 80
    np.testing.assert_array_equal(slic_regions(image, num_segments=48), labels)
    assert slic_regions(image, num_segments=12).max() < regions


def test_superpixels_of_a_flat_image_still_work() -> None:
    labels = slic_regions(np.full((32, 32), 120, dtype=np.uint8), num_segments=8)
    assert labels.shape == (32, 32) and labels.min() == 1


def test_a_colour_image_is_refused() -> None:
    with pytest.raises(ValueError, match="grayscale"):
        head_mask(np.zeros((8, 8, 3), dtype=np.uint8))
