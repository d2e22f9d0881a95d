"""MLflow: logging a family's run and its ONNX file as an MLflow Model. Registering it is
``services.training.registration``'s (the one registration path)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import mlflow
import mlflow.onnx
import numpy as np
import onnx
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import Schema, TensorSpec

from services.training.onnx_export import embedded_contract
from shared.core.contract import ONNX_ARTIFACT_DIR, ONNX_FILENAME, OUTPUT_NAME, PreprocessingContract
from shared.kit.errors import ErrorCode, ServiceError

# Where the contract sits in the MLflow Model's metadata (MLmodel), for MLflow users; inference reads the copy
# inside the ONNX file.
MODEL_METADATA_CONTRACT_KEY = "preprocessing_contract"


def use_tracking(uri: str, experiment: str) -> str:
    """Point MLflow at the tracking server, failing fast with a clear error when it is not there."""
    if uri.startswith(("http://", "https://")):
        try:
            httpx.get(f"{uri.rstrip('/')}/health", timeout=5.0).raise_for_status()
        except httpx.HTTPError as exc:
            raise ServiceError(
                ErrorCode.REGISTRY_UNAVAILABLE,
                f"MLflow tracking server at {uri} is not reachable ({type(exc).__name__}); "
                "start it or set MLFLOW_TRACKING_URI.",
            ) from exc
    mlflow.set_tracking_uri(uri)
    return mlflow.set_experiment(experiment).experiment_id


def log_params(params: dict[str, Any]) -> None:
    mlflow.log_params({key: _param_text(value) for key, value in params.items()})


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def log_bytes(data: bytes, artifact_file: str) -> None:
    """Log a file's bytes (a PNG, an ONNX model) under artifact_file in the active run."""
    folder, _, name = artifact_file.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        mlflow.log_artifact(str(path), artifact_path=folder or None)


def log_onnx(model_bytes: bytes) -> None:
    """The run's plain copy of the ONNX file (``onnx/model.onnx``), logged before the parity check decides."""
    log_bytes(model_bytes, f"{ONNX_ARTIFACT_DIR}/{ONNX_FILENAME}")


def model_signature(contract: PreprocessingContract) -> ModelSignature:
    """The contract's input tensor (float32, -1 for the batch) and the probabilities output (-1, classes)."""
    input_shape = tuple(-1 if dim is None else dim for dim in contract.input_shape())
    float32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(float32, input_shape, contract.input_name)]),
        outputs=Schema([TensorSpec(float32, (-1, len(contract.class_names)), OUTPUT_NAME)]),
    )


def log_onnx_model(model_bytes: bytes, name: str) -> ModelInfo:
    """Log the ONNX file as an MLflow Model (onnx flavor, loadable by pyfunc) of the active run.

    The signature and the MLmodel metadata come from the contract embedded in the file; the input example
    is a blank image's tensor (never a patient's). The model.onnx inside is byte for byte ``model_bytes``.
    """
    proto = onnx.load_from_string(model_bytes)
    # MLflow writes the file by serialising the proto again: it must come out as the bytes that were checked.
    if proto.SerializeToString() != model_bytes:
        raise ValueError("the ONNX model does not serialise back to the same bytes; refusing to log a different file")
    contract = embedded_contract(proto)
    return mlflow.onnx.log_model(
        proto,
        name=name,
        signature=model_signature(contract),
        input_example=np.zeros((1, *contract.input_shape()[1:]), dtype=np.float32),
        metadata={MODEL_METADATA_CONTRACT_KEY: contract.model_dump(mode="json")},
        # Pinned from this environment: inferring them would load the model again in a subprocess.
        pip_requirements=mlflow.onnx.get_default_pip_requirements(),
        onnx_execution_providers=["CPUExecutionProvider"],
        # One self-contained file, the one inference loads and the parity check ran on.
        save_as_external_data=False,
    )
