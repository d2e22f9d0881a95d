"""The interface every model family implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from shared.contract import PreprocessingContract
from shared.imaging import to_model_input

# Keys every family takes besides its model parameters: they shape the input or the data it trains on.
COMMON_PARAMS = frozenset({"seed", "image_size", "scaling", "balancing"})


@dataclass
class FittedModel:
    """A trained native model together with the contract its inputs follow."""

    native: Any
    contract: PreprocessingContract
    params: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)
    # Family-specific by-products worth reporting (stage timings, a baseline model).
    extras: dict[str, Any] = field(default_factory=dict)


class ModelFamily(ABC):
    name: str
    layout: str
    scaling: str = "unit"
    # Parameters read by the training loop the family hands its model to (the Keras families share one).
    loop_params: frozenset[str] = frozenset()

    def contract(self, image_size: int, scaling: str | None = None) -> PreprocessingContract:
        """The input contract at this size; `scaling` lets a search compare unit and image_max inputs."""
        return PreprocessingContract(image_size=image_size, layout=self.layout, scaling=scaling or self.scaling)

    @abstractmethod
    def default_params(self) -> dict[str, Any]:
        """Fixed parameters used when no search is asked for."""

    def accepted_params(self) -> set[str]:
        """Every parameter name this family reads: an override that no chosen family reads is refused."""
        return set(self.default_params()) | COMMON_PARAMS | self.loop_params

    def holds_out(self, params: dict[str, Any]) -> bool:
        """Whether fitting with these parameters watches a held-out slice of its training data (early
        stopping, a fine-tuning decision). When it does not, it is given all of the data to train on."""
        return False

    @abstractmethod
    def fit(
        self,
        pixels: np.ndarray,
        labels: np.ndarray,
        params: dict[str, Any],
        contract: PreprocessingContract,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> FittedModel:
        """Fit on uint8 images (N, size, size) and class indices."""

    @abstractmethod
    def predict_native(self, model: FittedModel, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 4) from the native (scikit-learn / Keras) model."""

    @abstractmethod
    def to_onnx(self, model: FittedModel) -> onnx.ModelProto:
        """The ONNX graph: input named contract.input_name, output named 'probabilities'."""

    @staticmethod
    def tensor(pixels: np.ndarray, contract: PreprocessingContract) -> np.ndarray:
        return to_model_input(pixels, contract)
