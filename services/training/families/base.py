"""The interface every model family implements: training, search and reporting reach a family only through it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from services.training.config import TrainingSettings
from shared.core.contract import PreprocessingContract
from shared.core.imaging import to_model_input

# Keys every family takes besides its model parameters: they shape the input or the data it trains on.
COMMON_PARAMS = frozenset({"seed", "image_size", "scaling", "balancing"})

# A search grid: a dict of lists (every combination is tried) or a list of such dicts (the union of their
# combinations, as in scikit-learn's ParameterGrid).
Grid = dict[str, list[Any]] | list[dict[str, list[Any]]]


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
    """One kind of model. Subclasses set the class attributes below and implement the abstract methods;
    the hooks with a body fit every family that trains on the images themselves."""

    title: str  # how the comparison report names it
    layout: str  # the contract's tensor layout: flat or nhwc
    scaling: str = "unit"
    # Test accuracy the original study reported for this family, shown beside ours; None when it reported none.
    study_accuracy: float | None = None
    # Search grids (grids.py): `seed` reproduces the study's grid, `quick` is sized for 2 CPU cores.
    seed_grid: Grid
    quick_grid: Grid
    # Parameters applied while the quick search runs only (cheaper trials); the refit uses the defaults.
    quick_search_overrides: dict[str, Any] = {}
    # Parameters read by the training loop the family hands its model to (the Keras families share one).
    loop_params: frozenset[str] = frozenset()

    def __init__(self, settings: TrainingSettings | None = None) -> None:
        """`settings` give a family what it finds on disk (MobileNetV2's weights); None: its own defaults."""
        self.settings = settings

    def contract(self, image_size: int, scaling: str | None = None) -> PreprocessingContract:
        """The input contract at this size; `scaling` lets a search compare unit and image_max inputs."""
        return PreprocessingContract(image_size=image_size, layout=self.layout, scaling=scaling or self.scaling)

    @abstractmethod
    def default_params(self) -> dict[str, Any]:
        """Fixed parameters used when no search is asked for."""

    def accepted_params(self) -> set[str]:
        """Every parameter name this family reads: an override that no chosen family reads is refused."""
        return set(self.default_params()) | COMMON_PARAMS | self.loop_params

    def check_available(self) -> None:
        """Raise a ServiceError before a run starts when something the family needs is missing."""
        return None  # the families that train from the images alone need nothing more

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
        """Class probabilities (N, classes) from the native (scikit-learn / Keras) model."""

    @abstractmethod
    def to_onnx(self, model: FittedModel) -> onnx.ModelProto:
        """The ONNX graph: input named contract.input_name, output named 'probabilities'."""

    def search_inputs(self, pixels: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """What every trial of a search with these parameters trains on, computed once in the parent process:
        the images themselves, unless the family can share costlier work between trials."""
        return pixels

    def fit_search_inputs(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        params: dict[str, Any],
        contract: PreprocessingContract,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> FittedModel:
        """Fit one fold of a trial on rows of `search_inputs`; `validation` rows are of the same kind."""
        return self.fit(inputs, labels, params, contract, validation)

    def predict_search_inputs(self, model: FittedModel, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities for rows of `search_inputs`, from a model of `fit_search_inputs`."""
        return self.predict_native(model, inputs)

    def stage_metrics(self, model: FittedModel, test_pixels: np.ndarray, test_labels: np.ndarray) -> dict[str, float]:
        """Figures on how the fit went, logged with the family's run and read by the report."""
        return {key: float(value) for key, value in model.extras.items() if isinstance(value, int | float)}

    @staticmethod
    def tensor(pixels: np.ndarray, contract: PreprocessingContract) -> np.ndarray:
        return to_model_input(pixels, contract)
