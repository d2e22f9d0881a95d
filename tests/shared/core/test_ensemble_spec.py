"""The ensemble's one definition: its weighted mean, and its spec through version tags and back."""

from __future__ import annotations

import numpy as np
import pytest

from shared.core.conformal import fit_conformal
from shared.core.ensemble_spec import CONFORMAL_TAG, TEMPERATURE_TAG, EnsembleSpec, SpecError, combine
from shared.core.temperature import apply_temperature


def test_combine_is_the_weighted_mean() -> None:
    a, b = np.array([[0.9, 0.1, 0, 0]]), np.array([[0.1, 0.9, 0, 0]])
    np.testing.assert_allclose(combine([a, b], np.array([0.75, 0.25])), [[0.7, 0.3, 0, 0]])


def test_a_spec_survives_its_tags_and_weights_are_normalised() -> None:
    conformal = fit_conformal(np.eye(4)[[0, 1, 2, 3] * 5] * 0.9 + 0.025, np.array([0, 1, 2, 3] * 5))
    spec = EnsembleSpec({"cnn": "3", "rf": "1"}, {"cnn": 3.0, "rf": 1.0}, conformal)
    back = EnsembleSpec.from_tags(spec.to_tags())
    assert back.members == spec.members and back.weights == {"cnn": 0.75, "rf": 0.25}
    assert back.conformal == conformal


def test_a_member_weighing_0_is_pinned_but_not_run() -> None:
    spec = EnsembleSpec.from_tags(
        EnsembleSpec({"cnn": "3", "snn": "2", "rf": "1"}, {"cnn": 1, "snn": 0, "rf": 1}).to_tags()
    )
    assert spec.members == {"cnn": "3", "snn": "2", "rf": "1"}
    assert spec.running_members() == {"cnn": "3", "rf": "1"}


def test_a_spec_without_sets_is_served_without_them_and_a_broken_one_is_refused() -> None:
    tags = EnsembleSpec({"cnn": "3", "rf": "1"}, {"cnn": 0.5, "rf": 0.5}).to_tags()
    assert CONFORMAL_TAG not in tags and EnsembleSpec.from_tags(tags).conformal is None
    with pytest.raises(SpecError, match="do not match"):
        EnsembleSpec.from_tags({**tags, "ensemble_weights": '{"cnn": 1.0}'})
    with pytest.raises(SpecError, match="no valid"):
        EnsembleSpec.from_tags({**tags, CONFORMAL_TAG: "{not json"})


def test_a_temperature_tempers_the_mean_and_survives_tags_and_document() -> None:
    a, b = np.array([[0.6, 0.2, 0.1, 0.1]]), np.array([[0.4, 0.4, 0.1, 0.1]])
    mean = combine([a, b], [0.5, 0.5])
    np.testing.assert_allclose(combine([a, b], [0.5, 0.5], 0.6), apply_temperature(mean, 0.6))
    assert combine([a, b], [0.5, 0.5], 0.6)[0, 0] > mean[0, 0]  # below 1: sharper
    spec = EnsembleSpec({"cnn": "3", "rf": "1"}, {"cnn": 0.5, "rf": 0.5}, temperature=0.6)
    assert EnsembleSpec.from_tags(spec.to_tags()).temperature == 0.6
    document = {"members": spec.members, "weights": spec.weights, "temperature": 0.6}
    assert EnsembleSpec.from_document(document).temperature == 0.6
    untempered = EnsembleSpec({"cnn": "3", "rf": "1"}, {"cnn": 0.5, "rf": 0.5})
    assert TEMPERATURE_TAG not in untempered.to_tags()  # versions before it read back as 1
    assert EnsembleSpec.from_tags(untempered.to_tags()).temperature == 1.0
    assert EnsembleSpec.from_document({"members": spec.members, "weights": spec.weights}).temperature == 1.0
    for broken in ("0", "inf", "abc"):
        with pytest.raises(SpecError, match="temperature"):
            EnsembleSpec.from_tags({**spec.to_tags(), TEMPERATURE_TAG: broken})
