"""Referral: which answers a radiologist should check (docs/referral.md).

Every answer carries the model's prediction set (``shared.core.conformal``: the classes it cannot rule out at the
service's ``alpha``) and ``referral``: true unless the set is exactly one class (an empty set: no class is as
likely as the true class is on ``1 - alpha`` of calibration images; several: the model cannot tell them apart),
and true when the guard found the image unusual for a brain MRI slice (answered, not refused); the reasons in
words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.core.conformal import ConformalSets
from shared.kit.schemas import OodOut


@dataclass(frozen=True)
class Referral:
    prediction_set: list[str] | None  # None: the model has no conformal thresholds (registered before them)
    refer: bool
    reason: str | None


def referral_of(
    row: np.ndarray, class_names: tuple[str, ...], conformal: ConformalSets | None, alpha: float, ood: OodOut | None
) -> Referral:
    """The referral of one answer: its row of probabilities, the model's sets, and the guard's verdict. Only a set
    of exactly one class is an answer to lean on."""
    reasons = []
    prediction_set = None
    if conformal is not None:
        level, _ = conformal.threshold(alpha)
        prediction_set = [class_names[i] for i in conformal.prediction_set(row, level)]
        if not prediction_set:
            reasons.append(f"the model is not sure of any class at {1 - level:.0%} confidence")
        elif len(prediction_set) > 1:
            named = f"{', '.join(prediction_set[:-1])} and {prediction_set[-1]}"
            reasons.append(f"the model cannot tell {named} apart at {1 - level:.0%} confidence")
    if ood is not None and ood.declared_modality:
        reasons.append(f"the DICOM file declares modality {ood.declared_modality}, not MR")
    elif ood is not None and (ood.unusual or ood.flag):
        reasons.append(f"the image is unusual for a brain MRI slice (guard score {ood.score:.2f})")
    return Referral(prediction_set, bool(reasons), "; ".join(reasons) or None)
