"""The LIME core: explanations of a model whose answer we know, their top regions and their overlap."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shared.core.contract import CLASS_NAMES
from shared.core.lime_explanation import Explanation, explain, top_overlap
from tests.lime_models import spot_model_for

# The square the fake model looks at: rows/columns 40..72 of a 128 px slice.
SPOT = (slice(40, 72), slice(40, 72))
spot_model = spot_model_for(128)


def _slice(sample_arrays: Any, index: int = 0, size: int = 128) -> np.ndarray:
    pixels, _ = sample_arrays(size)
    return pixels[index]


def test_the_region_the_model_looks_at_comes_first(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    result = explain(image, spot_model, CLASS_NAMES, num_samples=300, seed=0)
    assert result.label == "glioma" == result.predicted_label
    np.testing.assert_allclose(result.probabilities, spot_model(image[None])[0])
    in_spot = np.zeros(image.shape, dtype=bool)
    in_spot[SPOT] = True
    top = result.top_regions(3)
    for region in top:
        assert region.weight > 0
        assert in_spot[result.segments == region.segment].mean() > 0.5, region
    outside = [s for s in result.weights if in_spot[result.segments == s].mean() == 0]
    assert max(abs(result.weights[s]) for s in outside) < 0.2 * top[0].weight
    assert result.score > 0.9  # the fake model is linear in the regions: LIME's model fits it


def test_same_seed_same_explanation_other_seed_other_samples(sample_arrays: Any) -> None:
    image = _slice(sample_arrays, 5)
    first = explain(image, spot_model, CLASS_NAMES, num_samples=200, seed=7)
    again = explain(image, spot_model, CLASS_NAMES, num_samples=200, seed=7)
    other = explain(image, spot_model, CLASS_NAMES, num_samples=200, seed=8)
    assert first.weights == again.weights
    assert first.intercept == again.intercept
    assert first.weights != other.weights
    assert top_overlap(first, again) == 1.0


def _with_weights(weights: dict[int, float]) -> Explanation:
    """An explanation of a 2 x 2 image whose regions carry ``weights``."""
    return Explanation(
        label_index=0,
        class_names=tuple(CLASS_NAMES),
        probabilities=np.full(len(CLASS_NAMES), 0.25),
        segments=np.arange(4, dtype=np.int32).reshape(2, 2),
        weights=weights,
        intercept=0.0,
        score=1.0,
        local_prediction=0.25,
        num_samples=2,
        seed=0,
        background_segment=None,
    )


def test_top_overlap_is_the_jaccard_index_of_the_top_regions() -> None:
    a = _with_weights({0: 0.9, 1: -0.8, 2: 0.1, 3: 0.0})  # top two by |weight|: {0, 1}
    partial = _with_weights({0: 0.5, 1: 0.0, 2: -0.6, 3: 0.1})  # {0, 2}: one shared of three
    disjoint = _with_weights({0: 0.01, 1: 0.0, 2: 0.7, 3: -0.9})  # {2, 3}
    assert top_overlap(a, a, count=2) == 1.0
    assert top_overlap(a, partial, count=2) == pytest.approx(1 / 3)
    assert top_overlap(a, disjoint, count=2) == 0.0
    assert top_overlap(a, disjoint, count=4) == 1.0  # every region is in both top fours


def test_a_chosen_label_is_explained_instead_of_the_predicted_one(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    notumor = CLASS_NAMES.index("notumor")
    result = explain(image, spot_model, CLASS_NAMES, label=notumor, num_samples=200, seed=0)
    assert result.label == "notumor" and result.predicted_label == "glioma"
    # notumor falls as the spot brightens: the spot's regions now weigh against the class.
    assert result.top_regions(1)[0].weight < 0


def test_the_predict_function_gets_few_bounded_uint8_batches(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    batches: list[tuple[int, np.dtype, tuple[int, ...]]] = []

    def recording(batch: np.ndarray) -> np.ndarray:
        batches.append((len(batch), batch.dtype, batch.shape[1:]))
        return spot_model(batch)

    explain(image, recording, CLASS_NAMES, num_samples=500, seed=0, batch_size=128)
    assert [n for n, _, _ in batches] == [128, 128, 128, 116]
    assert all(dtype == np.uint8 and shape == image.shape for _, dtype, shape in batches)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8 grayscale"):
        explain(np.zeros((8, 8, 3), dtype=np.uint8), spot_model, CLASS_NAMES, num_samples=10)
    with pytest.raises(ValueError, match="predict_fn returned"):
        explain(np.zeros((32, 32), dtype=np.uint8), lambda b: np.zeros((len(b), 2)), CLASS_NAMES, num_samples=10)


def test_top_regions_describe_place_and_size(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    result = explain(image, spot_model, CLASS_NAMES, num_samples=200, seed=0)
    regions = result.top_regions(6)
    assert len(regions) == 6
    assert [abs(r.weight) for r in regions] == sorted((abs(r.weight) for r in regions), reverse=True)
    for region in regions:
        x0, y0, x1, y1 = region.bbox
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert region.area_fraction == pytest.approx((result.segments == region.segment).mean(), abs=1e-4)
    assert sum(r.background for r in result.top_regions(100)) <= 1
