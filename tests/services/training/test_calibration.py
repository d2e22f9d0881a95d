"""Temperature scaling, the calibrated ONNX graph, ECE and Brier, the calibration slice."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from services.training.calibration import (
    CALIBRATION_METADATA_KEY,
    PROBABILITY_EPS,
    Calibration,
    apply_temperature,
    brier_score,
    calibrated_bytes,
    calibration_split,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    set_metrics,
)
from shared.core.conformal import ConformalSets
from shared.core.contract import OUTPUT_NAME


def _overconfident(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(logits), but probabilities reported as softmax(3 x logits): right ~ less often
    than they claim, as a model trained too long is."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(count, 4))
    true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in true])
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(axis=1, keepdims=True)
    return sharp, labels


def test_fitted_temperature_lowers_nll_and_ece_on_held_out_images() -> None:
    fit_p, fit_labels = _overconfident(4000, 0)
    test_p, test_labels = _overconfident(4000, 1)
    temperature = fit_temperature(fit_p, fit_labels)
    assert temperature == pytest.approx(3.0, rel=0.15), "the sharpening factor is recovered"
    calibrated = apply_temperature(test_p, temperature)
    assert negative_log_likelihood(calibrated, test_labels) < negative_log_likelihood(test_p, test_labels) - 0.1
    # 4000 perfectly calibrated images still show an ECE of about 0.015 (sampling); the clip at eps costs a little.
    before, after = expected_calibration_error(test_p, test_labels), expected_calibration_error(calibrated, test_labels)
    assert after < 0.035 and after < before / 5
    # Temperature scaling never changes the predicted class.
    assert (calibrated.argmax(1) == test_p.argmax(1)).all()


def test_forest_votes_with_zeros_get_a_finite_temperature() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 400)
    votes = np.zeros((400, 4))
    votes[np.arange(400), labels] = 1.0  # unanimous and right 3 times in 4
    wrong = rng.random(400) < 0.25
    votes[wrong] = np.roll(votes[wrong], 1, axis=1)
    temperature = fit_temperature(votes, labels)
    calibrated = apply_temperature(votes, temperature)
    assert np.isfinite(calibrated).all() and temperature > 1.0
    assert calibrated.max(axis=1).mean() == pytest.approx(0.75, abs=0.03)


def _mostly_calibrated() -> tuple[np.ndarray, np.ndarray]:
    """900 images at confidence 0.7, right 70% of the time (calibrated), and 100 at 0.99, right 90%."""
    probabilities, labels = [], []
    for count, confidence, accuracy in ((900, 0.7, 0.7), (100, 0.99, 0.9)):
        block = np.full((count, 4), (1 - confidence) / 3)
        block[:, 0] = confidence
        wrong = np.zeros(count, dtype=int)
        wrong[: round(count * (1 - accuracy))] = 1
        probabilities.append(block)
        labels.append(wrong)
    return np.vstack(probabilities), np.concatenate(labels)


def test_a_temperature_that_would_raise_the_ece_is_not_applied() -> None:
    probabilities, labels = _mostly_calibrated()
    # The NLL alone would soften the confident block a little, and so miscalibrate the other 900 images.
    softened = apply_temperature(probabilities, 1.1)
    assert negative_log_likelihood(softened, labels) < negative_log_likelihood(probabilities, labels)
    assert expected_calibration_error(softened, labels) > expected_calibration_error(probabilities, labels)
    assert fit_temperature(probabilities, labels) == 1.0


def test_no_images_leave_the_model_as_it_is() -> None:
    assert fit_temperature(np.empty((0, 4)), np.empty(0, dtype=int)) == 1.0


def test_ece_and_brier_on_known_cases() -> None:
    labels = np.array([0, 1, 2, 3])
    perfect = np.eye(4)
    assert expected_calibration_error(perfect, labels) == 0.0 and brier_score(perfect, labels) == 0.0
    # Every image said 0.7 for class 0; half were class 0: |0.5 - 0.7| in the one bin used.
    said = np.tile([0.7, 0.1, 0.1, 0.1], (4, 1))
    assert expected_calibration_error(said, np.array([0, 0, 1, 2])) == pytest.approx(0.2)
    # Brier: right image (0.3^2 + 3 x 0.1^2) = 0.12; wrong image (0.7^2 + 0.9^2 + 2 x 0.1^2) = 1.32.
    assert brier_score(said, np.array([0, 1, 0, 1])) == pytest.approx((0.12 + 1.32) / 2)
    # Two bins: confidence 0.95 always right (gap 0.05) and 0.5 right once in two (gap 0.0), equal shares.
    mixed = np.array([[0.95, 0.05, 0, 0], [0.95, 0.05, 0, 0], [0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]])
    assert expected_calibration_error(mixed, np.array([0, 0, 0, 1])) == pytest.approx(0.025)


def _identity_model() -> onnx.ModelProto:
    """A graph whose ``probabilities`` output is its input (N, 4): feeds chosen probabilities to the calibration."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], [OUTPUT_NAME])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model


def test_calibrated_graph_equals_softmax_of_log_p_over_t_through_onnxruntime() -> None:
    rng = np.random.default_rng(5)
    probabilities = rng.dirichlet(np.ones(4) * 0.3, size=64).astype(np.float32)
    probabilities[:8, 0] = 0.0  # the forest's zero votes
    probabilities[:8] /= probabilities[:8].sum(axis=1, keepdims=True)
    calibration = Calibration(temperature=2.5, calibration_images=10)
    model_bytes = calibrated_bytes(_identity_model().SerializeToString(), calibration)
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (served,) = session.run([OUTPUT_NAME], {"input": probabilities})
    assert served.dtype == np.float32
    expected = apply_temperature(probabilities, 2.5)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    by_hand = np.exp(np.log(np.clip(probabilities.astype(np.float64), PROBABILITY_EPS, 1)) / 2.5)
    np.testing.assert_allclose(served, by_hand / by_hand.sum(axis=1, keepdims=True), atol=1e-5)
    metadata = {p.key: p.value for p in onnx.load_from_string(model_bytes).metadata_props}
    assert '"temperature": 2.5' in metadata[CALIBRATION_METADATA_KEY]


def test_calibration_slice_keeps_duplicate_groups_whole() -> None:
    labels = np.repeat(np.arange(4), 50)
    groups = np.arange(200) // 2  # pairs of near-duplicates
    fit_idx, slice_idx = calibration_split(labels, groups, seed=0)
    assert 15 <= len(slice_idx) <= 25 and len(fit_idx) + len(slice_idx) == 200
    assert not set(groups[fit_idx]) & set(groups[slice_idx])


def test_too_few_groups_for_a_slice_leave_every_image_to_train() -> None:
    fit_idx, slice_idx = calibration_split(np.array([0, 1, 2, 3, 0, 1]), np.arange(6), seed=0)
    assert list(fit_idx) == list(range(6)) and len(slice_idx) == 0


def test_set_metrics_leave_out_the_accuracy_of_unreferred_answers_when_every_answer_is_referred() -> None:
    probabilities = np.array([[0.5, 0.5, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0]])
    labels = np.array([0, 0])
    every_class = ConformalSets(calibration_images=10, thresholds={"0.05": 1.0})  # sets of all four classes
    all_referred = set_metrics(probabilities, labels, every_class)
    assert all_referred["test_set_referral_rate"] == 1.0 and "test_accuracy_not_referred" not in all_referred
    one_class = ConformalSets(calibration_images=10, thresholds={"0.05": 0.2})  # keeps p >= 0.8 only
    some = set_metrics(probabilities, labels, one_class)
    assert some["test_set_referral_rate"] == 0.5 and some["test_accuracy_not_referred"] == 1.0
