"""The in-process predictor: copies made from the pixels at their own size, classified a batch at a time."""

from __future__ import annotations

import numpy as np
import pytest

from shared.core.explanation.inprocess import pixels_predictor
from shared.core.masking import RegionMasks


def _masks(copies: int) -> RegionMasks:
    labels = np.repeat(np.arange(1, 5, dtype=np.int32), 4).reshape(4, 4)  # four rows, one region each
    keep = np.random.default_rng(0).integers(0, 2, (copies, 4)).astype(bool)
    return RegionMasks(labels, keep, "black")


def test_copies_go_to_the_model_in_bounded_chunks_and_come_back_in_order() -> None:
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8) + 10
    batches: list[np.ndarray] = []

    def model(batch: np.ndarray) -> np.ndarray:
        batches.append(batch)
        return batch.reshape(len(batch), -1).mean(axis=1, keepdims=True)

    masks = _masks(600)
    answer = pixels_predictor(pixels, model, batch=256)(masks)
    assert [len(b) for b in batches] == [256, 256, 88]
    assert all(b.dtype == np.uint8 and b.shape[1:] == (8, 8) for b in batches)
    whole = masks.applied(pixels)
    np.testing.assert_array_equal(np.concatenate(batches), whole)
    np.testing.assert_allclose(answer[:, 0], whole.reshape(600, -1).mean(axis=1))


def test_a_batch_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="batch"):
        pixels_predictor(np.zeros((4, 4), dtype=np.uint8), lambda b: b, batch=0)
