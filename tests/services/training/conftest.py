"""Fixtures for training tests: a dedicated real MLflow server (so registrations here never mix
with the inference tests' model zoo), and settings pointing at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from deploy.processes import ManagedProcess, free_port, start_mlflow
from services.training.config import TrainingSettings
from shared.core.contract import ONNX_ARTIFACT_DIR, ONNX_FILENAME
from shared.core.dataset import SAMPLE_DATA_DIR
from shared.core.onnx_classifier import OnnxClassifier


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
        api_token="training-tests-token",
        # The tests' own folders (under pytest's base temp) may be named as data_dir, as the sample may.
        data_roots=[SAMPLE_DATA_DIR, tmp_path_factory.getbasetemp()],
    )


@pytest.fixture
def served_model() -> Callable[[MlflowClient, str], OnnxClassifier]:
    """Loads a run's ONNX model as the inference service does (contract and prediction sets read back)."""

    def read(client: MlflowClient, run_id: str) -> OnnxClassifier:
        path = client.download_artifacts(run_id, f"{ONNX_ARTIFACT_DIR}/{ONNX_FILENAME}")
        model = OnnxClassifier("model", run_id, Path(path))
        model.load()
        return model

    return read
