"""Class balancing for training folds only: the study's rotation oversampling, or class weights.

Rotated copies are made from the fold's own training images after the split, so no rotated copy of a
validation or test image is ever trained on (the leak that inflated the original study's figures).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.utils.class_weight import compute_class_weight

Balancing = Literal["none", "rotate", "class_weight"]


def oversample_by_rotation(pixels: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Add 90/180/270-degree rotations of random images of each smaller class up to the majority count."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    target = counts.max()
    extra_pixels, extra_labels = [pixels], [labels]
    for cls, count in zip(classes, counts, strict=True):
        missing = int(target - count)
        if missing == 0:
            continue
        members = np.nonzero(labels == cls)[0]
        chosen = rng.choice(members, size=missing, replace=missing > len(members))
        turns = rng.integers(1, 4, size=missing)
        rotated = np.stack([np.rot90(pixels[i], k=int(k)) for i, k in zip(chosen, turns, strict=True)])
        extra_pixels.append(rotated)
        extra_labels.append(np.full(missing, cls, dtype=labels.dtype))
    return np.concatenate(extra_pixels), np.concatenate(extra_labels)


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights of the classes present (scikit-learn's 'balanced')."""
    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights, strict=True)}


def apply_balancing(
    pixels: np.ndarray, labels: np.ndarray, params: dict, seed: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Balance one training fold as params['balancing'] says; returns pixels, labels, params to fit with."""
    mode = params.get("balancing", "none")
    fit_params = {key: value for key, value in params.items() if key != "balancing"}
    if mode == "rotate":
        pixels, labels = oversample_by_rotation(pixels, labels, seed)
    elif mode == "class_weight":
        fit_params["class_weight"] = class_weights(labels)
    elif mode != "none":
        raise ValueError(f"unknown balancing {mode!r}; expected none, rotate or class_weight")
    return pixels, labels, fit_params
