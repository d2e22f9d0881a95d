"""Training settings: the service's own variables win over the generic ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.training.config import TrainingSettings


def test_generic_variables_apply_when_the_service_sets_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BT_TRAINING_TRACKING_URI", raising=False)
    monkeypatch.delenv("BT_TRAINING_MOBILENETV2_WEIGHTS", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("BT_MOBILENETV2_WEIGHTS", "/models/generic.h5")
    settings = TrainingSettings()
    assert settings.tracking_uri == "http://mlflow.internal:5000"
    assert settings.mobilenetv2_weights == Path("/models/generic.h5")


def test_service_variables_win_over_generic_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("BT_TRAINING_TRACKING_URI", "http://training-mlflow:5000")
    monkeypatch.setenv("BT_MOBILENETV2_WEIGHTS", "/models/generic.h5")
    monkeypatch.setenv("BT_TRAINING_MOBILENETV2_WEIGHTS", "/models/training.h5")
    settings = TrainingSettings()
    assert settings.tracking_uri == "http://training-mlflow:5000"
    assert settings.mobilenetv2_weights == Path("/models/training.h5")
