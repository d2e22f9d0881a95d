"""The four model families. Each one turns uint8 grayscale images into a fitted model and an ONNX graph."""

from __future__ import annotations

from pathlib import Path

from services.training.families.base import FittedModel, ModelFamily


def get_family(name: str, mobilenetv2_weights: Path | None = None) -> ModelFamily:
    """Import lazily: the forest must not pay for importing TensorFlow."""
    if name == "rf":
        from services.training.families.random_forest import RandomForestFamily

        return RandomForestFamily()
    if name == "snn":
        from services.training.families.snn import ShallowNetFamily

        return ShallowNetFamily()
    if name == "cnn":
        from services.training.families.cnn import SmallCnnFamily

        return SmallCnnFamily()
    if name == "mobilenetv2":
        from services.training.families.mobilenetv2 import MobileNetV2Family

        return MobileNetV2Family(mobilenetv2_weights)
    raise ValueError(f"unknown model family {name!r}")


__all__ = ["FittedModel", "ModelFamily", "get_family"]
