"""Occlusion: a patch slides over the head; a tile's weight is the mean drop of the class's log-odds over the
positions of the patch that hide it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shared.core.contract import CLASS_NAMES
from shared.core.explanation.inprocess import pixels_predictor
from shared.core.explanation.occlusion import occlusion, sliding_patches
from shared.core.explanation.regions import grid_regions
from shared.core.explanation.result import log_odds
from shared.core.masking import RegionMasks
from tests.explanation_models import GLIOMA, looking_at, spot_model_for


def _slice(sample_arrays: Any, index: int = 0) -> np.ndarray:
    return sample_arrays(128)[0][index]


def test_with_one_step_each_cell_is_hidden_once_and_weighs_its_drop(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    calls: list[RegionMasks] = []
    inner = pixels_predictor(image, spot_model_for(128))

    def recording(masks: RegionMasks) -> np.ndarray:
        calls.append(masks)
        return inner(masks)

    result = occlusion(image, recording, CLASS_NAMES, fill="grey", shifts=1)
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
    evidence = np.log(probabilities[:, GLIOMA]) - np.log(1.0 - probabilities[:, GLIOMA])
    weights = [result.weights[r] for r in range(1, regions + 1)]
    np.testing.assert_allclose(weights, evidence[0] - evidence[1:], atol=1e-9)
    # Ranked as the probability's drop ranks them.
    drops = probabilities[0, GLIOMA] - probabilities[1:, GLIOMA]
    assert np.array_equal(np.argsort(-np.array(weights), kind="stable"), np.argsort(-drops, kind="stable"))
    assert (result.method, result.seed, result.fit_r2, result.intercept) == ("occlusion", None, None, None)
    assert result.num_samples == regions + 1
    assert set(result.timings_ms) == {"regions", "predict", "fit"}


def test_each_shifted_grid_hides_every_tile_once(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    for cells, shifts in ((8, 2), (6, 3)):
        patches = sliding_patches(image, cells, shifts)
        tiles = int(patches.labels.max())
        np.testing.assert_array_equal(patches.labels, grid_regions(image, cells * shifts))
        assert patches.hidden.shape[1] == tiles and patches.hidden.any(axis=1).all()
        assert (patches.hidden.sum(axis=0) == shifts).all()
        assert patches.hidden.sum(axis=1).max() == shifts**2
        keep = patches.keep()
        assert keep[0].all() and (keep[1:] == ~patches.hidden).all()


def test_a_tile_weighs_the_mean_of_the_positions_hiding_it(sample_arrays: Any) -> None:
    image = _slice(sample_arrays, 3)
    inner = pixels_predictor(image, spot_model_for(128))
    result = occlusion(image, inner, CLASS_NAMES, shifts=2)
    patches = sliding_patches(image, 8, 2)
    evidence = log_odds(inner(RegionMasks(patches.labels, patches.keep())), GLIOMA)
    drops = evidence[0] - evidence[1:]
    for tile in (1, int(patches.labels.max()) // 2, int(patches.labels.max())):
        expected = drops[patches.hidden[:, tile - 1]].mean()
        assert result.weights[tile] == pytest.approx(expected, abs=1e-9)
    assert result.num_samples == len(patches.hidden) + 1


@pytest.mark.parametrize("fill", ["blur", "grey", "black"])
def test_the_tile_the_model_looks_at_comes_first(sample_arrays: Any, fill: str) -> None:
    image = _slice(sample_arrays, 2)
    patches = sliding_patches(image)
    labels = patches.labels
    watched = int(labels[labels > 0][len(labels[labels > 0]) // 2])  # a tile in the middle of the head
    model = looking_at(image, labels == watched)
    result = occlusion(image, pixels_predictor(image, model), CLASS_NAMES, fill=fill)
    assert [r.segment for r in result.supporting(1)] == [watched]
    # Only tiles under a position that also hides the watched one move the class.
    sharing = patches.hidden[patches.hidden[:, watched - 1]].any(axis=0)
    assert all(result.weights[tile] == 0.0 for tile in range(1, len(sharing) + 1) if not sharing[tile - 1])
    assert all(result.weights[tile] < result.weights[watched] for tile in result.weights if tile != watched)


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
    assert occlusion(image, predict, CLASS_NAMES, cells=4, shifts=1).num_regions <= 16
    assert occlusion(image, predict, CLASS_NAMES, cells=4, shifts=2).num_regions <= 64


def test_bad_inputs_are_refused() -> None:
    image = np.full((32, 32), 90, dtype=np.uint8)
    for cells, shifts in ((8, 0), (16, 3)):
        with pytest.raises(ValueError, match="cells x shifts"):
            sliding_patches(image, cells, shifts)
    with pytest.raises(ValueError, match="uint8 grayscale"):
        occlusion(np.zeros((8, 8, 3), dtype=np.uint8), lambda m: np.zeros((m.copies, 4)), CLASS_NAMES)
    with pytest.raises(ValueError, match="predictor answered"):
        occlusion(image, lambda m: np.zeros((m.copies, 2)), CLASS_NAMES)
    with pytest.raises(ValueError, match="class index"):
        occlusion(image, lambda m: np.full((m.copies, 4), 0.25), CLASS_NAMES, label=4)


def test_a_model_sure_to_the_last_bit_still_ranks_its_regions() -> None:
    # p(glioma) is 1.0 in float32 with or without each region; only the other classes' probabilities move.
    answers = np.array([[1.0, 1e-12, 1e-13, 1e-13], [1.0, 1e-9, 1e-13, 1e-13], [1.0, 1e-11, 1e-13, 1e-13]])
    answers = answers.astype(np.float32)
    assert (answers[:, 0] == 1.0).all()
    evidence = log_odds(answers.astype(np.float64), 0)
    assert evidence[0] - evidence[1] > evidence[0] - evidence[2] > 0
