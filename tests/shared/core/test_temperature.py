"""Temperature scaling, defined once for a family's graph and the ensemble's mean."""

from __future__ import annotations

import numpy as np

from shared.core.temperature import PROBABILITY_EPS, apply_temperature


def test_a_temperature_softens_above_one_sharpens_below_and_keeps_the_order() -> None:
    probabilities = np.array([[0.7, 0.2, 0.05, 0.05]])
    soft, sharp = apply_temperature(probabilities, 2.0), apply_temperature(probabilities, 0.5)
    assert soft[0, 0] < 0.7 < sharp[0, 0]
    for tempered in (soft, sharp):
        np.testing.assert_allclose(tempered.sum(axis=1), 1.0)
        assert list(np.argsort(tempered[0])) == list(np.argsort(probabilities[0]))


def test_zeros_are_clipped_before_the_logarithm() -> None:
    votes = np.array([[1.0, 0.0, 0.0, 0.0]])  # a forest's unanimous vote: log 0 without the clip
    tempered = apply_temperature(votes, 1.0)
    assert np.isfinite(tempered).all()
    np.testing.assert_allclose(tempered[0, 1:], PROBABILITY_EPS / (1 + 3 * PROBABILITY_EPS))
