"""MobileNetV2 transfer model: ImageNet base + GlobalAveragePooling + dense head (Keras).

The grayscale input is replicated to three channels and scaled to [-1, 1] inside the model, so the
ONNX graph takes raw 0..255 pixels. While the base is frozen (`fine_tune_blocks` 0), its pooled
features are computed once per image set and the head is trained on them: on 2 CPU cores that is
most of the cost saved. `fine_tune_blocks` N > 0 then unfreezes the top N inverted-residual blocks
and trains them end to end with a small learning rate, starting from the frozen-trained head.
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

LAST_BLOCK = 16  # MobileNetV2's inverted-residual blocks are block_1 .. block_16


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
            "epochs": 60,
            "patience": 6,
            "fine_tune_blocks": 0,
            "fine_tune_epochs": 3,
            "fine_tune_learning_rate": 1e-4,
        }

    def extractor(self, contract: PreprocessingContract) -> Any:
        """Raw grayscale (N, s, s, 1) -> pooled 1280-d ImageNet features."""
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
        key = hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest() + f"-{contract.image_size}"
        if key not in self._features:
            extractor = self.extractor(contract)
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

    def fit_head(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        params: dict[str, Any],
        validation: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[Any, dict[str, list[float]]]:
        """Train the dense head on precomputed features."""
        keras_runtime.seed_everything(int(params.get("seed", 0)))
        head = self._head(features.shape[1], 4, params)
        history = keras_runtime.compile_and_fit(head, features, labels, validation, params)
        return head, history

    def compose(self, head: Any, contract: PreprocessingContract) -> Any:
        """Extractor + head as one model taking raw pixels."""
        import keras

        extractor = self.extractor(contract)
        inputs = keras.Input(shape=(contract.image_size, contract.image_size, 1), name=contract.input_name)
        return keras.Model(inputs, head(extractor(inputs)), name="mobilenetv2_classifier")

    def fit(
        self,
        pixels: np.ndarray,
        labels: np.ndarray,
        params: dict[str, Any],
        contract: PreprocessingContract,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> FittedModel:
        val_features = None
        if validation is not None:
            val_features = (self.features(validation[0], contract), validation[1])
        head, history = self.fit_head(self.features(pixels, contract), labels, params, val_features)
        model = self.compose(head, contract)
        blocks = int(params.get("fine_tune_blocks", 0))
        if blocks > 0:
            history.update(self._fine_tune(model, pixels, labels, params, contract, validation, blocks))
        return FittedModel(model, contract, dict(params), history)

    def _fine_tune(
        self,
        model: Any,
        pixels: np.ndarray,
        labels: np.ndarray,
        params: dict[str, Any],
        contract: PreprocessingContract,
        validation: tuple[np.ndarray, np.ndarray] | None,
        blocks: int,
    ) -> dict[str, list[float]]:
        """Unfreeze the top `blocks` blocks (BatchNorm stays in inference mode) and train end to end."""
        base = next(layer for layer in model.get_layer("mobilenetv2_features").layers if "mobilenetv2" in layer.name)
        base.trainable = True
        first_trainable = LAST_BLOCK - blocks + 1
        for layer in base.layers:
            name = layer.name
            in_top = name.startswith("block_") and int(name.split("_")[1]) >= first_trainable
            layer.trainable = (in_top or name.startswith("Conv_1")) and "bn" not in name.lower()
        val = None if validation is None else (self.tensor(validation[0], contract), validation[1])
        history = keras_runtime.compile_and_fit(
            model,
            self.tensor(pixels, contract),
            labels,
            val,
            params,
            optimizer="adam",
            learning_rate=float(params["fine_tune_learning_rate"]),
            epochs=int(params["fine_tune_epochs"]),
            patience=2,
        )
        return {f"fine_tune_{key}": values for key, values in history.items()}

    def predict_native(self, model: FittedModel, pixels: np.ndarray) -> np.ndarray:
        return keras_runtime.predict_batches(model.native, self.tensor(pixels, model.contract), 32)

    def to_onnx(self, model: FittedModel) -> onnx.ModelProto:
        contract = model.contract
        proto = keras_runtime.keras_to_onnx(model.native, contract.input_shape(), contract.input_name)
        return keep_only_output(proto, proto.graph.output[0].name, OUTPUT_NAME)
