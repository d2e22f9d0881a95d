"""The refit step of a family's run: the chosen parameters fitted on the whole training part."""

from __future__ import annotations

import time
from typing import Any

import mlflow

from services.training.balancing import apply_balancing
from services.training.data import PreparedData
from services.training.families import FittedModel, ModelFamily
from services.training.search import NOT_MODEL_PARAMS
from services.training.splits import split_train_test


def refit(family: ModelFamily, data: PreparedData, params: dict[str, Any], seed: int) -> tuple[FittedModel, float]:
    """Fit on the whole training part, less a held-out slice only if the family watches one."""
    size = int(params["image_size"])
    model_params = {key: value for key, value in params.items() if key not in NOT_MODEL_PARAMS}
    pixels, labels = data.train(size), data.train_labels
    validation = None
    if family.holds_out(model_params):  # a duplicate-group-aware 10% slice; otherwise every image trains
        fit_idx, stop_idx = split_train_test(labels, data.train_groups, 0.1, seed + 1)
        validation = (pixels[stop_idx], labels[stop_idx])
        pixels, labels = pixels[fit_idx], labels[fit_idx]
    held_out = 0 if validation is None else len(validation[1])
    mlflow.log_metrics({"refit_images": len(labels), "refit_held_out_images": held_out})
    pixels, labels, model_params = apply_balancing(pixels, labels, model_params, seed)
    started = time.perf_counter()
    fitted = family.fit(pixels, labels, model_params, family.contract(size, params.get("scaling")), validation)
    return fitted, time.perf_counter() - started
