"""The duplicate guard: a planted near-duplicate pair is found and kept on one side of every split."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.training.duplicates import duplicate_groups, group_summary
from services.training.splits import split_train_test
from shared.core.dataset import SAMPLE_DATA_DIR, discover, load_arrays


def reencode(pixels: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    layout = discover(SAMPLE_DATA_DIR)
    return load_arrays(layout.train, 64), layout.train.labels


def test_reencoded_copy_is_grouped_with_its_original(sample: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, labels = sample
    planted = np.concatenate([pixels, reencode(pixels[5], quality=60)[np.newaxis]])
    groups = duplicate_groups(planted)
    assert groups[-1] == groups[5]
    summary = group_summary(duplicate_groups(pixels))
    # The sample holds three real near-duplicate pairs (checked by eye); different slices stay apart.
    assert 1 <= summary["duplicate_groups"] <= 6 and summary["largest_duplicate_group"] <= 3, summary


@pytest.mark.parametrize("index", [7, 20, 50, 90])
def test_slight_brightness_change_and_resize_count_as_duplicates(
    sample: tuple[np.ndarray, np.ndarray], index: int
) -> None:
    pixels, _ = sample
    original = pixels[index]
    brighter = np.clip(original.astype(int) * 1.1 + 5, 0, 255).astype(np.uint8)
    resized = np.asarray(Image.fromarray(original).resize((48, 48)).resize((64, 64)))
    groups = duplicate_groups(np.stack([original, brighter, resized, pixels[(index + 33) % len(pixels)]]))
    assert groups[0] == groups[1] == groups[2] != groups[3]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_planted_pair_stays_on_one_side_of_the_split(sample: tuple[np.ndarray, np.ndarray], seed: int) -> None:
    pixels, labels = sample
    copies = np.stack([reencode(pixels[i], quality=70) for i in range(0, 40, 4)])
    all_pixels = np.concatenate([pixels, copies])
    all_labels = np.concatenate([labels, labels[0:40:4]])
    groups = duplicate_groups(all_pixels)
    train, test = split_train_test(all_labels, groups, 0.2, seed)
    assert set(train).isdisjoint(test) and len(train) + len(test) == len(all_labels)
    for copy_index, original in zip(range(len(pixels), len(all_pixels)), range(0, 40, 4), strict=True):
        assert (copy_index in test) == (original in test), f"pair ({original}, {copy_index}) was split"
    assert set(np.unique(all_labels[test])) == set(np.unique(all_labels)), "stratified: every class in test"
