"""Split-conformal prediction sets (LAC, "least ambiguous set-valued classifier"), defined once: training fits
them on the calibration slice and writes them into each model (and the ensemble's spec); inference reads them
back and answers, with every label, the set of classes the model cannot rule out (docs/referral.md).

The nonconformity score of a calibration image is ``1 - p(true class)`` under the model's calibrated
probabilities. For a miscoverage ``alpha`` the threshold ``q`` is the ``ceil((n + 1)(1 - alpha))``-th smallest of
the ``n`` scores; a new image's set holds every class with ``p >= 1 - q``. If calibration and new images are
exchangeable, the set holds the true class with probability at least ``1 - alpha``. A set may be empty: no class
is as likely as the true class was on ``1 - alpha`` of the calibration images, which for an accurate model is
how LAC spends its ``alpha`` on the images it is least sure of. One class is an answer to lean on; none or
several, a referral.

The thresholds are kept for a grid of ``alpha`` (``ALPHA_GRID``), not the scores themselves (a few hundred
numbers per model would not fit a registry tag); a service's ``alpha`` uses the grid's largest value not above
it, which is conservative: a smaller ``alpha`` gives larger sets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# Where a model's conformal thresholds sit in its ONNX metadata (beside the contract and the calibration).
CONFORMAL_METADATA_KEY = "brain_tumor_conformal"
ALPHA_GRID: tuple[float, ...] = (0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3)


class ConformalSets(BaseModel):
    """A model's LAC thresholds, fitted on ``calibration_images`` held-out images."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = "lac"
    calibration_images: int = Field(ge=1)
    # alpha (as text: JSON keys) -> threshold q on 1 - p(true class); 1.0 means "every class" (too few images).
    thresholds: dict[str, float]

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> ConformalSets:
        return cls.model_validate(json.loads(text))

    def threshold(self, alpha: float) -> tuple[float, float]:
        """(the grid's alpha used, its threshold): the largest grid value not above ``alpha``."""
        usable = [float(a) for a in self.thresholds if float(a) <= alpha + 1e-12]
        if not usable:
            raise ValueError(f"alpha {alpha} is below every fitted level {sorted(self.thresholds)}")
        chosen = max(usable)
        return chosen, self.thresholds[_key(chosen)]

    def prediction_set(self, probabilities: Sequence[float] | np.ndarray, alpha: float) -> list[int]:
        """The classes in the set for one row of probabilities, most probable first (possibly none)."""
        row = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        _, q = self.threshold(alpha)
        return sorted((int(i) for i in np.flatnonzero(row >= 1.0 - q - 1e-12)), key=lambda i: -row[i])


def _key(alpha: float) -> str:
    return f"{alpha:g}"


def fit_conformal(probabilities: np.ndarray, labels: np.ndarray, alphas: Sequence[float] = ALPHA_GRID) -> ConformalSets:
    """LAC thresholds from held-out images' calibrated probabilities (N, classes) and true labels (N,)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("conformal sets need held-out images")
    scores = np.sort(1.0 - np.asarray(probabilities, dtype=np.float64)[np.arange(len(labels)), labels])
    n = len(scores)
    thresholds = {}
    for alpha in alphas:
        rank = math.ceil((n + 1) * (1 - alpha))
        # Rounded up, never down: a threshold a hair too low would drop the class it exists for.
        thresholds[_key(alpha)] = 1.0 if rank > n else min(math.ceil(float(scores[rank - 1]) * 1e6 - 1e-6) / 1e6, 1.0)
    return ConformalSets(calibration_images=n, thresholds=thresholds)
