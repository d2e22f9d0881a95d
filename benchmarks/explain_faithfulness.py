"""Deletion and insertion curves of an explanation: how fast the explained class fades as the pixels the
explanation ranks first are hidden, and how fast it comes back as they are revealed.

The head's pixels are ranked by their region's weight (strongest support first; within a region in raster
order; head pixels in no region last) and cut into 5% buckets: a label map whose label k (1..10) is the k-th
bucket and label 11 the other half of the head. One ``RegionMasks`` then carries both curves, eleven rows each:
deletion hides buckets 1..j at step j (0%, 5%, ..., 50% of the head hidden); insertion starts from the whole head
hidden and reveals buckets 1..j. Each curve is the explained class's probability over the intact image's, and
its AUC the mean of its eleven points: deletion low and insertion high is a faithful ranking. The same curves
for random orders of the method's own regions are the baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from shared.core.explanation.result import PredictMasked
from shared.core.masking import Fill, RegionMasks

# Buckets of 5% of the head, up to half of it: steps 0%, 5%, ..., 50%.
BUCKETS = 10
BUCKET_SHARE = 0.05
STEPS = BUCKETS + 1
# The label of the head's pixels ranked after the last bucket: kept by every deletion row, hidden by every
# insertion row.
REST = BUCKETS + 1


@dataclass(frozen=True)
class Curves:
    """The explained class's probability at each step, over the intact image's."""

    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> float:
        return float(self.deletion.mean())

    @property
    def insertion_auc(self) -> float:
        return float(self.insertion.mean())


def strongest_first(weights: Mapping[int, float]) -> list[int]:
    """Regions by decreasing weight (strongest support first); ties: lower region number first."""
    return sorted(weights, key=lambda region: (-weights[region], region))


def random_orders(regions: Sequence[int], seeds: Sequence[int]) -> list[list[int]]:
    """One random permutation of ``regions`` per seed: the baseline orderings."""
    return [[int(r) for r in np.random.default_rng(seed).permutation(np.asarray(regions))] for seed in seeds]


def bucket_labels(labels: np.ndarray, head: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """The label map of the ranking: each head pixel's 5% bucket (1..10) or REST; 0 outside the head.

    ``labels`` are the explanation's regions (0: none), ``head`` the head's pixels (bool, same shape), ``order``
    the regions most important first; head pixels whose region is not in ``order`` come last.
    """
    if labels.shape != head.shape:
        raise ValueError(f"labels {labels.shape} and head {head.shape} differ in shape")
    position = np.full(int(labels.max()) + 1, len(order), dtype=np.int64)
    position[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    pixels = np.flatnonzero(head)
    if pixels.size == 0:
        raise ValueError("the head is empty: nothing to rank")
    ranked = pixels[np.argsort(position[labels.ravel()[pixels]], kind="stable")]
    buckets = np.minimum(np.arange(ranked.size) * round(1 / BUCKET_SHARE) // ranked.size, BUCKETS) + 1
    out = np.zeros(labels.size, dtype=np.int32)
    out[ranked] = buckets
    return out.reshape(labels.shape)


def curve_keep() -> np.ndarray:
    """(2 x STEPS, REST) keep rows: the deletion curve's steps, then the insertion curve's."""
    bucket = np.arange(1, REST + 1)[None, :]
    step = np.arange(STEPS)[:, None]
    deletion = bucket > step  # bucket REST (> every step) always kept
    insertion = (bucket <= step) & (bucket != REST)
    return np.concatenate([deletion, insertion])


def curves(probabilities: np.ndarray, label_index: int) -> Curves:
    """The two curves from the probabilities of ``curve_keep``'s rows; row 0 is the intact image."""
    explained = np.asarray(probabilities, dtype=np.float64)[:, label_index]
    if explained.shape != (2 * STEPS,):
        raise ValueError(f"expected {2 * STEPS} rows of probabilities; got {explained.shape[0]}")
    intact = explained[0]
    if intact <= 0:
        raise ValueError("the explained class has probability 0 on the intact image")
    return Curves(deletion=explained[:STEPS] / intact, insertion=explained[STEPS:] / intact)


def measure_order(
    predict: PredictMasked, labels: np.ndarray, head: np.ndarray, order: Sequence[int], label_index: int, fill: Fill
) -> Curves:
    """Both curves of one ranking, with one call of ``predict`` (a ``PredictMasked``)."""
    masks = RegionMasks(bucket_labels(labels, head, order), curve_keep(), fill)
    return curves(predict(masks), label_index)
