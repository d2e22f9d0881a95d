"""The ensemble's weights: equal over the members close to the best one on the calibration slice."""

from __future__ import annotations

import numpy as np
import pytest

from services.training.calibration import expected_calibration_error
from services.training.ensemble import ensemble_temperature, fit_weights
from shared.core.ensemble_spec import combine


def _member(labels: np.ndarray, accuracy: float, confidence: float, seed: int) -> np.ndarray:
    """Probabilities that put ``confidence`` on the true class ``accuracy`` of the time, else on another."""
    rng = np.random.default_rng(seed)
    chosen = np.where(rng.random(len(labels)) < accuracy, labels, (labels + rng.integers(1, 4, len(labels))) % 4)
    probabilities = np.full((len(labels), 4), (1 - confidence) / 3)
    probabilities[np.arange(len(labels)), chosen] = confidence
    return probabilities


def test_a_member_well_below_the_best_is_left_out_and_the_others_weigh_the_same() -> None:
    labels = np.random.default_rng(0).integers(0, 4, 600)
    strong, close, weak = _member(labels, 0.95, 0.9, 1), _member(labels, 0.93, 0.6, 5), _member(labels, 0.6, 0.9, 2)
    weights, how = fit_weights([strong, close, weak], labels)
    assert weights == pytest.approx([0.5, 0.5, 0.0])
    assert how.startswith("equal over the members within 5%")


def test_equal_weights_when_every_member_is_close_to_the_best() -> None:
    labels = np.random.default_rng(3).integers(0, 4, 600)
    same = _member(labels, 0.8, 0.7, 4)
    weights, how = fit_weights([same, same.copy(), _member(labels, 0.78, 0.9, 6)], labels)
    assert how == "equal" and weights == pytest.approx([1 / 3] * 3)
    assert fit_weights([same], labels) == (pytest.approx([1.0]), "equal")


def test_the_weights_do_not_follow_one_slices_confidence() -> None:
    """A member twice as confident is not trusted more: only accuracy decides who is in, and the weights are equal."""
    labels = np.random.default_rng(7).integers(0, 4, 400)
    sure, hesitant = _member(labels, 0.9, 0.97, 8), _member(labels, 0.9, 0.4, 9)
    assert fit_weights([sure, hesitant], labels)[0] == pytest.approx([0.5, 0.5])


def test_the_ensembles_temperature_sharpens_an_equal_mean_of_two_calibrated_members() -> None:
    """Two members right 90% of the time with 0.9 on their answer, wrong on different images: their mean puts 0.9
    on the class both give and about 0.5 where they differ; fitting a temperature on it lowers its ECE."""
    labels = np.random.default_rng(11).integers(0, 4, 800)
    first, second = _member(labels, 0.9, 0.9, 12), _member(labels, 0.9, 0.9, 13)
    weights = np.array([0.5, 0.5])
    temperature = ensemble_temperature([first, second], weights, labels)
    assert temperature != 1.0
    mean = combine([first, second], weights)
    assert expected_calibration_error(combine([first, second], weights, temperature), labels) < (
        expected_calibration_error(mean, labels)
    )
