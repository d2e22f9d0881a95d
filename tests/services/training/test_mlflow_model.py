"""A version training registers is a real MLflow Model: its MLmodel describes the contract's tensors,
``mlflow.pyfunc.load_model("models:/brain-tumor-cnn/N")`` predicts, and ``mlflow models serve`` answers for a
tensor, as the original study served its best model. The ONNX file inside is the one that passed parity.

One real CNN is trained on the sample (32 px, one epoch) against the training tests' own MLflow server, so no
version lands in the inference tests' model zoo.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.models import Model

from deploy.processes import LOOPBACK, ManagedProcess, free_port, loopback_url, start_process
from services.training.config import TrainingSettings
from services.training.options import FamilyState, TrainingOptions
from services.training.pipeline import run_training
from services.training.registration import ONNX_SHA256_TAG
from services.training.tracking import MODEL_METADATA_CONTRACT_KEY
from shared.core.contract import CLASS_NAMES, ONNX_ARTIFACT_DIR, ONNX_FILENAME, OUTPUT_NAME
from shared.core.imaging import decode_to_array, to_model_input
from shared.core.onnx_classifier import OnnxClassifier

REGISTERED_NAME = "brain-tumor-cnn"


@dataclass(frozen=True)
class RegisteredCnn:
    tracking_uri: str
    version: str
    run_id: str
    model_folder: Path  # the registered version's files, as MLflow stores them
    checked_bytes: bytes  # the run's plain copy: the file the parity check ran on

    @property
    def uri(self) -> str:
        return f"models:/{REGISTERED_NAME}/{self.version}"


@pytest.fixture(scope="module")
def registered_cnn(training_mlflow: ManagedProcess, tmp_path_factory: pytest.TempPathFactory) -> RegisteredCnn:
    base = tmp_path_factory.getbasetemp()
    settings = TrainingSettings(
        tracking_uri=training_mlflow.url,
        cache_dir=base / "training-cache",
        experiment="mlflow-models",
        report_dir=base / "mlflow-model-reports",
    )
    options = TrainingOptions(families=["cnn"], search="none", image_size=32, epochs=1)
    (result,) = run_training(options, settings)
    assert result.state is FamilyState.DONE, result.error
    assert result.registered_version and result.mlflow_run_id
    client = MlflowClient(tracking_uri=training_mlflow.url, registry_uri=training_mlflow.url)
    download_uri = client.get_model_version_download_uri(REGISTERED_NAME, result.registered_version)
    destination = str(tmp_path_factory.mktemp("mlflow-model"))
    folder = download_artifacts(artifact_uri=download_uri, dst_path=destination, tracking_uri=training_mlflow.url)
    plain_copy = client.download_artifacts(
        result.mlflow_run_id, f"{ONNX_ARTIFACT_DIR}/{ONNX_FILENAME}", str(tmp_path_factory.mktemp("run-copy"))
    )
    version, run_id = result.registered_version, result.mlflow_run_id
    return RegisteredCnn(training_mlflow.url, version, run_id, Path(folder), Path(plain_copy).read_bytes())


@pytest.fixture
def mlflow_at(registered_cnn: RegisteredCnn) -> Iterator[None]:
    """MLflow's fluent API (pyfunc's models:/ URIs) pointed at the training server for one test."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registered_cnn.tracking_uri)
    yield
    mlflow.set_tracking_uri(previous)


def _served_classifier(registered_cnn: RegisteredCnn) -> OnnxClassifier:
    """The version's ONNX file as inference loads it (its own onnxruntime session, contract from the file)."""
    classifier = OnnxClassifier("cnn", registered_cnn.version, registered_cnn.model_folder / ONNX_FILENAME)
    classifier.load()
    return classifier


def _sample_tensor(classifier: OnnxClassifier, sample_images: dict[str, bytes]) -> np.ndarray:
    size = classifier.contract.image_size
    pixels = np.stack([decode_to_array(sample_images[name], size) for name in CLASS_NAMES])
    return to_model_input(pixels, classifier.contract)


def test_the_version_is_an_mlflow_model_of_the_parity_checked_file(registered_cnn: RegisteredCnn) -> None:
    client = MlflowClient(tracking_uri=registered_cnn.tracking_uri, registry_uri=registered_cnn.tracking_uri)
    version = client.get_model_version(REGISTERED_NAME, registered_cnn.version)
    model = Model.load(str(registered_cnn.model_folder))
    assert version.source == f"models:/{model.model_id}"  # the logged model, not a folder of the run
    assert version.run_id == model.run_id == registered_cnn.run_id
    model_bytes = (registered_cnn.model_folder / ONNX_FILENAME).read_bytes()
    assert model_bytes == registered_cnn.checked_bytes
    assert version.tags[ONNX_SHA256_TAG] == hashlib.sha256(model_bytes).hexdigest()

    assert {"onnx", "python_function"} <= set(model.flavors)
    assert model.flavors["onnx"]["data"] == ONNX_FILENAME
    contract = _served_classifier(registered_cnn).contract
    assert model.metadata == {MODEL_METADATA_CONTRACT_KEY: contract.model_dump(mode="json")}
    assert model.signature is not None
    signature = {part: json.loads(text) for part, text in model.signature.to_dict().items() if text}
    assert signature == {
        "inputs": [{"name": "input", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 32, 32, 1]}}],
        "outputs": [{"name": OUTPUT_NAME, "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}],
    }
    example = model.load_input_example(str(registered_cnn.model_folder))
    assert set(example) == {"input"}
    assert example["input"].shape == (1, 32, 32, 1) and not example["input"].any()  # a blank image, no patient's


def test_pyfunc_loads_the_registered_version_and_predicts(
    registered_cnn: RegisteredCnn, mlflow_at: None, sample_images: dict[str, bytes]
) -> None:
    classifier = _served_classifier(registered_cnn)
    tensor = _sample_tensor(classifier, sample_images)

    predicted = mlflow.pyfunc.load_model(registered_cnn.uri).predict(tensor)

    assert set(predicted) == {OUTPUT_NAME}
    np.testing.assert_allclose(predicted[OUTPUT_NAME], classifier.predict(tensor), atol=1e-6)


@pytest.fixture
def mlflow_models_serve(registered_cnn: RegisteredCnn, service_logs: Path) -> Iterator[ManagedProcess]:
    """``mlflow models serve -m models:/brain-tumor-cnn/N --env-manager local`` on a free loopback port."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", registered_cnn.uri, "--env-manager", "local"]
    command += ["-h", LOOPBACK, "-p", str(port)]
    # It starts `uvicorn` by name: the virtual environment's scripts come first, as in an activated environment.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": registered_cnn.tracking_uri}
    log_path = service_logs / "mlflow-models-serve.log"
    server = start_process("mlflow models serve", command, env, log_path, loopback_url(port), "/ping", timeout=180)
    yield server
    server.stop()


def test_mlflow_models_serve_answers_for_a_tensor(
    registered_cnn: RegisteredCnn, mlflow_models_serve: ManagedProcess, sample_images: dict[str, bytes]
) -> None:
    classifier = _served_classifier(registered_cnn)
    tensor = _sample_tensor(classifier, sample_images)

    response = httpx.post(
        f"{mlflow_models_serve.url}/invocations", json={"inputs": tensor.tolist()}, timeout=30, trust_env=False
    )

    assert response.status_code == 200, response.text
    probabilities = np.asarray(response.json()["predictions"][OUTPUT_NAME])
    np.testing.assert_allclose(probabilities, classifier.predict(tensor), atol=1e-6)
