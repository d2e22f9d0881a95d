"""Random Forest on flattened grayscale pixels (scikit-learn, exported with skl2onnx).

Two kinds of forest (`forest`): the study's `random_forest` (bootstrap samples, best threshold per candidate
pixel) and `extra_trees` (extremely randomised trees: every tree sees every example and each candidate
pixel gets a random threshold), the default. Why the defaults are what they are: docs/model-families.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from services.training.families.base import FittedModel, ModelFamily
from services.training.onnx_export import keep_only_output
from shared.core.contract import OUTPUT_NAME, PreprocessingContract

FORESTS: dict[str, type[RandomForestClassifier] | type[ExtraTreesClassifier]] = {
    "random_forest": RandomForestClassifier,
    "extra_trees": ExtraTreesClassifier,
}

# Estimator arguments the family sets itself: the seed comes from `seed`, the threads from the caller.
SET_BY_THE_FAMILY = frozenset({"random_state", "n_jobs"})


class RandomForestFamily(ModelFamily):
    title = "Random Forest"
    layout = "flat"
    # Each image divided by its own brightest pixel, which removes the scanner's gain: a forest's thresholds
    # are on raw intensities, which would otherwise differ between scanners. The study's grid pins `unit`.
    scaling = "image_max"
    study_accuracy = 0.92
    seed_grid = {
        # The study's forest on plain pixels, whatever this project's defaults are.
        "forest": ["random_forest"],
        "augment": ["none"],
        "scaling": ["unit"],
        "n_estimators": list(range(10, 201, 20)),
        "max_depth": [None, 10, 20, 30],
        "min_samples_split": [2, 5, 10],
        "max_features": ["sqrt", "log2"],
    }
    quick_grid = [
        # The study's forest at its best split size, against extra trees with two.
        {"forest": ["random_forest"], "max_features": [0.1]},
        {"forest": ["extra_trees"], "max_features": [0.1, 0.3]},
    ]
    # A third of the trees ranks the candidates at a third of the cost; the refit grows all of them.
    quick_search_overrides = {"n_estimators": 100}

    def default_params(self) -> dict[str, Any]:
        return {
            "image_size": 32,
            # A slice mirrored left-right is still a slice of the same class: twice the examples for free.
            "augment": "flip",
            # Random thresholds suit noisy pixel features better than the best split of each: more accurate
            # than the study's forest and faster to fit (docs/model-families.md).
            "forest": "extra_trees",
            "n_estimators": 300,
            "max_depth": None,
            "min_samples_split": 2,
            "max_features": 0.3,
        }

    def accepted_params(self) -> set[str]:
        estimator_params = {key for forest in FORESTS.values() for key in forest().get_params()}
        return super().accepted_params() | (estimator_params - SET_BY_THE_FAMILY)

    def fit(
        self,
        pixels: np.ndarray,
        labels: np.ndarray,
        params: dict[str, Any],
        contract: PreprocessingContract,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
        n_jobs: int = 2,
    ) -> FittedModel:
        augment = params.get("augment", "none")
        if augment == "flip":
            pixels, labels = np.concatenate([pixels, pixels[:, :, ::-1]]), np.concatenate([labels, labels])
        elif augment != "none":
            raise ValueError(f"unknown augment {augment!r}; expected none or flip")
        # Parameters without `forest` (from runs before it existed) get today's default, extra trees.
        kind = params.get("forest", self.default_params()["forest"])
        if kind not in FORESTS:
            raise ValueError(f"unknown forest {kind!r}; expected one of {sorted(FORESTS)}")
        accepted = FORESTS[kind]().get_params().keys() - SET_BY_THE_FAMILY
        forest_params = {key: value for key, value in params.items() if key in accepted}
        forest = FORESTS[kind](**forest_params, n_jobs=n_jobs, random_state=int(params.get("seed", 0)))
        forest.fit(self.tensor(pixels, contract), labels)
        return FittedModel(forest, contract, dict(params))

    def predict_native(self, model: FittedModel, pixels: np.ndarray) -> np.ndarray:
        return model.native.predict_proba(self.tensor(pixels, model.contract)).astype(np.float32)

    def to_onnx(self, model: FittedModel) -> onnx.ModelProto:
        forest: RandomForestClassifier | ExtraTreesClassifier = model.native
        if len(forest.classes_) != len(model.contract.class_names):
            raise ValueError("the forest saw only some classes; ONNX output would not have one column per class")
        n_features = model.contract.image_size**2
        proto = to_onnx(
            forest,
            initial_types=[(model.contract.input_name, FloatTensorType([None, n_features]))],
            options={id(forest): {"zipmap": False}},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
        return keep_only_output(proto, proto.graph.output[1].name, OUTPUT_NAME)
