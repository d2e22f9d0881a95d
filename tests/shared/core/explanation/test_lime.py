"""LIME on the head's superpixels: seeded, lime_base's fit, supporting and opposing regions apart."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shared.core.contract import CLASS_NAMES
from shared.core.explanation.inprocess import pixels_predictor
from shared.core.explanation.lime import lime
from shared.core.explanation.regions import slic_regions
from shared.core.masking import RegionMasks
from tests.explanation_models import spot_model_for

# The square the spot model looks at: rows/columns 40..72 of a 128 px slice.
SPOT = (slice(40, 72), slice(40, 72))
spot_model = spot_model_for(128)


def _slice(sample_arrays: Any, index: int = 0) -> np.ndarray:
    return sample_arrays(128)[0][index]


def test_the_regions_the_model_looks_at_support_it(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    result = lime(image, pixels_predictor(image, spot_model), CLASS_NAMES, num_samples=300, fill="black")
    assert result.label == "glioma" == result.predicted_label
    np.testing.assert_allclose(result.probabilities, spot_model(image[None])[0])
    in_spot = np.zeros(image.shape, dtype=bool)
    in_spot[SPOT] = True
    top = result.supporting(3)
    for region in top:
        assert in_spot[result.labels == region.segment].mean() > 0.5, region
    outside = [s for s in result.weights if in_spot[result.labels == s].mean() == 0]
    assert max(abs(result.weights[s]) for s in outside) < 0.2 * top[0].weight
    assert result.fit_r2 is not None and result.fit_r2 > 0.9  # the fake model is linear in the regions
    assert result.intercept is not None and result.local_prediction is not None


def test_same_seed_same_answer_other_seed_other_samples(sample_arrays: Any) -> None:
    image = _slice(sample_arrays, 5)
    predict = pixels_predictor(image, spot_model)
    first = lime(image, predict, CLASS_NAMES, num_samples=200, seed=7)
    again = lime(image, predict, CLASS_NAMES, num_samples=200, seed=7)
    other = lime(image, predict, CLASS_NAMES, num_samples=200, seed=8)
    assert first.weights == again.weights and first.fit_r2 == again.fit_r2 and first.intercept == again.intercept
    assert first.weights != other.weights
    assert (first.method, first.seed, other.seed, first.num_samples) == ("lime", 7, 8, 200)


def test_samples_are_seeded_rows_over_the_heads_superpixels(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    calls: list[RegionMasks] = []
    inner = pixels_predictor(image, spot_model)

    def recording(masks: RegionMasks) -> np.ndarray:
        calls.append(masks)
        return inner(masks)

    result = lime(image, recording, CLASS_NAMES, num_samples=120, seed=3, num_segments=30)
    assert len(calls) == 1
    masks = calls[0]
    np.testing.assert_array_equal(masks.labels, slic_regions(image, 30))
    assert masks.keep.shape == (120, masks.labels.max()) and masks.keep[0].all()
    assert masks.fill == "blur"
    assert set(result.weights) == set(range(1, int(masks.labels.max()) + 1))  # background never a feature
    assert set(result.timings_ms) == {"regions", "predict", "fit"}


def test_supporting_and_opposing_regions_have_their_signs(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    result = lime(image, pixels_predictor(image, spot_model), CLASS_NAMES, num_samples=200)
    supporting, opposing = result.supporting(None), result.opposing(None)
    assert supporting and opposing  # regions without effect get small weights of either sign
    assert all(r.weight > 0 for r in supporting) and all(r.weight < 0 for r in opposing)
    assert [r.weight for r in supporting] == sorted((r.weight for r in supporting), reverse=True)
    assert [r.weight for r in opposing] == sorted(r.weight for r in opposing)
    assert len(supporting) + len(opposing) <= result.num_regions


def test_a_chosen_label_is_explained_instead_of_the_predicted_one(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    notumor = CLASS_NAMES.index("notumor")
    result = lime(image, pixels_predictor(image, spot_model), CLASS_NAMES, label=notumor, fill="black")
    assert result.label == "notumor" and result.predicted_label == "glioma"
    # notumor falls as the spot brightens: the spot's regions now weigh against the class.
    assert result.ranked()[0] == result.opposing(1)[0].segment


def test_bad_inputs_are_refused() -> None:
    image = np.full((32, 32), 90, dtype=np.uint8)
    with pytest.raises(ValueError, match="num_samples"):
        lime(image, lambda m: np.full((m.copies, 4), 0.25), CLASS_NAMES, num_samples=1)
    with pytest.raises(ValueError, match="predictor answered"):
        lime(image, lambda m: np.zeros((m.copies, 2)), CLASS_NAMES, num_samples=10)
