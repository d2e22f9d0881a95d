"""Occlusion: each region of the grid hidden once; a region's weight is the drop of the class's probability."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shared.core.contract import CLASS_NAMES
from shared.core.explanation.inprocess import pixels_predictor
from shared.core.explanation.occlusion import occlusion
from shared.core.explanation.regions import grid_regions
from shared.core.masking import RegionMasks
from tests.explanation_models import GLIOMA, looking_at, spot_model_for


def _slice(sample_arrays: Any, index: int = 0) -> np.ndarray:
    return sample_arrays(128)[0][index]


def test_weights_are_the_drops_of_the_class(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    calls: list[RegionMasks] = []
    inner = pixels_predictor(image, spot_model_for(128))

    def recording(masks: RegionMasks) -> np.ndarray:
        calls.append(masks)
        return inner(masks)

    result = occlusion(image, recording, CLASS_NAMES, fill="grey")
    assert len(calls) == 1  # one call: the caller chunks if it must
    masks = calls[0]
    regions = int(result.labels.max())
    np.testing.assert_array_equal(result.labels, grid_regions(image, 8))
    assert masks.fill == "grey" and masks.keep.shape == (regions + 1, regions)
    assert masks.keep[0].all() and (masks.keep[1:] == ~np.eye(regions, dtype=bool)).all()
    probabilities = inner(masks)
    np.testing.assert_allclose(result.probabilities, probabilities[0])
    np.testing.assert_allclose(result.probabilities, spot_model_for(128)(image[None])[0])
    assert result.label == "glioma" == result.predicted_label
    assert result.weights == {r: probabilities[0, GLIOMA] - probabilities[r, GLIOMA] for r in range(1, regions + 1)}
    assert (result.method, result.seed, result.fit_r2, result.intercept) == ("occlusion", None, None, None)
    assert result.num_samples == regions + 1
    assert set(result.timings_ms) == {"regions", "predict", "fit"}


@pytest.mark.parametrize("fill", ["blur", "grey", "black"])
def test_the_region_the_model_looks_at_comes_first(sample_arrays: Any, fill: str) -> None:
    image = _slice(sample_arrays, 2)
    labels = grid_regions(image, 8)
    watched = int(labels[labels > 0][len(labels[labels > 0]) // 2])  # a cell in the middle of the head
    model = looking_at(image, labels == watched)
    result = occlusion(image, pixels_predictor(image, model), CLASS_NAMES, fill=fill)
    assert [r.segment for r in result.supporting(1)] == [watched]
    assert all(weight == 0.0 for region, weight in result.weights.items() if region != watched)


def test_occlusion_is_deterministic(sample_arrays: Any) -> None:
    image = _slice(sample_arrays, 5)
    predict = pixels_predictor(image, spot_model_for(128))
    first = occlusion(image, predict, CLASS_NAMES)
    again = occlusion(image, predict, CLASS_NAMES)
    assert first.weights == again.weights
    np.testing.assert_array_equal(first.labels, again.labels)


def test_a_chosen_label_is_explained_instead_of_the_predicted_one(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    notumor = CLASS_NAMES.index("notumor")
    predict = pixels_predictor(image, spot_model_for(128))
    result = occlusion(image, predict, CLASS_NAMES, label=notumor, fill="black")
    assert result.label == "notumor" and result.predicted_label == "glioma"
    # notumor falls as the spot brightens: hiding the spot's cells raises it, so they oppose the class.
    assert result.opposing(1) and not result.supporting()


def test_the_grid_size_is_the_callers(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    predict = pixels_predictor(image, spot_model_for(128))
    assert occlusion(image, predict, CLASS_NAMES, cells=4).num_regions <= 16


def test_bad_inputs_are_refused() -> None:
    image = np.full((32, 32), 90, dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8 grayscale"):
        occlusion(np.zeros((8, 8, 3), dtype=np.uint8), lambda m: np.zeros((m.copies, 4)), CLASS_NAMES)
    with pytest.raises(ValueError, match="predictor answered"):
        occlusion(image, lambda m: np.zeros((m.copies, 2)), CLASS_NAMES)
    with pytest.raises(ValueError, match="class index"):
        occlusion(image, lambda m: np.full((m.copies, 4), 0.25), CLASS_NAMES, label=4)
