"""Train/test splitting that keeps every group of near-duplicate images on one side."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def split_train_test(
    labels: np.ndarray, groups: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, group-aware split: indices (train, test). No group straddles the two sides."""
    n_splits = max(2, round(1.0 / test_fraction))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, test_idx = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return np.sort(train_idx), np.sort(test_idx)
