"""benchmarks.referral: the recipes it is given, and the out-of-fold probabilities it keeps (on the sample)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.referral import Kept, cross_validate, parse_recipes
from services.training.data import prepare_data
from shared.core.dataset import SAMPLE_DATA_DIR


def test_a_recipe_is_json_values_per_family() -> None:
    recipes = parse_recipes(["mobilenetv2.image_size=224", "mobilenetv2.augment=flip_noise", "rf.n_estimators=100"],
                            ["rf", "mobilenetv2"])  # fmt: skip
    assert recipes == {"mobilenetv2": {"image_size": 224, "augment": "flip_noise"}, "rf": {"n_estimators": 100}}


@pytest.mark.parametrize(
    ("item", "why"),
    [("image_size=224", "FAMILY.KEY=VALUE"), ("cnn.dropout=0.5", "not one of --families"),
     ("rf.n_estimator=100", "no parameter 'n_estimator'")],
)  # fmt: skip
def test_a_recipe_that_would_be_ignored_is_refused(item: str, why: str) -> None:
    with pytest.raises(SystemExit, match=why):
        parse_recipes([item], ["rf"])


def test_every_image_is_kept_once_out_of_fold_and_calibration_slices_are_other_folds(tmp_path: Path) -> None:
    data = prepare_data(SAMPLE_DATA_DIR, 0.0, 42, tmp_path)
    kept = Kept()
    results = cross_validate(data, ["rf"], 3, 0.05, 42, {"rf": {"n_estimators": 10}}, kept)
    arrays = kept.arrays(data.train_labels)
    count = len(data.train_labels)
    assert sorted(np.unique(arrays["fold"])) == [0, 1, 2]
    np.testing.assert_allclose(arrays["test_rf"].sum(axis=1), np.ones(count), atol=1e-5)
    for fold in range(3):
        calibration = arrays["calibration_index"][arrays["calibration_fold"] == fold]
        assert len(calibration) > 0 and not (arrays["fold"][calibration] == fold).any()
    assert len(arrays["calibration_rf"]) == len(arrays["calibration_index"])
    right = arrays["test_rf"].argmax(axis=1) == data.train_labels
    np.testing.assert_array_equal(right, results["rf"].right)
