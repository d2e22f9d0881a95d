"""Refitting the champions' recipes on every image (the last step before a pretrained bundle), against a real
MLflow server of its own: the champions a refit reads must be the ones this test registered. A refit has no test
figures of its own, so it becomes the champion only when asked to (``promote``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from pydantic import ValidationError

from deploy.processes import free_port, start_mlflow
from services.training import ensemble_cli, tracking
from services.training.config import TrainingSettings
from services.training.options import FamilyProgress, FamilyState, TrainingOptions
from services.training.pipeline import run_training
from services.training.recipe import champion_recipe
from shared.core.dataset import SAMPLE_DATA_DIR

FAMILIES = ["rf", "snn"]


def test_refit_takes_each_champions_parameters_and_trains_on_every_image(
    training_settings: TrainingSettings, tmp_path: Path
) -> None:
    server = start_mlflow(tmp_path / "store", free_port(), tmp_path / "mlflow.log")
    try:
        settings = training_settings.model_copy(update={"tracking_uri": server.url, "report_dir": tmp_path / "reports"})
        evaluated = run_training(
            TrainingOptions(families=FAMILIES, search="none", image_size=32, epochs=2, overrides={"n_estimators": 30}),
            settings,
        )
        report = (tmp_path / "reports" / "comparison.md").read_text()
        client = MlflowClient(server.url)
        rebuilt = _rebuild_ensemble_from_the_served_files(client, settings, evaluated)
        refit = run_training(
            TrainingOptions(
                families=FAMILIES,
                search="none",
                test_fraction=0,
                refit_champions=True,
                overrides={"n_estimators": 20},
                promote=True,  # a refit has no test figures of its own to beat the champion with
            ),
            settings,
        )
        assert [r.state for r in evaluated + refit] == [FamilyState.DONE] * 4, [r.error for r in evaluated + refit]
        for before, after in zip(evaluated, refit, strict=True):
            name = f"brain-tumor-{before.family}"
            version = client.get_model_version(name, after.registered_version)
            assert (version.tags["recipe_version"], version.tags["recipe_run_id"]) == (
                before.registered_version,
                before.mlflow_run_id,
            )
            assert client.get_model_version_by_alias(name, "champion").version == after.registered_version
            run = client.get_run(after.mlflow_run_id).data
            # The recipe's image size and epochs, not the family's defaults; the refit's own override on top.
            assert json.loads(run.params["image_size"]) == 32
            if before.family == "rf":
                assert json.loads(run.params["n_estimators"]) == 20
            else:
                assert json.loads(run.params["epochs"]) == 2
                assert "n_estimators" not in run.params  # the forest's override is no parameter of the net
            # Every one of the 120 sample images trains but the calibration slice (and the shallow net's early-stopping
            # slice); nothing is scored as a test.
            fitted = run.metrics["refit_images"] + run.metrics["refit_held_out_images"]
            assert fitted + run.metrics["calibration_images"] == 120
            assert run.metrics["test_images"] == 0
            assert not any(key.startswith("test_") for key in run.metrics if key != "test_images")
            assert run.metrics["calibrated_parity_max_abs_diff"] <= 1e-4
        # The refit keeps the ensemble champion's weights (the rebuilt one's) over the refit members.
        ensembles = sorted(client.search_model_versions("name='brain-tumor-ensemble'"), key=lambda v: int(v.version))
        assert [v.version for v in ensembles[1:]] == [rebuilt.version, str(len(ensembles))]
        refit_ensemble = ensembles[-1]
        assert json.loads(refit_ensemble.tags["ensemble_weights"]) == json.loads(rebuilt.tags["ensemble_weights"])
        assert refit_ensemble.tags["recipe_run_id"] == rebuilt.run_id
        assert json.loads(refit_ensemble.tags["ensemble_members"]) == {r.family: r.registered_version for r in refit}
        _refit_the_ensemble_alone(client, settings, refit, rebuilt)
        # The evaluation's report stands: a refit has no test split to write one from.
        assert (tmp_path / "reports" / "comparison.md").read_text() == report
    finally:
        server.stop()


def test_a_refit_takes_the_recipe_not_a_search() -> None:
    with pytest.raises(ValidationError, match="refit_champions"):
        TrainingOptions(families=FAMILIES, search="quick", refit_champions=True)


def _rebuild_ensemble_from_the_served_files(
    client: MlflowClient, settings: TrainingSettings, evaluated: list[FamilyProgress]
) -> ModelVersion:
    """ensemble_cli on the evaluation's versions: the same members and figures as the run's own ensemble (the
    served files are the calibrated graphs that passed parity with the native models); another split is refused."""
    members = ",".join(f"{r.family}={r.registered_version}" for r in evaluated)
    common = ["--data", str(SAMPLE_DATA_DIR), "--members", members, "--tracking-uri", settings.tracking_uri,
              "--cache-dir", str(settings.cache_dir)]  # fmt: skip
    assert ensemble_cli.main([*common, "--test-fraction", "0.3"]) == 2  # the members were not evaluated on it
    run_ensemble = client.get_model_version_by_alias("brain-tumor-ensemble", "champion")
    assert ensemble_cli.main([*common, "--promote"]) == 0  # the same figures do not beat it: asked explicitly
    rebuilt = client.get_model_version_by_alias("brain-tumor-ensemble", "champion")
    assert int(rebuilt.version) == int(run_ensemble.version) + 1
    assert json.loads(rebuilt.tags["ensemble_members"]) == {r.family: r.registered_version for r in evaluated}
    figures = [client.get_run(v.run_id).data.metrics["test_accuracy"] for v in (run_ensemble, rebuilt)]
    assert figures[1] == pytest.approx(figures[0], abs=1 / 24)  # at most one of the 24 test images apart
    return rebuilt


def _refit_the_ensemble_alone(
    client: MlflowClient, settings: TrainingSettings, refit: list[FamilyProgress], evaluated: ModelVersion
) -> None:
    """ensemble_cli over the refit versions (``--test-fraction 0``), as after a change of the ensemble's rule: the
    champion's weights kept, and its test figures still found at the evaluated ensemble's run (the champion is
    itself a refit)."""
    members = ",".join(f"{r.family}={r.registered_version}" for r in refit)
    command = ["--data", str(SAMPLE_DATA_DIR), "--members", members, "--tracking-uri", settings.tracking_uri,
               "--cache-dir", str(settings.cache_dir), "--test-fraction", "0"]  # fmt: skip
    champion = client.get_model_version_by_alias("brain-tumor-ensemble", "champion")
    client.delete_registered_model_alias("brain-tumor-ensemble", "champion")
    assert ensemble_cli.main(command) == 2  # no champion's weights to keep: nothing registered, never tested weights
    client.set_registered_model_alias("brain-tumor-ensemble", "champion", champion.version)
    assert ensemble_cli.main(command) == 0
    assert client.get_model_version_by_alias("brain-tumor-ensemble", "champion").version == champion.version
    assert ensemble_cli.main([*command, "--promote"]) == 0  # a refit has no test figures to beat it with
    again = client.get_model_version_by_alias("brain-tumor-ensemble", "champion")
    assert int(again.version) == int(champion.version) + 2
    assert json.loads(again.tags["ensemble_weights"]) == json.loads(evaluated.tags["ensemble_weights"])
    assert json.loads(again.tags["ensemble_members"]) == {r.family: r.registered_version for r in refit}
    assert again.tags["recipe_run_id"] == evaluated.run_id
    assert "test_accuracy" in client.get_run(again.tags["recipe_run_id"]).data.metrics
    # A family's refit of its refit champion points at the evaluated version's figures too.
    tracking.use_tracking(settings.tracking_uri, settings.experiment)
    for progress in refit:
        version = client.get_model_version(f"brain-tumor-{progress.family}", progress.registered_version)
        recipe = champion_recipe(progress.family)
        assert (recipe.version, recipe.run_id) == (version.tags["recipe_version"], version.tags["recipe_run_id"])
