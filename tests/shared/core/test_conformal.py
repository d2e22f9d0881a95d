"""Split-conformal prediction sets (LAC): the finite-sample threshold, the sets it gives (none, one or several
classes), and their coverage on exchangeable data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.core.conformal import ConformalSets, fit_conformal


def _probabilities(labels: np.ndarray, rng: np.random.Generator, sharpness: float = 3.0) -> np.ndarray:
    """A noisy model: logits favouring the true class by ``sharpness`` on average."""
    logits = rng.normal(size=(len(labels), 4))
    logits[np.arange(len(labels)), labels] += sharpness
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_the_threshold_is_the_finite_sample_quantile_of_the_scores() -> None:
    probabilities = np.array([[1 - s, s / 3, s / 3, s / 3] for s in np.linspace(0.01, 0.99, 99)])
    sets = fit_conformal(probabilities, np.zeros(99, dtype=int), alphas=(0.05, 0.005))
    rank = math.ceil(100 * 0.95)  # the 95th smallest of 99 scores 0.01 .. 0.99
    assert sets.thresholds["0.05"] == pytest.approx(rank / 100, abs=1e-6)
    assert sets.thresholds["0.005"] == 1.0  # (n + 1)(1 - alpha) > n: every class
    assert sets.calibration_images == 99


def _coverage(sets: ConformalSets, probabilities: np.ndarray, labels: np.ndarray, alpha: float) -> tuple:
    members = [sets.prediction_set(row, alpha) for row in probabilities]
    coverage = float(np.mean([label in m for m, label in zip(members, labels, strict=True)]))
    return coverage, members


def test_sets_cover_at_least_one_minus_alpha_on_new_images() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 4000)
    probabilities = _probabilities(labels, rng, sharpness=2.0)  # 83% right: unsure of many images
    sets = fit_conformal(probabilities[:1000], labels[:1000])
    for alpha in (0.05, 0.1):
        coverage, members = _coverage(sets, probabilities[1000:], labels[1000:], alpha)
        assert coverage >= 1 - alpha - 0.015  # the guarantee, less the sampling error of 3,000 images
        for m, row in zip(members, probabilities[1000:], strict=True):
            assert list(m) == sorted(m, key=lambda i: -row[i])  # most probable first
    assert 1 < np.mean([len(m) for m in _coverage(sets, probabilities[1000:], labels[1000:], 0.05)[1]]) < 4


def test_an_accurate_model_spends_alpha_on_empty_sets_and_its_single_answers_are_right() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 4000)
    probabilities = _probabilities(labels, rng, sharpness=4.0)  # 99% right, more than 1 - alpha
    sets = fit_conformal(probabilities[:1000], labels[:1000])
    coverage, members = _coverage(sets, probabilities[1000:], labels[1000:], 0.05)
    sizes = np.array([len(m) for m in members])
    assert coverage >= 0.935 and not (sizes > 1).any()
    assert 0.02 < np.mean(sizes == 0) < 0.08  # the least sure images, to be referred
    single = sizes == 1
    right = probabilities[1000:].argmax(axis=1) == labels[1000:]
    assert right[single].mean() > right.mean()  # the answers kept are surer than all answers


def test_a_service_alpha_between_grid_levels_uses_the_smaller_one_and_one_below_the_grid_is_refused() -> None:
    # q = 0.7 at 0.05: every class with p >= 0.3 is in; q = 0.2 at 0.1: only p >= 0.8.
    sets = ConformalSets(calibration_images=10, thresholds={"0.05": 0.7, "0.1": 0.2})
    assert sets.threshold(0.07) == (0.05, 0.7)
    assert sets.prediction_set([0.45, 0.1, 0.45, 0.0], 0.07) == [0, 2]
    assert sets.prediction_set([0.35, 0.05, 0.6, 0.0], 0.05) == [2, 0]  # most probable first
    assert sets.prediction_set([0.45, 0.1, 0.45, 0.0], 0.1) == []  # none reaches 0.8: no class is sure enough
    assert sets.prediction_set([0.1, 0.85, 0.05, 0.0], 0.1) == [1]
    with pytest.raises(ValueError, match="below every fitted level"):
        sets.threshold(0.01)
