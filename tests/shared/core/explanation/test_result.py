"""An explanation's answer: supporting and opposing regions apart, their place and size, and the overlap helper."""

from __future__ import annotations

import numpy as np
import pytest

from shared.core.contract import CLASS_NAMES
from shared.core.explanation.result import Explanation, Region, top_overlap

# A 4 x 4 image: label 0 in the left column, regions 1..4 over the rest.
LABELS = np.array([[0, 1, 1, 2], [0, 1, 1, 2], [0, 3, 3, 4], [0, 3, 3, 4]], dtype=np.int32)


def _with_weights(weights: dict[int, float]) -> Explanation:
    return Explanation(
        method="occlusion",
        fill="blur",
        label_index=0,
        class_names=tuple(CLASS_NAMES),
        probabilities=np.array([0.1, 0.2, 0.3, 0.4]),
        labels=LABELS,
        weights=weights,
        num_samples=5,
        seed=None,
    )


def test_supporting_and_opposing_regions_are_apart_strongest_first() -> None:
    result = _with_weights({1: 0.2, 2: -0.5, 3: 0.4, 4: -0.1})
    assert [r.segment for r in result.supporting()] == [3, 1]
    assert [r.segment for r in result.opposing()] == [2, 4]
    assert [r.segment for r in result.supporting(1)] == [3]
    assert [r.segment for r in result.opposing(None)] == [2, 4]
    assert result.ranked() == [2, 3, 1, 4]
    assert (result.label, result.predicted_label, result.num_regions) == (CLASS_NAMES[0], CLASS_NAMES[3], 4)


def test_a_region_of_no_effect_is_neither_supporting_nor_opposing() -> None:
    result = _with_weights({1: 0.0, 2: 0.0, 3: 0.3, 4: 0.0})
    assert [r.segment for r in result.supporting()] == [3]
    assert result.opposing() == []


def test_regions_say_their_place_and_size() -> None:
    result = _with_weights({1: 0.2, 2: -0.5, 3: 0.4, 4: -0.1})
    assert result.supporting(1) == [Region(segment=3, weight=0.4, area_fraction=0.25, bbox=(0.25, 0.5, 0.75, 1.0))]
    assert result.opposing(1) == [Region(segment=2, weight=-0.5, area_fraction=0.125, bbox=(0.75, 0.0, 1.0, 0.5))]


def test_top_overlap_is_the_jaccard_index_of_the_top_supporting_regions() -> None:
    a = _with_weights({1: 0.9, 2: 0.8, 3: 0.1, 4: -1.0})  # top two supporting: {1, 2}
    partial = _with_weights({1: 0.5, 2: 0.0, 3: 0.6, 4: 0.1})  # {3, 1}: one shared of three
    disjoint = _with_weights({1: -0.01, 2: 0.0, 3: 0.7, 4: 0.9})  # {4, 3}
    assert top_overlap(a, a, count=2) == 1.0
    assert top_overlap(a, partial, count=2) == pytest.approx(1 / 3)
    assert top_overlap(a, disjoint, count=2) == 0.0
    assert (
        top_overlap(_with_weights(dict.fromkeys(range(1, 5), -1.0)), _with_weights(dict.fromkeys(range(1, 5), 0.0)))
        == 1.0
    )
