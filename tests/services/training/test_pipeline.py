"""A whole training run on the embedded sample against a real MLflow server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from services.training.config import TrainingSettings
from services.training.options import FamilyProgress, FamilyState, Registration, TrainingOptions
from services.training.pipeline import run_training


def test_run_registers_passing_families_and_reports_failures(
    training_settings: TrainingSettings, tmp_path: Path, served_model: Callable[[MlflowClient, str], Any]
) -> None:
    settings = training_settings.model_copy(update={"mobilenetv2_weights": tmp_path / "missing.h5"})
    seen: list[FamilyProgress | Registration] = []
    results = run_training(
        TrainingOptions(families=["rf", "cnn", "mobilenetv2"], search="none", image_size=32, epochs=1),
        settings,
        lambda progress: seen.append(progress.model_copy()),
    )
    by_family = {result.family: result for result in results}
    assert by_family["rf"].state is FamilyState.DONE and by_family["cnn"].state is FamilyState.DONE
    assert by_family["mobilenetv2"].state is FamilyState.FAILED
    assert "BT_MOBILENETV2_WEIGHTS" in (by_family["mobilenetv2"].error or "")
    assert {"refitting on all training data", "converting to ONNX", "registering"} <= {
        p.step for p in seen if isinstance(p, FamilyProgress) and p.family == "rf"
    }
    # Every version registered goes through the promotion gate and says what it did; no guard unless asked.
    registered = {p.registered_name: p for p in seen if isinstance(p, Registration)}
    assert set(registered) == {"brain-tumor-rf", "brain-tumor-cnn", "brain-tumor-ensemble"}
    assert all(p.reason for p in registered.values())

    client = MlflowClient(settings.tracking_uri)
    for family in ("rf", "cnn"):
        result = by_family[family]
        version = client.get_model_version(f"brain-tumor-{family}", result.registered_version)
        assert version.run_id == result.mlflow_run_id
        run = client.get_run(result.mlflow_run_id)
        for metric in (
            "test_accuracy",
            "test_f1_macro",
            "parity_max_abs_diff",
            "train_seconds",
            "test_ece",
            "test_ece_uncalibrated",
            "test_brier",
            "test_brier_uncalibrated",
            "calibration_temperature",
            "test_set_coverage",
            "test_set_mean_size",
            "test_set_referral_rate",
        ):
            assert metric in run.data.metrics
        assert run.data.metrics["parity_max_abs_diff"] <= 1e-4
        served = served_model(client, result.mlflow_run_id)
        assert (
            served.conformal is not None
            and served.conformal.calibration_images == run.data.metrics["calibration_images"]
        )
        assert run.data.metrics["calibrated_parity_max_abs_diff"] <= 1e-4
        # Neither the forest nor the cosine-scheduled CNN watches a held-out slice: the 96 training images less
        # the calibration slice (a tenth, whole duplicate groups) train.
        calibration_images = run.data.metrics["calibration_images"]
        assert 5 <= calibration_images <= 15
        assert (run.data.metrics["refit_images"], run.data.metrics["refit_held_out_images"]) == (
            96 - calibration_images,
            0,
        )
        assert "evaluation/reliability.png" in {
            a.path for a in client.list_artifacts(result.mlflow_run_id, "evaluation")
        }
        artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id)}
        assert {"onnx", "split", "evaluation"} <= artifacts
    # The ensemble of the two: its version pins the members' versions, and its run is evaluated like theirs.
    ensemble = client.get_latest_versions("brain-tumor-ensemble")[0]
    members = {family: by_family[family].registered_version for family in ("rf", "cnn")}
    assert json.loads(ensemble.tags["ensemble_members"]) == members
    weights = json.loads(ensemble.tags["ensemble_weights"])
    # Its prediction sets' thresholds, fitted on the calibration slice like its weights (shared.core.conformal).
    assert set(json.loads(ensemble.tags["ensemble_conformal"])["thresholds"]) >= {"0.05", "0.1"}
    assert set(weights) == {"rf", "cnn"} and abs(sum(weights.values()) - 1) < 1e-4
    ensemble_metrics = client.get_run(ensemble.run_id).data.metrics
    assert {"test_accuracy", "test_ece", "test_brier"} <= set(ensemble_metrics)
    spec = json.loads(Path(client.download_artifacts(ensemble.run_id, "ensemble/ensemble.json")).read_text())
    assert spec["members"] == members
    assert "| ensemble |" in (settings.report_dir / "comparison.md").read_text()
    assert (settings.report_dir / "reliability_rf.png").stat().st_size > 0
    test_files = client.download_artifacts(by_family["rf"].mlflow_run_id, "split/test_files.txt")
    assert len(Path(test_files).read_text().splitlines()) == 24, "20% of 120 sample images"
