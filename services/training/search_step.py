"""The search step of a family's run: the grid's trials under 3-fold cross-validation (``search.run_search``), each
logged as a child run, and the winner's parameters for the refit."""

from __future__ import annotations

import time
from typing import Any

import mlflow

from services.training import tracking
from services.training.config import TrainingSettings
from services.training.data import PreparedData
from services.training.families import ModelFamily
from services.training.grids import candidates, search_overrides
from services.training.options import TrainingOptions
from services.training.parameters import read_by
from services.training.search import TrialOutcome, best_outcome, run_search


def _search(
    family_name: str,
    family: ModelFamily,
    data: PreparedData,
    options: TrainingOptions,
    settings: TrainingSettings,
    base: dict[str, Any],
) -> tuple[dict[str, Any], list[TrialOutcome]]:
    """Grid search with 3-fold CV; returns the winning parameters (at full refit cost) and every outcome."""
    overrides = search_overrides(family, options.search)
    grid = candidates(family, options.search, options.max_trials)
    trials = [{**base, **overrides, **choice} for choice in grid]
    outcomes = run_search(
        family_name,
        trials,
        lambda params: family.search_inputs(data.train(int(params["image_size"])), params),
        data.train_labels,
        data.train_groups,
        settings,
        options.seed,
        backend=options.backend,
        scheduler=options.scheduler,
        jobs=options.jobs,
    )
    winner = best_outcome(outcomes)
    # The winner's own grid choice: sub-grids of a list-of-dicts grid may set different keys.
    chosen = next(choice for choice, outcome in zip(grid, outcomes, strict=True) if outcome is winner)
    return {**base, **chosen}, outcomes


def search_and_log(
    family_name: str,
    family: ModelFamily,
    data: PreparedData,
    options: TrainingOptions,
    settings: TrainingSettings,
    base: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, float], float]:
    """Search, log every trial as a child run; returns the parameters to refit with, the winner's CV
    metrics and the search's seconds."""
    started = time.perf_counter()
    params, outcomes = _search(family_name, family, data, options, settings, base)
    params.update(read_by(family, options.overrides))
    search_seconds = time.perf_counter() - started
    _log_trials(family_name, outcomes)
    cv_metrics = {f"cv_{key}": value for key, value in best_outcome(outcomes).mean_metrics.items()}
    mlflow.log_metrics({**cv_metrics, "search_seconds": search_seconds, "search_trials": len(outcomes)})
    return params, cv_metrics, search_seconds


def log_curves(history: dict[str, list[float]]) -> None:
    for metric, values in history.items():
        for epoch, value in enumerate(values):
            mlflow.log_metric(f"curve_{metric}", value, step=epoch)


def _log_trials(family_name: str, outcomes: list[TrialOutcome]) -> None:
    for index, outcome in enumerate(outcomes):
        with mlflow.start_run(run_name=f"{family_name}-trial-{index:03d}", nested=True):
            tags = {"family": family_name, "stage": "trial", "failed": str(outcome.error is not None)}
            mlflow.set_tags({**tags, "worker": outcome.worker})
            tracking.log_params(outcome.params)
            metrics = {"trial_seconds": outcome.seconds, **outcome.mean_metrics}
            for fold, fold_metrics in enumerate(outcome.fold_metrics):
                metrics.update({f"fold{fold}_{key}": value for key, value in fold_metrics.items()})
            mlflow.log_metrics(metrics)
            log_curves(outcome.curves)
            if outcome.error:
                mlflow.set_tag("error", outcome.error[:500])
