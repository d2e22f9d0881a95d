"""Fixtures for training tests: a dedicated real MLflow server (so registrations here never mix
with the inference tests' model zoo), settings pointing at it, and the MobileNetV2 weights."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.processes import ManagedProcess, free_port, start_mlflow
from services.training.config import TrainingSettings

ROOT = Path(__file__).resolve().parents[3]
WEIGHTS_NAME = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


@pytest.fixture(scope="session")
def mobilenetv2_weights() -> Path:
    """The tests pass the weights path in: BT_MOBILENETV2_WEIGHTS, else the provided copy beside the repo."""
    path = Path(os.environ.get("BT_MOBILENETV2_WEIGHTS", ROOT.parent / "shared" / "weights" / WEIGHTS_NAME))
    assert path.is_file(), f"MobileNetV2 weights not found at {path}; set BT_MOBILENETV2_WEIGHTS"
    return path


@pytest.fixture(scope="session")
def training_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    state = tmp_path_factory.mktemp("training-mlflow")
    server = start_mlflow(state / "store", free_port(), state / "mlflow.log")
    yield server
    server.stop()


@pytest.fixture
def training_settings(
    training_mlflow: ManagedProcess, mobilenetv2_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrainingSettings:
    return TrainingSettings(
        tracking_uri=training_mlflow.url,
        cache_dir=tmp_path_factory.getbasetemp() / "training-cache",
        mobilenetv2_weights=mobilenetv2_weights,
        experiment="tests",
        report_dir=tmp_path_factory.getbasetemp() / "reports",
    )
