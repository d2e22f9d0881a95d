"""MobileNetV2 transfer model: frozen ImageNet base + GlobalAveragePooling + dense head (Keras).

The grayscale input is replicated to three channels and scaled to [-1, 1] inside the model, so the
ONNX graph takes raw 0..255 pixels. While the base is frozen, its pooled features are computed once
per image set and the head is trained on them: that is most of the cost saved on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from services.training import keras_runtime
from services.training.families.base import FittedModel, ModelFamily
from services.training.onnx_export import keep_only_output
from services.training.weights import resolve_weights
from shared.contract import OUTPUT_NAME, PreprocessingContract


class MobileNetV2Family(ModelFamily):
    name = "mobilenetv2"
    layout = "nhwc"
    scaling = "raw"

    def __init__(self, weights: Path | None = None) -> None:
        self.weights = weights
        self._features: dict[str, np.ndarray] = {}

    def default_params(self) -> dict[str, Any]:
        return {
            "units": 256,
            "dropout": 0.3,
            "optimizer": "adam",
            "learning_rate": 1e-3,
            "batch_size": 32,
            "epochs": 40,
            "patience": 5,
            "fine_tune_blocks": 0,
        }

    def _extractor(self, contract: PreprocessingContract) -> Any:
        import keras
        from keras import layers

        keras_runtime.tensorflow()
        size = contract.image_size
        base = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=1.0, include_top=False, weights=None)
        base.load_weights(str(resolve_weights(self.weights)))
        base.trainable = False
        inputs = keras.Input(shape=(size, size, 1), name=contract.input_name)
        x = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="mobilenetv2_scaling")(x)
        x = base(x, training=False)
        outputs = layers.GlobalAveragePooling2D(name="pooled_features")(x)
        return keras.Model(inputs, outputs, name="mobilenetv2_features")

    def features(self, pixels: np.ndarray, contract: PreprocessingContract) -> np.ndarray:
        """Pooled frozen-base features, computed once per distinct image set in this process."""
        key = hashlib.sha1(pixels.tobytes()).hexdigest() + f"-{contract.image_size}"
        if key not in self._features:
            extractor = self._extractor(contract)
            self._features[key] = keras_runtime.predict_batches(extractor, self.tensor(pixels, contract), 32)
        return self._features[key]

    def _head(self, n_features: int, n_classes: int, params: dict[str, Any]) -> Any:
        import keras
        from keras import layers

        units = int(params["units"])
        inputs = keras.Input(shape=(n_features,), name="features")
        x = layers.Dense(units, activation="relu")(inputs)
        x = layers.Dense(max(units // 2, 16), activation="relu")(x)
        x = layers.Dropout(float(params["dropout"]))(x)
        outputs = layers.Dense(n_classes, activation="softmax", name=OUTPUT_NAME)(x)
        return keras.Model(inputs, outputs, name="head")

    def fit(
        self,
        pixels: np.ndarray,
        labels: np.ndarray,
        params: dict[str, Any],
        contract: PreprocessingContract,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> FittedModel:
        import keras

        if int(params.get("fine_tune_blocks", 0)) != 0:
            raise ValueError("fine_tune_blocks > 0 is not supported yet; use 0 (frozen base)")
        keras_runtime.seed_everything(int(params.get("seed", 0)))
        train_features = self.features(pixels, contract)
        val = None
        if validation is not None:
            val = (self.features(validation[0], contract), validation[1])
        head = self._head(train_features.shape[1], len(contract.class_names), params)
        head.compile(
            optimizer=keras_runtime.make_optimizer(params.get("optimizer", "adam"), params["learning_rate"]),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        history = head.fit(
            train_features,
            labels,
            validation_data=val,
            epochs=int(params["epochs"]),
            batch_size=int(params["batch_size"]),
            class_weight=params.get("class_weight"),
            callbacks=[keras_runtime.early_stopping(int(params.get("patience", 5)), val is not None)],
            verbose=0,
        )
        extractor = self._extractor(contract)
        inputs = keras.Input(shape=(contract.image_size, contract.image_size, 1), name=contract.input_name)
        full = keras.Model(inputs, head(extractor(inputs)), name="mobilenetv2_classifier")
        return FittedModel(full, contract, dict(params), keras_runtime.history_dict(history))

    def predict_native(self, model: FittedModel, pixels: np.ndarray) -> np.ndarray:
        return keras_runtime.predict_batches(model.native, self.tensor(pixels, model.contract), 32)

    def to_onnx(self, model: FittedModel) -> onnx.ModelProto:
        contract = model.contract
        proto = keras_runtime.keras_to_onnx(model.native, contract.input_shape(), contract.input_name)
        return keep_only_output(proto, proto.graph.output[0].name, OUTPUT_NAME)
