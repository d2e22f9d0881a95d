"""The preprocessing contract: the one definition of how an image becomes a model input.

Training writes it into every ONNX model's metadata (key ``METADATA_KEY``); inference reads
it back from the model, so the two sides can never disagree.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CONTRACT_VERSION = 1
METADATA_KEY = "brain_tumor_contract"

# Label encoding of the original study: index i of a model's output is CLASS_NAMES[i].
CLASS_NAMES: tuple[str, ...] = ("notumor", "pituitary", "meningioma", "glioma")

DEFAULT_IMAGE_SIZE = 128

# "unit": pixels / 255 -> [0, 1]; "raw": 0..255 as float, the model scales inside itself
# (MobileNetV2 carries its own preprocess_input layer); "image_max": pixels / the image's own
# brightest pixel -> [0, 1], which removes the scanner's overall gain from the input.
Scaling = Literal["unit", "raw", "image_max"]
# "flat": (N, size*size) for the forest and the dense network; "nhwc": (N, size, size, 1).
Layout = Literal["flat", "nhwc"]


class PreprocessingContract(BaseModel):
    """What a model expects as input and what its outputs mean."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = CONTRACT_VERSION
    image_size: int = Field(DEFAULT_IMAGE_SIZE, ge=16, le=1024)
    # Images are always decoded to one grayscale channel: the file's own mode (L vs RGB)
    # correlates with the class in the Kaggle data and must never reach a model.
    channels: Literal[1] = 1
    scaling: Scaling = "unit"
    layout: Layout = "nhwc"
    class_names: tuple[str, ...] = CLASS_NAMES
    input_name: str = "input"

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> PreprocessingContract:
        return cls.model_validate(json.loads(text))

    def input_shape(self, batch: int | None = None) -> tuple[int | None, ...]:
        if self.layout == "flat":
            return (batch, self.image_size * self.image_size)
        return (batch, self.image_size, self.image_size, 1)


# How a trained model is stored in MLflow: each registered version is an MLflow Model (onnx flavor) whose
# file is ONNX_FILENAME; the run also keeps a plain copy under ONNX_ARTIFACT_DIR, and versions registered
# before MLflow Models were that bare folder. The ONNX graph has one input (contract.input_name) and an
# output named OUTPUT_NAME with class probabilities (N, len(class_names)).
ONNX_ARTIFACT_DIR = "onnx"
ONNX_FILENAME = "model.onnx"
OUTPUT_NAME = "probabilities"
