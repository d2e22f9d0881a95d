"""The ensemble's weights: fitted over the simplex on the calibration slice, equal unless that is worse."""

from __future__ import annotations

import numpy as np
import pytest

from services.training.calibration import negative_log_likelihood
from services.training.ensemble import fit_weights
from shared.core.ensemble_spec import combine


def _member(labels: np.ndarray, accuracy: float, confidence: float, seed: int) -> np.ndarray:
    """Probabilities that put ``confidence`` on the true class ``accuracy`` of the time, else on another."""
    rng = np.random.default_rng(seed)
    chosen = np.where(rng.random(len(labels)) < accuracy, labels, (labels + rng.integers(1, 4, len(labels))) % 4)
    probabilities = np.full((len(labels), 4), (1 - confidence) / 3)
    probabilities[np.arange(len(labels)), chosen] = confidence
    return probabilities


def test_fitted_weights_favour_the_better_member_and_lower_the_nll() -> None:
    labels = np.random.default_rng(0).integers(0, 4, 600)
    strong, weak = _member(labels, 0.95, 0.9, 1), _member(labels, 0.4, 0.9, 2)
    weights, how = fit_weights([strong, weak], labels)
    assert how.startswith("fitted") and weights[0] > 0.8 and weights.sum() == pytest.approx(1.0)
    equal = combine([strong, weak], np.array([0.5, 0.5]))
    assert negative_log_likelihood(combine([strong, weak], weights), labels) < negative_log_likelihood(equal, labels)


def test_equal_weights_when_fitting_gains_nothing() -> None:
    labels = np.random.default_rng(3).integers(0, 4, 600)
    same = _member(labels, 0.8, 0.7, 4)
    weights, how = fit_weights([same, same.copy(), same.copy()], labels)
    assert how.startswith("equal") and weights == pytest.approx([1 / 3] * 3)
    assert fit_weights([same], labels)[1] == "equal"
