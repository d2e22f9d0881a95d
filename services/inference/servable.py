"""The one seam every model the service runs goes through (after KServe's ``Model`` and MLServer's ``MLModel``).

A servable is loaded once (``load``; ``ready`` after), turns decoded images into one batch of its input
(``preprocess``: an (N, *input_shape) float32 array), runs a batch (``predict``: one row of scores per image)
and reads one row (``postprocess``). The data plane (``dataplane``) runs every servable the same way, and the
runner (``runner``) may join the batches of concurrent requests, since every input is one array.

Implemented by the ONNX classifier (``shared.core.onnx_classifier.OnnxClassifier``), the ensemble (``ensemble``) and
the guard against non-MRI input (``guard``). Classifiers also carry their preprocessing contract and accept a
caller's own model tensor (``preprocess_tensor``: the Open Inference Protocol's FP32 input).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import numpy as np

from shared.core.conformal import ConformalSets
from shared.core.contract import PreprocessingContract
from shared.core.imaging import DecodedImage
from shared.core.onnx_classifier import ClassScores

AnswerT_co = TypeVar("AnswerT_co", covariant=True)


class Servable(Protocol[AnswerT_co]):
    """A loaded model of any kind, as the data plane runs it."""

    name: str
    version: str
    ready: bool

    @property
    def key(self) -> str:
        """``name/version``."""
        ...

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one image's row of the input ``preprocess`` makes (without the batch)."""
        ...

    def load(self) -> None: ...

    def preprocess(self, images: Sequence[DecodedImage]) -> np.ndarray: ...

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

    def postprocess(self, row: np.ndarray) -> AnswerT_co: ...


class Classifier(Servable[ClassScores], Protocol):
    """A servable that answers the four classes: an ONNX classifier or the ensemble; ``conformal``: its prediction
    sets' thresholds (None for a version registered before them)."""

    conformal: ConformalSets | None

    @property
    def contract(self) -> PreprocessingContract: ...

    def preprocess_tensor(self, tensor: np.ndarray) -> np.ndarray: ...
