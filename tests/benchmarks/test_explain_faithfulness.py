"""Deletion and insertion curves of benchmarks.explain_faithfulness on a synthetic slice and model."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.explain_faithfulness import (
    BUCKETS,
    REST,
    STEPS,
    bucket_labels,
    curve_keep,
    curves,
    measure_order,
    random_orders,
    strongest_first,
)
from shared.core.masking import RegionMasks

SIDE = 40


def synthetic_slice() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grey disc of a head with a bright blob (the "tumour") in one quadrant; regions: the disc's four
    quadrants. Returns (pixels, head, labels)."""
    rows, cols = np.mgrid[:SIDE, :SIDE]
    head = (rows - 20) ** 2 + (cols - 20) ** 2 <= 18**2
    blob = (rows - 12) ** 2 + (cols - 12) ** 2 <= 4**2
    pixels = np.where(head, 100, 0).astype(np.uint8)
    pixels[blob] = 250
    quadrant = (rows >= 20).astype(np.int32) * 2 + (cols >= 20) + 1
    return pixels, head, np.where(head, quadrant, 0).astype(np.int32)


def blob_model(pixels: np.ndarray):
    """A PredictMasked whose class 0 is the share of the blob still bright (class 1 the rest)."""
    blob_size = int((pixels > 200).sum())

    def predict(masks: RegionMasks) -> np.ndarray:
        copies = masks.applied(pixels)
        share = (copies > 200).reshape(len(copies), -1).sum(axis=1) / blob_size
        p = 0.05 + 0.9 * share
        return np.stack([p, 1 - p], axis=1)

    return predict


def test_buckets_are_fifths_of_a_tenth_of_the_head_in_the_order_given() -> None:
    _, head, labels = synthetic_slice()
    buckets = bucket_labels(labels, head, [4, 1, 3, 2])
    assert (buckets[~head] == 0).all() and (buckets[head] > 0).all()
    sizes = np.bincount(buckets[head], minlength=REST + 1)[1:]
    assert np.abs(sizes[:BUCKETS] - head.sum() / 20).max() <= 1
    assert abs(sizes[REST - 1] - head.sum() / 2) <= 1
    # The first buckets lie in region 4, the first in the order; region 2, the last, is all in REST.
    assert (labels[buckets == 1] == 4).all()
    assert (buckets[labels == 2] == REST).all()


def test_head_pixels_in_no_region_are_ranked_last() -> None:
    _, head, labels = synthetic_slice()
    labels[labels == 1] = 0  # quadrant 1 is head but in no region
    buckets = bucket_labels(labels, head, [2, 3, 4])
    assert (buckets[head & (labels == 0)] == REST).all()


def test_keep_rows_make_the_two_curves() -> None:
    keep = curve_keep()
    assert keep.shape == (2 * STEPS, REST)
    deletion, insertion = keep[:STEPS], keep[STEPS:]
    assert deletion[0].all() and deletion[:, REST - 1].all()
    assert deletion[STEPS - 1].sum() == 1  # half the head hidden: only REST kept
    assert not insertion[0].any() and not insertion[:, REST - 1].any()
    assert insertion[STEPS - 1].sum() == BUCKETS
    # Each step hides (deletion) or reveals (insertion) one bucket more.
    assert (np.diff(deletion.sum(axis=1)) == -1).all() and (np.diff(insertion.sum(axis=1)) == 1).all()


def test_curves_are_relative_to_the_intact_image() -> None:
    probabilities = np.full((2 * STEPS, 2), 0.5)
    probabilities[:, 1] = np.linspace(0.8, 0.1, 2 * STEPS)
    found = curves(probabilities, 1)
    assert found.deletion[0] == 1.0
    assert found.deletion_auc == pytest.approx(np.mean(probabilities[:STEPS, 1]) / 0.8)
    with pytest.raises(ValueError, match="22 rows"):
        curves(probabilities[:5], 1)


def test_ranking_the_blob_first_beats_ranking_it_last_and_random_orders() -> None:
    pixels, head, labels = synthetic_slice()
    predict = blob_model(pixels)
    weights = {1: 0.9, 2: 0.01, 3: 0.0, 4: -0.2}  # the blob is in region 1
    best = measure_order(predict, labels, head, strongest_first(weights), 0, "grey")
    worst = measure_order(predict, labels, head, [4, 3, 2, 1], 0, "grey")
    assert best.deletion[0] == 1.0 and best.deletion[-1] < 0.1  # the blob is hidden by 50% of the head
    assert best.deletion_auc < worst.deletion_auc
    assert best.insertion_auc > worst.insertion_auc
    assert worst.deletion_auc == pytest.approx(1.0)  # the blob's quadrant is the half never hidden
    randoms = [measure_order(predict, labels, head, o, 0, "blur") for o in random_orders([1, 2, 3, 4], [0, 1, 2])]
    assert best.deletion_auc < np.mean([c.deletion_auc for c in randoms])


def test_orders() -> None:
    assert strongest_first({1: 0.2, 2: 0.5, 3: 0.2, 4: -1.0}) == [2, 1, 3, 4]
    regions = list(range(1, 21))
    orders = random_orders(regions, [0, 1, 2])
    assert orders == random_orders(regions, [0, 1, 2])
    assert all(sorted(order) == regions for order in orders)
    assert len({tuple(order) for order in orders}) == 3
