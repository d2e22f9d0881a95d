"""Temperature scaling of probabilities, defined once: training fits a temperature on the calibration slice (a
family's is written into its ONNX graph, the ensemble's into its spec) and this is what applying one computes:
``softmax(log(clip(p, eps, 1)) / T)``. T above 1 softens the probabilities, below 1 sharpens them."""

from __future__ import annotations

import numpy as np

# Probabilities are clipped here before the logarithm: what the calibrated ONNX graph does too.
PROBABILITY_EPS = 1e-4


def log_probabilities(probabilities: np.ndarray, eps: float = PROBABILITY_EPS) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1.0))


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def apply_temperature(probabilities: np.ndarray, temperature: float, eps: float = PROBABILITY_EPS) -> np.ndarray:
    """softmax(log(clip(p, eps, 1)) / T), in float64 (N, classes)."""
    return softmax(log_probabilities(probabilities, eps) / temperature)
