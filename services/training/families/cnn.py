"""Small CNN: three Conv2D + pooling blocks with growing filters, two dense layers, softmax (Keras)."""

from __future__ import annotations

from typing import Any

from services.training.families.keras_family import KerasFamily
from shared.contract import OUTPUT_NAME, PreprocessingContract


class SmallCnnFamily(KerasFamily):
    name = "cnn"
    layout = "nhwc"

    def default_params(self) -> dict[str, Any]:
        return {
            "image_size": 64,
            "filters": 32,
            "kernel_size": 3,
            "activation": "relu",
            "dropout": 0.5,
            "dense_units": 128,
            "optimizer": "adam",
            "learning_rate": 1e-3,
            "batch_size": 32,
            "epochs": 30,
            "patience": 5,
            # Left-right flips of the training batches only (the layer is inactive at inference):
            # a brain slice mirrored is still a plausible slice of the same class.
            "augment": "none",
        }

    def build(self, contract: PreprocessingContract, params: dict[str, Any]) -> Any:
        import keras
        from keras import layers

        filters, kernel, activation = int(params["filters"]), int(params["kernel_size"]), params["activation"]
        inputs = keras.Input(shape=contract.input_shape()[1:], name=contract.input_name)
        x = inputs
        if params.get("augment", "none") == "flip":
            x = layers.RandomFlip("horizontal", name="augment_flip")(x)
        elif params.get("augment", "none") != "none":
            raise ValueError(f"unknown augment {params['augment']!r}; expected none or flip")
        for block in range(3):
            x = layers.Conv2D(filters * 2**block, kernel, padding="same", activation=activation)(x)
            x = layers.MaxPooling2D()(x)
        x = layers.Flatten()(x)
        x = layers.Dense(int(params["dense_units"]), activation=activation)(x)
        x = layers.Dropout(float(params["dropout"]))(x)
        x = layers.Dense(max(int(params["dense_units"]) // 2, 16), activation=activation)(x)
        x = layers.Dropout(float(params["dropout"]))(x)
        outputs = layers.Dense(len(contract.class_names), activation="softmax", name=OUTPUT_NAME)(x)
        return keras.Model(inputs, outputs, name="cnn")
