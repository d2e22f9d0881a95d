"""The model families. Each one turns uint8 grayscale images into a fitted model and an ONNX graph.

Which families exist is ``shared.kit.schemas.FAMILY_CLASSES`` (short name -> "module:Class"). A family's
module is imported only when that family is asked for: the forest must not pay for importing TensorFlow.
"""

from __future__ import annotations

import importlib

from services.training.config import TrainingSettings
from services.training.families.base import FittedModel, ModelFamily
from shared.kit.schemas import FAMILY_CLASSES


def family_class(name: str) -> type[ModelFamily]:
    """The class of the family with this short name."""
    if name not in FAMILY_CLASSES:
        raise ValueError(f"unknown model family {name!r}; expected one of {sorted(FAMILY_CLASSES)}")
    module_name, _, class_name = FAMILY_CLASSES[name].partition(":")
    family: type[ModelFamily] = getattr(importlib.import_module(module_name), class_name)
    return family


def get_family(name: str, settings: TrainingSettings | None = None) -> ModelFamily:
    """The family with this short name, given what it may need from the settings."""
    return family_class(name)(settings)


__all__ = ["FittedModel", "ModelFamily", "family_class", "get_family"]
