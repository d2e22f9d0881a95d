"""A family's parameters for a run: its defaults with what the run asks for on top (the one place a run's options
become model parameters)."""

from __future__ import annotations

from typing import Any

from services.training.families import ModelFamily
from services.training.options import TrainingOptions


def base_params(family: ModelFamily, options: TrainingOptions) -> dict[str, Any]:
    """The family's defaults with what the run asks for on top."""
    base = {**family.default_params(), "balancing": "none", "seed": options.seed}
    if options.image_size is not None:
        base["image_size"] = options.image_size
    if options.epochs is not None and "epochs" in base:
        base["epochs"] = options.epochs
    return {**base, **read_by(family, options.overrides)}


def read_by(family: ModelFamily, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters this family reads: a run's ``--set`` keys go to every family that reads them (a forest's
    n_estimators is no parameter of the networks), and a recipe logged with a stray key does not pass it on."""
    accepted = family.accepted_params()
    return {key: value for key, value in params.items() if key in accepted}
