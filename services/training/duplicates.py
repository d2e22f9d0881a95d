"""Near-duplicate detection: the Kaggle data holds the same slice saved twice, sometimes re-encoded.

Each image gets a 64-bit difference hash (dHash) of its downscaled grayscale pixels; images whose
hashes differ in at most `max_distance` bits are joined into one group (union-find, transitive).
Splits and CV folds then keep each group on one side.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HASH_SIDE = 8
DEFAULT_MAX_DISTANCE = 4


def dhash(pixels: np.ndarray) -> np.uint64:
    """64-bit difference hash of one uint8 grayscale image."""
    small = np.asarray(
        Image.fromarray(pixels).resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.BILINEAR), dtype=np.int16
    )
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return np.uint64(int("".join("1" if b else "0" for b in bits), 2))


def _popcount(values: np.ndarray) -> np.ndarray:
    counts = np.zeros(values.shape, dtype=np.uint8)
    as_bytes = values.view(np.uint8).reshape(*values.shape, 8)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    for k in range(8):
        counts += table[as_bytes[..., k]]
    return counts


def duplicate_groups(images: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE) -> np.ndarray:
    """Group id per image; images in one group are near-duplicates of each other (transitively)."""
    hashes = np.array([dhash(image) for image in images], dtype=np.uint64)
    parent = np.arange(len(images))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for i in range(len(hashes) - 1):
        distances = _popcount(hashes[i + 1 :] ^ hashes[i])
        for offset in np.nonzero(distances <= max_distance)[0]:
            a, b = find(i), find(i + 1 + int(offset))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(len(images))])


def group_summary(groups: np.ndarray) -> dict[str, int]:
    _, sizes = np.unique(groups, return_counts=True)
    return {
        "duplicate_groups": int((sizes > 1).sum()),
        "images_in_duplicate_groups": int(sizes[sizes > 1].sum()),
    }
