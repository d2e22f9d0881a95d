"""The search: study grids accepted, parent/child MLflow runs with per-fold metrics, aliases,
the comparison report, balancing inside folds only, and trials on a real Dask cluster."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dask import distributed
from mlflow import MlflowClient

from services.training.balancing import apply_balancing, oversample_by_rotation
from services.training.config import TrainingSettings
from services.training.families import get_family
from services.training.families.random_forest import RandomForestFamily
from services.training.grids import candidates
from services.training.options import FamilyState, TrainingOptions
from services.training.pipeline import run_training
from services.training.search import best_outcome, cv_folds, run_search
from shared.core.dataset import SAMPLE_DATA_DIR, discover, load_arrays


def test_seed_grids_are_the_studys() -> None:
    rf = candidates(get_family("rf"), "seed")
    assert len(rf) == 10 * 4 * 3 * 2
    assert sorted({t["n_estimators"] for t in rf}) == list(range(10, 201, 20))
    study_forest = {(t["forest"], t["augment"], t["scaling"]) for t in rf}
    assert study_forest == {("random_forest", "none", "unit")}, "the study's forest, whatever the defaults are"
    cnn = candidates(get_family("cnn"), "seed")
    assert len(cnn) == 3 * 3 * 3 * 2 * 2 * 2
    assert {t["optimizer"] for t in cnn} == {"adam", "sgd", "rmsprop"}
    # The study's recipe, whatever this project's defaults add (flips, mixup, mirror averaging, weight decay).
    recipe = {(t["augment"], t["mixup_alpha"], t["test_time_flip"], t["weight_decay"]) for t in cnn}
    assert recipe == {("none", 0.0, False, 0.0)}
    assert len(candidates(get_family("cnn"), "seed", max_trials=2)) == 2


def test_rotation_oversampling_balances_only_what_it_is_given() -> None:
    pixels = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4)
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    balanced, balanced_labels = oversample_by_rotation(pixels, labels, seed=0)
    assert np.bincount(balanced_labels).tolist() == [6, 6, 6]
    originals = {p.tobytes() for p in pixels}
    for extra in balanced[len(pixels) :]:
        assert any(np.rot90(extra, k).tobytes() in originals for k in (1, 2, 3)), "every extra is a rotation"
    _, _, params = apply_balancing(pixels, labels, {"balancing": "class_weight", "x": 1}, 0)
    assert params["class_weight"][2] > params["class_weight"][0] and "balancing" not in params


def test_seed_search_logs_parent_and_child_runs(
    training_settings: TrainingSettings, served_model: Callable[[MlflowClient, str], Any]
) -> None:
    results = run_training(
        TrainingOptions(families=["rf", "cnn"], search="seed", max_trials=2, image_size=32, epochs=1),
        training_settings,
    )
    assert all(result.state is FamilyState.DONE for result in results), [r.error for r in results]
    client = MlflowClient(training_settings.tracking_uri)
    for result in results:
        parent = client.get_run(result.mlflow_run_id)
        assert "cv_mean_val_accuracy" in parent.data.metrics and parent.data.params
        children = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        assert len(children) == 2
        for child in children:
            folds = [child.data.metrics[f"fold{k}_val_accuracy"] for k in range(3)]
            assert child.data.metrics["mean_val_accuracy"] == pytest.approx(np.mean(folds))
        name = f"brain-tumor-{result.family}"
        assert client.get_model_version_by_alias(name, "champion").version is not None
    best_holders = []
    for family in ("rf", "cnn"):
        try:
            best_holders.append(client.get_model_version_by_alias(f"brain-tumor-{family}", "best"))
        except Exception:  # noqa: BLE001 - the alias is on exactly one of the two
            continue
    assert len(best_holders) == 1
    report = (training_settings.report_dir / "comparison.md").read_text()
    assert "Random Forest" in report and "Small CNN" in report and "0.952" in report
    assert (training_settings.report_dir / "comparison.png").stat().st_size > 1000


def test_search_runs_on_a_dask_cluster() -> None:
    layout = discover(SAMPLE_DATA_DIR)
    pixels, labels = load_arrays(layout.train, 16), layout.train.labels
    groups = np.arange(len(labels))
    trials = [{"image_size": 16, "n_estimators": n, "max_features": "sqrt"} for n in (5, 10)]
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        outcomes = run_search(
            "rf",
            trials,
            lambda params: pixels,
            labels,
            groups,
            None,
            0,
            backend="dask",
            scheduler=cluster.scheduler_address,
        )
        with distributed.Client(cluster) as client:
            workers = set(client.scheduler_info()["workers"])
    local = run_search("rf", trials, lambda params: pixels, labels, groups, None, 0)
    assert [o.params for o in outcomes] == trials
    assert len(workers) == 2 and {o.worker for o in outcomes} <= workers, "every trial ran on a cluster worker"
    assert {o.worker for o in local} == {f"pid {os.getpid()}"}, "without a cluster, in this process"
    for remote, here in zip(outcomes, local, strict=True):
        assert remote.error is None and len(remote.fold_metrics) == 3
        assert remote.fold_metrics == here.fold_metrics, "same folds, same seeds: same scores on the cluster"


def test_cv_folds_keep_groups_together() -> None:
    labels = np.repeat(np.arange(4), 12)
    groups = np.arange(48) // 2  # pairs of duplicates
    for train, val in cv_folds(labels, groups, seed=3):
        assert set(groups[train]).isdisjoint(groups[val])


def test_quick_search_tries_the_forest_cheaply_and_refits_it_whole(tmp_path: Path) -> None:
    from services.training.data import prepare_data
    from services.training.search_step import _search

    data = prepare_data(SAMPLE_DATA_DIR, 0.2, 0, tmp_path)
    family = get_family("rf")
    base = {**family.default_params(), "balancing": "none", "seed": 0}
    options = TrainingOptions(families=["rf"], search="quick")
    params, outcomes = _search("rf", family, data, options, TrainingSettings(cache_dir=tmp_path), base)
    assert [outcome.params["n_estimators"] for outcome in outcomes] == [100] * 3, "trials at a third of the trees"
    tried = [(outcome.params["forest"], outcome.params["max_features"]) for outcome in outcomes]
    assert tried == [("random_forest", 0.1), ("extra_trees", 0.1), ("extra_trees", 0.3)]
    assert params["n_estimators"] == 300, "the refit grows the full forest"
    winner = best_outcome(outcomes).params
    assert (params["forest"], params["max_features"]) == (winner["forest"], winner["max_features"]), "the winner"


def test_refit_takes_the_winning_sub_grid_own_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.training.data import prepare_data
    from services.training.search_step import _search

    # Sub-grids with different keys; forests of stumps lose, so the second sub-grid wins.
    grid = [{"forest": ["random_forest"], "max_depth": [1]}, {"forest": ["extra_trees"], "min_samples_split": [3]}]
    monkeypatch.setattr(RandomForestFamily, "quick_grid", grid)
    data = prepare_data(SAMPLE_DATA_DIR, 0.2, 0, tmp_path)
    family = get_family("rf")
    base = {**family.default_params(), "balancing": "none", "seed": 0}
    options = TrainingOptions(families=["rf"], search="quick")
    params, _ = _search("rf", family, data, options, TrainingSettings(cache_dir=tmp_path), base)
    assert (params["forest"], params["min_samples_split"], params["max_depth"]) == ("extra_trees", 3, None)
