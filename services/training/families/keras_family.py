"""What the Keras families share: the training loop's parameters, prediction and the ONNX export
(`KerasModelFamily`), and for networks built whole and trained end to end, the fit (`KerasFamily`)."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
import onnx

from services.training import keras_runtime
from services.training.families.base import FittedModel, ModelFamily
from services.training.onnx_export import keep_only_output
from shared.core.contract import OUTPUT_NAME, PreprocessingContract

# The largest sigma, on 0-255, of the Gaussian noise a family's `flip_noise` augmentation adds to its training
# batches (each image draws its own, uniform from 0; the robustness check of benchmarks.family_variants adds 10).
TRAINING_NOISE_SIGMA = 12.0


class KerasModelFamily(ModelFamily):
    """A family whose native model is one Keras model taking the contract's tensor."""

    loop_params = keras_runtime.TRAINING_LOOP_PARAMS
    predict_batch_size = 64  # images per forward pass: bounds the memory of a large input

    def holds_out(self, params: dict[str, Any]) -> bool:
        return keras_runtime.watches_validation(params)

    def predict_native(self, model: FittedModel, pixels: np.ndarray) -> np.ndarray:
        return keras_runtime.predict_batches(model.native, self.tensor(pixels, model.contract), self.predict_batch_size)

    def to_onnx(self, model: FittedModel) -> onnx.ModelProto:
        contract = model.contract
        proto = keras_runtime.keras_to_onnx(model.native, contract.input_shape(), contract.input_name)
        return keep_only_output(proto, proto.graph.output[0].name, OUTPUT_NAME)


class KerasFamily(KerasModelFamily):
    """A network built by `build` and trained end to end by the shared loop (SNN, CNN)."""

    @abstractmethod
    def build(self, contract: PreprocessingContract, params: dict[str, Any]) -> Any:
        """An uncompiled Keras model whose last layer is named 'probabilities'."""

    def fit(
        self,
        pixels: np.ndarray,
        labels: np.ndarray,
        params: dict[str, Any],
        contract: PreprocessingContract,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> FittedModel:
        keras_runtime.seed_everything(int(params.get("seed", 0)))
        model = self.build(contract, params)
        val = None if validation is None else (self.tensor(validation[0], contract), validation[1])
        noise = self.training_noise(params, contract)
        history = keras_runtime.compile_and_fit(model, self.tensor(pixels, contract), labels, val, params, noise=noise)
        return FittedModel(self.serving_model(model, contract, params), contract, dict(params), history)

    def serving_model(self, trained: Any, contract: PreprocessingContract, params: dict[str, Any]) -> Any:
        """The model to predict with and export, built around the trained one (by default, itself)."""
        return trained

    def training_noise(self, params: dict[str, Any], contract: PreprocessingContract) -> tuple[float, float] | None:
        """(largest sigma, largest input value) of the Gaussian noise added to the training batches, in the
        network's input units; None: no noise (the default)."""
        return None


def mirror_averaged(network: Any, contract: PreprocessingContract) -> Any:
    """The trained network wrapped to average its output on the image and on the image mirrored left-right
    (one graph, so the ONNX export and every client get it)."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=contract.input_shape()[1:], name=contract.input_name)
    mirrored = layers.Lambda(lambda images: images[:, :, ::-1, :], name="mirror")(inputs)
    outputs = layers.Average(name=OUTPUT_NAME)([network(inputs), network(mirrored)])
    return keras.Model(inputs, outputs, name=f"{network.name}_mirror_averaged")
