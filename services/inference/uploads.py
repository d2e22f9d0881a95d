"""An uploaded image file on its way to a model: decoded once, judged by the guard, made the model's tensor."""

from __future__ import annotations

import numpy as np
from PIL import Image

from services.inference.ensemble import EnsembleClassifier
from services.inference.ood import OodGuard
from shared import imaging
from shared.onnx_classifier import OnnxClassifier
from shared.schemas import OodOut


def judge(guard: OodGuard, data: bytes, frame: int | None = None) -> tuple[Image.Image, OodOut | None]:
    """The file decoded to grayscale (a bad file: its 415, guard or not) and the guard's verdict on that decoding
    (None: no guard, or mode off; in refuse mode a non-MRI image is a 422)."""
    gray = imaging.decode_grayscale(data, frame)
    return gray, guard.check(data, frame, gray)


def judge_and_prepare(
    classifier: OnnxClassifier | EnsembleClassifier, guard: OodGuard, data: bytes, frame: int | None = None
) -> tuple[np.ndarray, OodOut | None]:
    """The file decoded to grayscale once (a bad file: its 415): the guard's verdict on it (in refuse mode a
    non-MRI image is a 422 here, before any model) and the model's tensor from the same decoding."""
    gray, ood = judge(guard, data, frame)
    return classifier.tensor_from_image(gray), ood
