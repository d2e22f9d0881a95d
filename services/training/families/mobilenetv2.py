"""MobileNetV2 transfer model: ImageNet base + GlobalAveragePooling + dense head (Keras).

The grayscale input is replicated to three channels and scaled to [-1, 1] inside the model, so the
ONNX graph takes raw 0..255 pixels. While the base is frozen (`fine_tune_blocks` 0), its pooled
features are computed once per image set and the head is trained on them: on 2 CPU cores that is
most of the cost saved, and it is what a search's trials train on. `fine_tune_blocks` N > 0 then
unfreezes the top N inverted-residual blocks and trains them with a small learning rate on cached
outputs of the frozen lower part; the fine-tuned model is kept only if it beats the frozen one on
the held-out slice. `fine_tune_blocks` 16 (every block, the stem too) trains the whole network end to end on
the images instead, with the `augment` layers and mixup the cached path cannot apply, and keeps it whatever
a frozen head would score. Why the recipe is what it is: docs/model-families.md.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from services.training import keras_runtime
from services.training.config import TrainingSettings
from services.training.evaluation import evaluate
from services.training.families.base import FittedModel
from services.training.families.keras_family import TRAINING_NOISE_SIGMA, KerasModelFamily, mirror_averaged
from services.training.weights import resolve_weights
from shared.core.contract import OUTPUT_NAME, PreprocessingContract

LAST_BLOCK = 16  # MobileNetV2's inverted-residual blocks are block_1 .. block_16
FEATURE_BATCH = 32  # images per pass through the ImageNet base: bounds its activations' memory
Validation = tuple[np.ndarray, np.ndarray] | None


class MobileNetV2Family(KerasModelFamily):
    title = "MobileNetV2"
    layout = "nhwc"
    scaling = "raw"
    predict_batch_size = FEATURE_BATCH
    seed_grid = {
        "units": [128, 256],
        "dropout": [0.3],
        "learning_rate": [1e-3, 1e-4],
        "batch_size": [32],
        "epochs": [20, 40],
        "fine_tune_blocks": [0],
    }
    quick_grid = {"units": [256, 512], "dropout": [0.3, 0.5]}
    # The head is searched on frozen features for 15 epochs; the winner is refit for 30 with the top blocks
    # fine-tuned.
    quick_search_overrides = {"fine_tune_blocks": 0, "epochs": 15}

    def __init__(self, settings: TrainingSettings | None = None) -> None:
        super().__init__(settings)
        self._features: dict[str, np.ndarray] = {}

    @property
    def weights(self) -> Path | None:
        return self.settings.mobilenetv2_weights if self.settings is not None else None

    def default_params(self) -> dict[str, Any]:
        return {
            "image_size": 160,
            "units": 256,
            "dropout": 0.3,
            "optimizer": "adam",
            "learning_rate": 1e-3,
            "batch_size": 32,
            # Cosine decay over fixed epochs rather than early stopping: steadier across seeds.
            "schedule": "cosine",
            "epochs": 30,
            "fine_tune_blocks": 4,
            "fine_tune_epochs": 20,
            "fine_tune_learning_rate": 1e-4,
            # What the whole-network fine-tuning (`fine_tune_blocks` 16) does to its training images: none, flip
            # (a layer inactive at inference) or flip_noise (flips, and Gaussian noise in the training batches).
            "augment": "none",
            # Serve the mean of the predictions for the image and its mirror image (twice the inference cost).
            "test_time_flip": False,
        }

    def check_available(self) -> None:
        resolve_weights(self.weights)

    def holds_out(self, params: dict[str, Any]) -> bool:
        # Fine-tuning some blocks is kept only if it beats the frozen base on the held-out slice; the whole
        # network's is kept regardless.
        return 0 < int(params.get("fine_tune_blocks", 0)) < LAST_BLOCK or keras_runtime.watches_validation(params)

    def _imagenet_base(self, size: int) -> Any:
        import keras

        keras_runtime.tensorflow()
        base = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=1.0, include_top=False, weights=None)
        base.load_weights(str(resolve_weights(self.weights)))
        return base

    @staticmethod
    def _preprocessing(contract: PreprocessingContract) -> Any:
        """Raw grayscale (N, s, s, 1) -> the [-1, 1] RGB the ImageNet base was trained on."""
        import keras
        from keras import layers

        inputs = keras.Input(shape=(contract.image_size, contract.image_size, 1), name=contract.input_name)
        x = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="mobilenetv2_scaling")(x)
        return keras.Model(inputs, x, name="mobilenetv2_preprocessing")

    def extractor(self, contract: PreprocessingContract) -> Any:
        """Raw grayscale (N, s, s, 1) -> pooled 1280-d ImageNet features."""
        import keras
        from keras import layers

        base = self._imagenet_base(contract.image_size)
        base.trainable = False
        inputs = keras.Input(shape=(contract.image_size, contract.image_size, 1), name=contract.input_name)
        x = base(self._preprocessing(contract)(inputs), training=False)
        outputs = layers.GlobalAveragePooling2D(name="pooled_features")(x)
        return keras.Model(inputs, outputs, name="mobilenetv2_features")

    def features(self, pixels: np.ndarray, contract: PreprocessingContract) -> np.ndarray:
        """Pooled frozen-base features, computed once per distinct image set in this process."""
        key = hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest() + f"-{contract.image_size}"
        if key not in self._features:
            extractor = self.extractor(contract)
            self._features[key] = keras_runtime.predict_batches(extractor, self.tensor(pixels, contract), FEATURE_BATCH)
        return self._features[key]

    @staticmethod
    def _head(n_features: int, n_classes: int, params: dict[str, Any]) -> Any:
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
        contract: PreprocessingContract,
        validation: Validation = None,
    ) -> tuple[Any, dict[str, list[float]]]:
        """Train the dense head on precomputed features."""
        keras_runtime.seed_everything(int(params.get("seed", 0)))
        head = self._head(features.shape[1], len(contract.class_names), params)
        history = keras_runtime.compile_and_fit(head, features, labels, validation, params)
        return head, history

    def compose(self, head: Any, contract: PreprocessingContract) -> Any:
        """Extractor + head as one model taking raw pixels."""
        import keras

        extractor = self.extractor(contract)
        inputs = keras.Input(shape=(contract.image_size, contract.image_size, 1), name=contract.input_name)
        return keras.Model(inputs, head(extractor(inputs)), name="mobilenetv2_classifier")

    @staticmethod
    def _searches_on_features(params: dict[str, Any]) -> bool:
        return int(params.get("fine_tune_blocks", 0)) == 0

    def search_inputs(self, pixels: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        if not self._searches_on_features(params):
            return pixels
        return self.features(pixels, self.contract(int(params["image_size"]), params.get("scaling")))

    def fit_search_inputs(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        params: dict[str, Any],
        contract: PreprocessingContract,
        validation: Validation = None,
    ) -> FittedModel:
        if not self._searches_on_features(params):
            return self.fit(inputs, labels, params, contract, validation)
        head, history = self.fit_head(inputs, labels, params, contract, validation)
        return FittedModel(head, contract, dict(params), history)

    def predict_search_inputs(self, model: FittedModel, inputs: np.ndarray) -> np.ndarray:
        if not self._searches_on_features(model.params):
            return self.predict_native(model, inputs)
        return keras_runtime.predict_batches(model.native, inputs)

    def fit(
        self,
        pixels: np.ndarray,
        labels: np.ndarray,
        params: dict[str, Any],
        contract: PreprocessingContract,
        validation: Validation = None,
    ) -> FittedModel:
        blocks = int(params.get("fine_tune_blocks", 0))
        if blocks == LAST_BLOCK:
            fitted = self._fit_whole(pixels, labels, params, contract, validation)
        elif blocks > 0:
            fitted = self._fit_fine_tuned(pixels, labels, params, contract, validation, blocks)
        else:
            fitted = self._fit_frozen(pixels, labels, params, contract, validation)
        if params.get("test_time_flip", False):
            fitted = replace(fitted, native=mirror_averaged(fitted.native, contract))
        return fitted

    def _fit_frozen(
        self,
        pixels: np.ndarray,
        labels: np.ndarray,
        params: dict[str, Any],
        contract: PreprocessingContract,
        validation: Validation,
    ) -> FittedModel:
        """The frozen ImageNet base and a head trained on its pooled features."""
        val_features = None if validation is None else (self.features(validation[0], contract), validation[1])
        started = time.perf_counter()
        head, history = self.fit_head(self.features(pixels, contract), labels, params, contract, val_features)
        extras = {"head_seconds": time.perf_counter() - started}
        return FittedModel(self.compose(head, contract), contract, dict(params), history, extras)

    def _fit_whole(
        self,
        pixels: np.ndarray,
        labels: np.ndarray,
        params: dict[str, Any],
        contract: PreprocessingContract,
        validation: Validation,
    ) -> FittedModel:
        """Every layer of the ImageNet base (BatchNorm frozen) and a fresh head, trained together on the images
        at the small learning rate: each epoch costs a forward and backward pass of the whole base, but the
        training images can be flipped and mixed, which cached features cannot."""
        import keras
        from keras import layers

        keras_runtime.seed_everything(int(params.get("seed", 0)) + 1)
        base = self._imagenet_base(contract.image_size)
        for layer in base.layers:
            layer.trainable = not isinstance(layer, layers.BatchNormalization)
        head = self._head(int(base.output.shape[-1]), len(contract.class_names), params)
        inputs = keras.Input(shape=(contract.image_size, contract.image_size, 1), name=contract.input_name)
        x = inputs
        augment = params.get("augment", "none")
        if augment not in ("none", "flip", "flip_noise"):
            raise ValueError(f"unknown augment {augment!r}; expected none, flip or flip_noise")
        if augment != "none":  # inactive at inference: the served graph has no such layer
            x = layers.RandomFlip("horizontal", name="augment_flip")(x)
        noise = (TRAINING_NOISE_SIGMA, 255.0) if augment == "flip_noise" else None  # raw 0-255 input
        # training=False keeps BatchNorm on its ImageNet statistics; the other layers' weights still learn.
        x = base(self._preprocessing(contract)(x), training=False)
        x = layers.GlobalAveragePooling2D(name="pooled_features")(x)
        model = keras.Model(inputs, head(x), name="mobilenetv2_classifier")
        started = time.perf_counter()
        # No validation pass per epoch (nothing is decided on it, and at 224 px it costs a quarter of an epoch).
        history = keras_runtime.compile_and_fit(
            model,
            self.tensor(pixels, contract),
            labels,
            None,
            params,
            learning_rate=float(params["fine_tune_learning_rate"]),
            epochs=int(params["fine_tune_epochs"]),
            noise=noise,
        )
        extras = {"fine_tune_seconds": time.perf_counter() - started}
        return FittedModel(model, contract, dict(params), history, extras)

    def _split_base(self, contract: PreprocessingContract, blocks: int) -> tuple[Any, Any]:
        """(lower, upper): the frozen lower part of the ImageNet base and its top `blocks` blocks."""
        import keras

        base = self._imagenet_base(contract.image_size)
        cut = LAST_BLOCK - blocks
        names = {layer.name for layer in base.layers}
        cut_name = next((n for n in (f"block_{cut}_add", f"block_{cut}_project_BN") if n in names), None)
        if cut_name is None or not 1 <= blocks <= LAST_BLOCK - 1:
            raise ValueError(f"fine_tune_blocks must be between 0 and {LAST_BLOCK}, got {blocks}")
        cut_tensor = base.get_layer(cut_name).output
        lower = keras.Model(base.input, cut_tensor, name="mobilenetv2_lower")
        upper = keras.Model(cut_tensor, base.output, name="mobilenetv2_upper")
        lower.trainable = False
        return lower, upper

    def _fit_fine_tuned(
        self,
        pixels: np.ndarray,
        labels: np.ndarray,
        params: dict[str, Any],
        contract: PreprocessingContract,
        validation: Validation,
        blocks: int,
    ) -> FittedModel:
        """Fine-tune the top `blocks` blocks on cached outputs of the frozen lower part.

        The lower part never changes, so its outputs are computed once; each fine-tuning epoch then
        costs only the top blocks. Stage 1 trains a head on frozen pooled features (kept as the 'frozen
        head' baseline); stage 2 trains the top blocks (BatchNorm frozen) with a fresh head.
        """
        import keras

        preprocessing = self._preprocessing(contract)
        lower, upper = self._split_base(contract, blocks)
        stages = _FineTuning(lower, upper, preprocessing, self.tensor, contract)

        started = time.perf_counter()
        train_cached = stages.lower_features(pixels)
        val_cached = None if validation is None else (stages.lower_features(validation[0]), validation[1])
        lower_seconds = time.perf_counter() - started

        started = time.perf_counter()
        val_pooled = None if val_cached is None else (stages.pooled(val_cached[0]), val_cached[1])
        frozen_head, history = self.fit_head(stages.pooled(train_cached), labels, params, contract, val_pooled)
        head_seconds = time.perf_counter() - started
        frozen_weights = [w.copy() for w in stages.assemble(frozen_head).get_weights()]

        started = time.perf_counter()
        # A fresh head, trained together with the top blocks at the small learning rate: continuing from the
        # frozen-stage head (already fit to the frozen features) fine-tuned worse (docs/model-families.md).
        keras_runtime.seed_everything(int(params.get("seed", 0)) + 1)
        head = self._head(int(upper.output.shape[-1]), len(contract.class_names), params)
        trainable, tuned = stages.fine_tune(head, train_cached, labels, val_cached, params)
        history.update({f"fine_tune_{key}": values for key, values in tuned.items()})
        model = stages.assemble(head)
        frozen_copy = keras.models.clone_model(model)
        frozen_copy.set_weights(frozen_weights)
        extras: dict[str, Any] = {
            "lower_features_seconds": lower_seconds,
            "head_seconds": head_seconds,
            "fine_tune_seconds": time.perf_counter() - started,
            "frozen_model": frozen_copy,
        }
        if val_cached is not None and val_pooled is not None:
            # Fine-tuning must earn its place on the validation slice (never on the test split):
            # when the frozen head classifies the slice better, the frozen model is the one kept.
            frozen_val = _accuracy(frozen_head, *val_pooled)
            tuned_val = _accuracy(trainable, *val_cached)
            extras.update(frozen_val_accuracy=frozen_val, fine_tuned_val_accuracy=tuned_val)
            extras["fine_tune_kept"] = float(tuned_val >= frozen_val)
            if tuned_val < frozen_val:
                model.set_weights(frozen_weights)
        return FittedModel(model, contract, dict(params), history, extras)

    def stage_metrics(self, model: FittedModel, test_pixels: np.ndarray, test_labels: np.ndarray) -> dict[str, float]:
        metrics = super().stage_metrics(model, test_pixels, test_labels)
        frozen = model.extras.get("frozen_model")
        if frozen is not None:  # what fine-tuning bought: the same head before the top blocks moved
            probabilities = keras_runtime.predict_batches(frozen, self.tensor(test_pixels, model.contract))
            frozen_metrics = evaluate(test_labels, probabilities, prefix="frozen_head_test_").metrics
            metrics.update({k: v for k, v in frozen_metrics.items() if "macro" in k or k.endswith("accuracy")})
        return metrics


def _accuracy(model: Any, inputs: np.ndarray, labels: np.ndarray) -> float:
    return float((keras_runtime.predict_batches(model, inputs).argmax(1) == labels).mean())


class _FineTuning:
    """The pieces of a fine-tuning run: pixels -> preprocessing -> frozen lower part (cached) -> top blocks."""

    def __init__(
        self,
        lower: Any,
        upper: Any,
        preprocessing: Any,
        tensor: Callable[[np.ndarray, PreprocessingContract], np.ndarray],
        contract: PreprocessingContract,
    ) -> None:
        self.lower, self.upper, self.preprocessing = lower, upper, preprocessing
        self.tensor, self.contract = tensor, contract

    def lower_features(self, images: np.ndarray) -> np.ndarray:
        lower, preprocessing = self.lower, self.preprocessing
        return keras_runtime.predict_batches(
            lambda x, training: lower(preprocessing(x), training=False), self.tensor(images, self.contract), 32
        )

    def pooled(self, cached: np.ndarray) -> np.ndarray:
        from keras import layers

        gap, upper = layers.GlobalAveragePooling2D(), self.upper
        return keras_runtime.predict_batches(lambda x, training: gap(upper(x, training=False)), cached, 64)

    def fine_tune(
        self, head: Any, cached: np.ndarray, labels: np.ndarray, validation: Validation, params: dict[str, Any]
    ) -> tuple[Any, dict[str, list[float]]]:
        """Train the top blocks (BatchNorm frozen) and `head` on cached lower-part outputs."""
        import keras
        from keras import layers

        for layer in self.upper.layers:
            layer.trainable = not isinstance(layer, layers.BatchNormalization)
        cached_input = keras.Input(shape=cached.shape[1:], name="lower_features")
        x = layers.GlobalAveragePooling2D()(self.upper(cached_input, training=False))
        trainable = keras.Model(cached_input, head(x), name="mobilenetv2_top")
        history = keras_runtime.compile_and_fit(
            trainable,
            cached,
            labels,
            validation,
            params,
            learning_rate=float(params["fine_tune_learning_rate"]),
            epochs=int(params["fine_tune_epochs"]),
        )
        return trainable, history

    def assemble(self, head: Any) -> Any:
        import keras
        from keras import layers

        size = self.contract.image_size
        inputs = keras.Input(shape=(size, size, 1), name=self.contract.input_name)
        x = self.upper(self.lower(self.preprocessing(inputs), training=False), training=False)
        x = layers.GlobalAveragePooling2D(name="pooled_features")(x)
        return keras.Model(inputs, head(x), name="mobilenetv2_classifier")
