"""Occlusion: a patch slides over the head, each position hidden in turn, to see how much the evidence for the
class drops.

The patch is one cell of a ``cells`` x ``cells`` grid over the head's bounding box. It takes every cell of the grid,
then every cell of the same grid shifted down and right by ``1 / shifts`` of a cell, and so on ``shifts`` times, so
positions overlap. The head is cut into tiles of that shift (a ``cells * shifts`` grid cut to the head), each hidden
by one position of each shifted grid; a tile's weight is the mean weight of those positions. Deterministic (nothing
is drawn at random) and one batched call: one copy per position plus the image itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.core.explanation.regions import DEFAULT_CELLS, dense_labels, grid_cells, head_mask
from shared.core.explanation.result import (
    Explanation,
    PredictMasked,
    checked_image,
    checked_probabilities,
    chosen_label,
    elapsed_ms,
    log_odds,
)
from shared.core.masking import DEFAULT_FILL, MAX_GRID_SIDE, Fill, RegionMasks

# The grid and the grid shifted by half a cell. Chosen on training slices, never test ones (docs/explanations.md).
DEFAULT_SHIFTS = 2


@dataclass(frozen=True)
class SlidingPatches:
    """The tiles of the head (``labels``: 0 outside it, 1..R) and the tiles each patch position hides."""

    labels: np.ndarray
    hidden: np.ndarray  # (positions, R) bool

    def keep(self) -> np.ndarray:
        """The keep matrix (1 + positions, R): the image itself, then each position hidden."""
        return np.concatenate([np.ones((1, self.hidden.shape[1]), dtype=bool), ~self.hidden])

    def tile_weights(self, position_weights: np.ndarray) -> np.ndarray:
        """Each tile's mean weight over the positions that hide it: (R,)."""
        hidden = self.hidden.astype(np.float64)
        return (position_weights @ hidden) / hidden.sum(axis=0)


def sliding_patches(pixels: np.ndarray, cells: int = DEFAULT_CELLS, shifts: int = DEFAULT_SHIFTS) -> SlidingPatches:
    """Every position of the patch, on each shifted grid, that hides at least one tile of the head. Positions
    overhang the tile grid where a shifted grid does, so each tile is hidden by exactly ``shifts`` positions."""
    side = cells * shifts
    if shifts < 1 or side > MAX_GRID_SIDE:
        raise ValueError(f"need shifts >= 1 and cells x shifts <= {MAX_GRID_SIDE} tiles a side; got {cells}, {shifts}")
    head = head_mask(pixels)
    tile_row, tile_col = grid_cells(head, side)
    tile = tile_row * side + tile_col
    labels = dense_labels(np.where(head, tile + 1, 0))
    present = np.unique(tile[head])  # label k is tile present[k - 1]
    row, col = present[None, :] // side, present[None, :] % side
    grids = []
    for shift in range(shifts):
        starts = np.arange(-shift, side, shifts)[:, None]
        rows, cols = (row >= starts) & (row < starts + shifts), (col >= starts) & (col < starts + shifts)
        grids.append((rows[:, None, :] & cols[None, :, :]).reshape(-1, present.size))
    hidden = np.concatenate(grids)
    return SlidingPatches(labels, hidden[hidden.any(axis=1)])


def occlusion(
    pixels: np.ndarray,
    predict: PredictMasked,
    class_names: Sequence[str],
    *,
    label: int | None = None,
    fill: Fill = DEFAULT_FILL,
    cells: int = DEFAULT_CELLS,
    shifts: int = DEFAULT_SHIFTS,
) -> Explanation:
    """Explain one image (uint8 (H, W), at the explained model's size) for ``label`` or the predicted class.

    A position's weight is its weight of evidence (Zintgraf et al., 2017): the class's log-odds for the image
    less its log-odds with the patch there; positive when hiding it lowers the class, so the tiles under it
    support it. Log-odds rank positions as the probability's drop does, and still rank them when the model is so
    sure that its probability stays 1.0 in float32 whatever one patch hides.
    """
    image = checked_image(pixels)
    started = time.perf_counter()
    patches = sliding_patches(image, cells, shifts)
    regions_ms = elapsed_ms(started)
    masks = RegionMasks(patches.labels, patches.keep(), fill)
    started = time.perf_counter()
    probabilities = checked_probabilities(predict(masks), masks.copies, len(class_names))
    predict_ms = elapsed_ms(started)
    started = time.perf_counter()
    chosen = chosen_label(label, probabilities[0])
    evidence = log_odds(probabilities, chosen)
    weights = patches.tile_weights(evidence[0] - evidence[1:])
    return Explanation(
        method="occlusion",
        fill=fill,
        label_index=chosen,
        class_names=tuple(class_names),
        probabilities=probabilities[0],
        labels=patches.labels,
        weights={tile: float(weight) for tile, weight in enumerate(weights, start=1)},
        num_samples=masks.copies,
        seed=None,
        timings_ms={"regions": regions_ms, "predict": predict_ms, "fit": elapsed_ms(started)},
    )
