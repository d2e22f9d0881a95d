"""The ensemble, defined once for training (which fits and registers it) and inference (which serves it): a
registered version of ``brain-tumor-ensemble`` names member versions and weights, and carries its prediction
sets' thresholds, as version tags; its answer is the weighted mean of the members' calibrated probabilities,
tempered by the ensemble's own temperature (fitted on the calibration slice; 1, the mean itself, for versions
registered before it)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.core.conformal import ConformalSets
from shared.core.temperature import apply_temperature

MEMBERS_TAG = "ensemble_members"
WEIGHTS_TAG = "ensemble_weights"
CONFORMAL_TAG = "ensemble_conformal"
TEMPERATURE_TAG = "ensemble_temperature"
SPEC_TAGS = (MEMBERS_TAG, WEIGHTS_TAG, CONFORMAL_TAG, TEMPERATURE_TAG)


class SpecError(ValueError):
    """The tags do not describe a servable ensemble."""


def combine(
    member_probabilities: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray, temperature: float = 1.0
) -> np.ndarray:
    """The weighted mean of the members' probabilities (weights summing to 1), in float64; with a temperature other
    than 1, tempered as a family's graph tempers its own (``shared.core.temperature``)."""
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in member_probabilities])
    mean = np.tensordot(np.asarray(weights, dtype=np.float64), stacked, axes=1)
    return mean if temperature == 1.0 else apply_temperature(mean, temperature)


@dataclass(frozen=True)
class EnsembleSpec:
    """Member model -> pinned version, member model -> weight (summing to 1), and the prediction sets."""

    members: dict[str, str]
    weights: dict[str, float]
    conformal: ConformalSets | None = None
    temperature: float = 1.0

    def running_members(self) -> dict[str, str]:
        """The members it runs: those weighing more than 0 (the others were left out when it was fitted)."""
        return {name: version for name, version in self.members.items() if self.weights[name] > 0}

    def to_tags(self) -> dict[str, str]:
        tags = {
            MEMBERS_TAG: json.dumps(self.members, sort_keys=True),
            WEIGHTS_TAG: json.dumps(self.weights, sort_keys=True),
        }
        if self.conformal is not None:
            tags[CONFORMAL_TAG] = self.conformal.to_json()
        if self.temperature != 1.0:
            tags[TEMPERATURE_TAG] = repr(self.temperature)
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> EnsembleSpec:
        """The spec a version's tags describe; SpecError naming what is wrong. Versions registered before
        prediction sets have no conformal tag: they answer without sets."""
        try:
            members = {str(k): str(v) for k, v in json.loads(tags[MEMBERS_TAG]).items()}
            weights = {str(k): float(v) for k, v in json.loads(tags[WEIGHTS_TAG]).items()}
            conformal = ConformalSets.from_json(tags[CONFORMAL_TAG]) if CONFORMAL_TAG in tags else None
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise SpecError(f"its version has no valid {MEMBERS_TAG!r} and {WEIGHTS_TAG!r} tags") from exc
        return cls._normalised(members, weights, conformal, _temperature(tags.get(TEMPERATURE_TAG, 1.0)))

    @classmethod
    def from_document(cls, document: object) -> EnsembleSpec:
        """The spec in the file registered for an ensemble version (``members``, ``weights``, ``conformal``: what
        training logs; its sha256 is the version's ``onnx_sha256`` tag); SpecError naming what is wrong."""
        if not isinstance(document, dict):
            raise SpecError("its spec file is not a JSON object")
        try:
            members = {str(k): str(v) for k, v in document["members"].items()}
            weights = {str(k): float(v) for k, v in document["weights"].items()}
            found = document.get("conformal")
            conformal = None if found is None else ConformalSets.model_validate(found)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise SpecError("its spec file has no valid members and weights") from exc
        return cls._normalised(members, weights, conformal, _temperature(document.get("temperature", 1.0)))

    @classmethod
    def _normalised(
        cls, members: dict[str, str], weights: dict[str, float], conformal: ConformalSets | None, temperature: float
    ) -> EnsembleSpec:
        if not members or set(members) != set(weights) or sum(weights.values()) <= 0:
            raise SpecError("its members and weights do not match")
        total = sum(weights.values())
        return cls(members, {name: weight / total for name, weight in weights.items()}, conformal, temperature)


def _temperature(value: object) -> float:
    """A spec's temperature: a positive finite number (1, the plain mean, when a version has none)."""
    try:
        temperature = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise SpecError("its temperature is not a number") from exc
    if not 0.0 < temperature < float("inf"):
        raise SpecError("its temperature is not a positive finite number")
    return temperature
