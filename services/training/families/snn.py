"""Shallow dense network on flattened grayscale pixels (Keras)."""

from __future__ import annotations

from typing import Any

from services.training.families.keras_family import KerasFamily
from shared.core.contract import OUTPUT_NAME, PreprocessingContract


class ShallowNetFamily(KerasFamily):
    title = "Shallow dense network"
    layout = "flat"
    seed_grid = {
        "units": [128, 256, 512],
        "dropout": [0.3, 0.5],
        "activation": ["relu", "tanh"],
        "optimizer": ["adam", "sgd"],
        "batch_size": [32, 64],
        "epochs": [20],
    }
    quick_grid = {
        "units": [512],
        "dropout": [0.3],
        "balancing": ["none", "rotate", "class_weight"],
    }
    quick_search_overrides = {"epochs": 20, "patience": 4}

    def default_params(self) -> dict[str, Any]:
        return {
            "image_size": 32,
            "units": 256,
            "dropout": 0.3,
            "activation": "relu",
            "optimizer": "adam",
            "learning_rate": 1e-3,
            "batch_size": 32,
            "epochs": 30,
            "patience": 5,
        }

    def build(self, contract: PreprocessingContract, params: dict[str, Any]) -> Any:
        import keras
        from keras import layers

        units = int(params["units"])
        inputs = keras.Input(shape=contract.input_shape()[1:], name=contract.input_name)
        x = layers.Dense(units, activation=params["activation"])(inputs)
        x = layers.Dropout(float(params["dropout"]))(x)
        x = layers.Dense(max(units // 2, 16), activation=params["activation"])(x)
        x = layers.Dropout(float(params["dropout"]))(x)
        outputs = layers.Dense(len(contract.class_names), activation="softmax", name=OUTPUT_NAME)(x)
        return keras.Model(inputs, outputs, name="snn")
