"""Random Forest on flattened grayscale pixels (scikit-learn, exported with skl2onnx)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import RandomForestClassifier

from services.training.families.base import FittedModel, ModelFamily
from services.training.onnx_export import keep_only_output
from shared.contract import OUTPUT_NAME, PreprocessingContract


class RandomForestFamily(ModelFamily):
    name = "rf"
    layout = "flat"

    def default_params(self) -> dict[str, Any]:
        return {
            "image_size": 32,
            # 300 trees with a tenth of the pixels per split: what earlier 3-fold CVs on the full data chose
            # (reports/comparison.md); the quick search compares inputs at 100 trees, the refit grows 300.
            "n_estimators": 300,
            "max_depth": None,
            "min_samples_split": 2,
            "max_features": 0.1,
        }

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
        if augment == "flip":  # a mirrored slice is a slice of the same class: twice the examples
            pixels, labels = np.concatenate([pixels, pixels[:, :, ::-1]]), np.concatenate([labels, labels])
        elif augment != "none":
            raise ValueError(f"unknown augment {augment!r}; expected none or flip")
        accepted = RandomForestClassifier().get_params()
        forest_params = {key: value for key, value in params.items() if key in accepted and key != "random_state"}
        forest = RandomForestClassifier(**forest_params, n_jobs=n_jobs, random_state=int(params.get("seed", 0)))
        forest.fit(self.tensor(pixels, contract), labels)
        return FittedModel(forest, contract, dict(params))

    def predict_native(self, model: FittedModel, pixels: np.ndarray) -> np.ndarray:
        return model.native.predict_proba(self.tensor(pixels, model.contract)).astype(np.float32)

    def to_onnx(self, model: FittedModel) -> onnx.ModelProto:
        forest: RandomForestClassifier = model.native
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
