"""Hyper-parameter search with stratified, duplicate-group-aware 3-fold CV, run through joblib.

Trials are plain function calls (`run_trial`), so joblib can run them in this process, in local
worker processes, or on a Dask cluster (`backend="dask"`) without any change to the trial code.
Each trial returns its per-fold metrics; the parent process logs them to MLflow.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import Any

import joblib
import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from services.training.balancing import apply_balancing
from services.training.config import TrainingSettings
from services.training.evaluation import evaluate
from services.training.families import get_family
from services.training.splits import split_train_test

CV_FOLDS = 3
NOT_MODEL_PARAMS = ("image_size", "scaling")  # they shape the input contract, not the model
FOLD_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")


@dataclass
class TrialOutcome:
    params: dict[str, Any]
    fold_metrics: list[dict[str, float]]
    seconds: float
    curves: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None
    worker: str = ""  # where the trial ran (`running_on`)

    @property
    def mean_metrics(self) -> dict[str, float]:
        if not self.fold_metrics:
            return {}
        return {f"mean_{key}": float(np.mean([m[key] for m in self.fold_metrics])) for key in self.fold_metrics[0]}

    @property
    def score(self) -> float:
        """Model selection criterion: mean CV accuracy, then macro F1."""
        means = self.mean_metrics
        return means.get("mean_val_accuracy", -1.0) + 1e-3 * means.get("mean_val_f1_macro", 0.0)


def cv_folds(labels: np.ndarray, groups: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    n_splits = min(CV_FOLDS, int(np.bincount(labels).min()))
    splitter = StratifiedGroupKFold(n_splits=max(n_splits, 2), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def fold_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """A fold's validation scores: the macro figures of `evaluate` (per-class ones would crowd the trial runs)."""
    metrics = evaluate(labels, probabilities, prefix="val_").metrics
    return {f"val_{name}": metrics[f"val_{name}"] for name in FOLD_METRICS}


def run_trial(
    family_name: str,
    params: dict[str, Any],
    inputs: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    settings: TrainingSettings | None,
    seed: int,
) -> TrialOutcome:
    """Fit and score one parameter set on every fold. `inputs` are what the family's `search_inputs` made of
    the images (the images themselves, or features shared by every trial)."""
    started = time.perf_counter()
    family = get_family(family_name, settings)
    contract = family.contract(int(params.get("image_size", 128)), params.get("scaling"))
    model_params = {k: v for k, v in params.items() if k not in NOT_MODEL_PARAMS}
    model_params.setdefault("seed", seed)
    fold_metrics: list[dict[str, float]] = []
    curves: dict[str, list[float]] = {}
    try:
        for fold, (train_idx, val_idx) in enumerate(folds):
            fit_idx, stop_idx = train_idx, None
            if family.holds_out(model_params):  # a slice of the fold's own training part
                inner_fit, inner_stop = split_train_test(labels[train_idx], groups[train_idx], 0.1, seed + fold)
                fit_idx, stop_idx = train_idx[inner_fit], train_idx[inner_stop]
            fit_inputs, fit_labels, fit_params = apply_balancing(inputs[fit_idx], labels[fit_idx], model_params, seed)
            stop = None if stop_idx is None else (inputs[stop_idx], labels[stop_idx])
            fitted = family.fit_search_inputs(fit_inputs, fit_labels, fit_params, contract, stop)
            fold_metrics.append(fold_scores(labels[val_idx], family.predict_search_inputs(fitted, inputs[val_idx])))
            if fold == 0:
                curves = fitted.history
    except Exception as exc:  # a bad combination is reported as a failed trial, the search goes on
        error = f"{type(exc).__name__}: {exc}"
        return TrialOutcome(params, fold_metrics, time.perf_counter() - started, curves, error, running_on())
    return TrialOutcome(params, fold_metrics, time.perf_counter() - started, curves, worker=running_on())


def running_on() -> str:
    """Where this code runs: the Dask worker's address on a cluster, else this process ('pid 1234')."""
    distributed = sys.modules.get("distributed")  # a Dask worker has imported it; nothing else needs to
    if distributed is not None:
        with suppress(ValueError):  # not inside a Dask task
            return str(distributed.get_worker().address)
    return f"pid {os.getpid()}"


def joblib_backend(backend: str, scheduler: str | None, jobs: int) -> AbstractContextManager[Any]:
    """Where trials run: 'local' (this process when jobs is 1, else loky workers) or 'dask'."""
    if backend == "dask":
        if not scheduler:
            raise ValueError("the dask backend needs a scheduler address, e.g. tcp://127.0.0.1:8786")
        from dask.distributed import Client

        client = Client(scheduler, timeout="20s")
        return _DaskContext(client)
    if jobs == 1:
        return nullcontext()
    return joblib.parallel_config(backend="loky", n_jobs=jobs)


class _DaskContext(AbstractContextManager[Any]):
    def __init__(self, client: Any) -> None:
        self.client = client
        self._config = joblib.parallel_config(backend="dask")

    def __enter__(self) -> Any:
        self._config.__enter__()
        return self.client

    def __exit__(self, *exc: object) -> None:
        self._config.__exit__(*exc)
        self.client.close()


def run_search(
    family_name: str,
    trials: list[dict[str, Any]],
    inputs_for: Callable[[dict[str, Any]], np.ndarray],
    labels: np.ndarray,
    groups: np.ndarray,
    settings: TrainingSettings | None,
    seed: int,
    backend: str = "local",
    scheduler: str | None = None,
    jobs: int = 1,
) -> list[TrialOutcome]:
    """Run every trial on the same folds; returns outcomes in trial order."""
    folds = cv_folds(labels, groups, seed)
    calls = [
        joblib.delayed(run_trial)(family_name, params, inputs_for(params), labels, groups, folds, settings, seed)
        for params in trials
    ]
    with joblib_backend(backend, scheduler, jobs):
        n_jobs = -1 if backend == "dask" else jobs
        return list(joblib.Parallel(n_jobs=n_jobs)(calls))


def best_outcome(outcomes: list[TrialOutcome]) -> TrialOutcome:
    valid = [outcome for outcome in outcomes if outcome.error is None and outcome.fold_metrics]
    if not valid:
        errors = "; ".join(sorted({outcome.error or "no folds" for outcome in outcomes}))
        raise RuntimeError(f"every trial failed: {errors}")
    return max(valid, key=lambda outcome: outcome.score)
