"""benchmarks.referral_rules: the training-conditional quantile, and rules fitted fold by fold on kept probabilities."""

from __future__ import annotations

import numpy as np
from scipy.stats import beta

from benchmarks.referral_rules import REWEIGHED, conditional_threshold, judge, lac, reweighed, table


def test_the_conditional_quantile_is_the_first_rank_whose_coverage_holds_with_the_confidence() -> None:
    scores = np.linspace(0.0, 1.0, 500)
    threshold = conditional_threshold(scores, 0.05, 0.1)
    k = int(np.searchsorted(scores, threshold)) + 1
    assert beta.cdf(0.95, k, 501 - k) <= 0.1 < beta.cdf(0.95, k - 1, 502 - k)
    assert threshold > scores[int(np.ceil(501 * 0.95)) - 1]  # above the marginal (plain LAC) rank
    assert conditional_threshold(scores[:10], 0.05, 0.1) == 1.0  # too few images: every class


def _kept(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 600)
    probabilities = rng.dirichlet(np.ones(4), 600) * 0.3
    probabilities[np.arange(600), labels] += 0.7  # the true class is usually the top one
    fold = np.repeat([0, 1, 2], 200)
    calibration_index = np.concatenate([np.flatnonzero(fold != k)[:100] for k in range(3)])
    calibration_fold = np.repeat([0, 1, 2], 100)
    return {"labels": labels, "fold": fold, "calibration_index": calibration_index,
            "calibration_fold": calibration_fold, "test_cnn": probabilities,
            "calibration_cnn": probabilities[calibration_index]}  # fmt: skip


def test_rules_are_judged_on_each_fold_with_that_folds_calibration_slice() -> None:
    kept = _kept()
    covered, referred = judge(kept, "cnn", lac(0.05))
    assert covered.shape == referred.shape == (600,)
    assert 0.85 < covered.mean() <= 1.0
    text = table(kept, 0.05, 0.1)
    assert text.count("| cnn |") == 3 and "training-conditional (delta 0.1)" in text


def test_the_ensemble_is_rebuilt_with_the_current_weights_rule_fold_by_fold() -> None:
    kept = _kept()
    worse = _kept(seed=1)["test_cnn"][:, ::-1].copy()  # a member that is mostly wrong: left out by the rule
    kept |= {"test_mobilenetv2": worse, "calibration_mobilenetv2": worse[kept["calibration_index"]]}
    rebuilt = reweighed(kept)
    for fold in range(3):
        np.testing.assert_allclose(rebuilt[f"weights_{fold}"], [1.0, 0.0])
    # The kept member alone, under the ensemble's own temperature: the same answers, and probabilities that sum to 1.
    np.testing.assert_array_equal(rebuilt[f"test_{REWEIGHED}"].argmax(axis=1), kept["test_cnn"].argmax(axis=1))
    np.testing.assert_allclose(rebuilt[f"test_{REWEIGHED}"].sum(axis=1), 1.0)
