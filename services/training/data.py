"""The data of one training run: decoded images at any size (cached), duplicate groups, the test split."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.training.duplicates import duplicate_groups, group_summary
from services.training.splits import split_train_test
from shared.core.dataset import LabelledFiles, discover, load_arrays

# Duplicates are looked for at this size whatever size the models use: enough detail for the hash.
HASH_IMAGE_SIZE = 64


@dataclass
class PreparedData:
    """Train and test images of a run; `train(size)` and `test(size)` decode once per size."""

    root: Path
    train_files: LabelledFiles
    test_files: LabelledFiles
    train_groups: np.ndarray
    cache_dir: Path | None
    info: dict[str, Any]
    _arrays: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def train_labels(self) -> np.ndarray:
        return self.train_files.labels

    @property
    def test_labels(self) -> np.ndarray:
        return self.test_files.labels

    def _pixels(self, part: str, files: LabelledFiles, size: int) -> np.ndarray:
        if (part, size) not in self._arrays:
            self._arrays[(part, size)] = load_arrays(files, size, self.cache_dir)
        return self._arrays[(part, size)]

    def train(self, size: int) -> np.ndarray:
        return self._pixels("train", self.train_files, size)

    def test(self, size: int) -> np.ndarray:
        return self._pixels("test", self.test_files, size)

    def test_file_names(self) -> list[str]:
        return [str(path.relative_to(self.root)) for path in self.test_files.paths]


def _subset(files: LabelledFiles, indices: np.ndarray) -> LabelledFiles:
    return LabelledFiles(tuple(files.paths[i] for i in indices), files.labels[indices])


def prepare_data(data_dir: Path, test_fraction: float, seed: int, cache_dir: Path | None) -> PreparedData:
    """Find the images, group near-duplicates, and split (or use Testing/ as the test set)."""
    started = time.perf_counter()
    layout = discover(data_dir)
    hash_pixels = load_arrays(layout.train, HASH_IMAGE_SIZE, cache_dir)
    groups = duplicate_groups(hash_pixels)
    info: dict[str, Any] = {"data_dir": str(layout.root), "train_pool_images": len(layout.train)}
    info.update(group_summary(groups))
    if layout.test is not None:
        # The Kaggle Testing/ folder shares near-duplicates with Training/: drop those from training.
        test_hash_pixels = load_arrays(layout.test, HASH_IMAGE_SIZE, cache_dir)
        joint = duplicate_groups(np.concatenate([hash_pixels, test_hash_pixels]))
        leaking = np.isin(joint[: len(layout.train)], joint[len(layout.train) :])
        keep = np.nonzero(~leaking)[0]
        train_files, test_files, train_groups = _subset(layout.train, keep), layout.test, groups[keep]
        info["test_source"] = "the folder's own Testing/ split"
        info["train_images_dropped_as_test_duplicates"] = int(leaking.sum())
    elif test_fraction == 0:  # a refit: every image trains, the recipe was evaluated on a split before
        train_files, test_files, train_groups = layout.train, _subset(layout.train, np.arange(0)), groups
        info["test_source"] = "none: every image trains (a refit of a recipe evaluated on a split before)"
    else:
        train_idx, test_idx = split_train_test(layout.train.labels, groups, test_fraction, seed)
        train_files, test_files = _subset(layout.train, train_idx), _subset(layout.train, test_idx)
        train_groups = groups[train_idx]
        share = len(test_idx) / len(layout.train)  # one of round(1 / test_fraction) folds, as realised
        info["test_source"] = f"stratified split keeping duplicate groups together, {share:.0%}, seed {seed}"
    data = PreparedData(layout.root, train_files, test_files, train_groups, cache_dir, info)
    data.info.update(
        train_images=len(train_files),
        test_images=len(test_files),
        test_files_sha256=_split_sha256(data, layout.train),
        prepare_seconds=round(time.perf_counter() - started, 2),
    )
    return data


def _split_sha256(data: PreparedData, pool: LabelledFiles) -> str:
    """What a version's ``test_files_sha256`` tag compares: the test files; for a refit, which has none, the data
    (so that refits of the same images are champions among themselves)."""
    if len(data.test_files) == 0:
        return hashlib.sha256(f"refit without a test split: {pool.fingerprint()}".encode()).hexdigest()
    return hashlib.sha256("\n".join(data.test_file_names()).encode()).hexdigest()
