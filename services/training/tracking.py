"""MLflow: logging a family's run, its ONNX file as an MLflow Model, and registering that as a new model version.

Registration is all or nothing as far as MLflow allows: the logged model's file is downloaded back and checked
against the sha256 of the bytes that passed the parity check, then the version is created with all its tags in
one call, and aliases move last, once every family is registered. When MLflow fails on the way, what this
registration created is deleted again (when MLflow still answers) and the run fails with REGISTRY_UNAVAILABLE
naming the step: no version without its file, no alias pointing at a version that does not exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import mlflow.onnx
import numpy as np
import onnx
import requests
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import Schema, TensorSpec

from services.training.onnx_export import embedded_contract
from shared.core.contract import ONNX_ARTIFACT_DIR, ONNX_FILENAME, OUTPUT_NAME, PreprocessingContract
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import BEST_ALIAS, CHAMPION_ALIAS, registered_name

# Where the contract sits in the MLflow Model's metadata (MLmodel), for MLflow users; inference reads the copy
# inside the ONNX file.
MODEL_METADATA_CONTRACT_KEY = "preprocessing_contract"
# Model-version tag holding the sha256 of the ONNX file, so a download can be checked against what was registered.
ONNX_SHA256_TAG = "onnx_sha256"

logger = logging.getLogger(__name__)


class RegistrationStep:
    """Which step of a registration is running, for the error message when MLflow fails during it."""

    def __init__(self, what: str) -> None:
        self.what = what


@contextlib.contextmanager
def _mlflow_failures(subject: str, step: RegistrationStep, consequence: str) -> Iterator[None]:
    """MLflow or network failures -> REGISTRY_UNAVAILABLE naming the subject, the step and what it left."""
    try:
        yield
    except ServiceError:
        raise
    except (MlflowException, requests.RequestException, OSError) as exc:
        raise ServiceError(
            ErrorCode.REGISTRY_UNAVAILABLE,
            f"MLflow failed while {step.what} for {subject} ({type(exc).__name__}); {consequence}",
        ) from exc


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


def onnx_sha256(model_bytes: bytes) -> str:
    return hashlib.sha256(model_bytes).hexdigest()


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


def register_version(
    registered_name: str, model: ModelInfo, model_bytes: bytes, description: str, tags: dict[str, str]
) -> str:
    """Register a logged MLflow Model as a new version of registered_name, tagged with its ONNX file's
    sha256; returns the version.

    In order: the logged file is checked in MLflow (downloaded back, same sha256), the registered model is
    created if new, then the version with every tag in one call (the version is complete the moment it
    exists). On a failure, what this call created is deleted when MLflow still answers; the error is
    REGISTRY_UNAVAILABLE (MLflow failed) or INVALID_MODEL (the stored file differs), naming the step.
    """
    client = MlflowClient()
    sha256 = onnx_sha256(model_bytes)
    step = RegistrationStep("checking the logged model's file")
    created_model = False
    version: ModelVersion | None = None
    try:
        with _mlflow_failures(registered_name, step, "no version was registered."):
            _check_logged_file(model, sha256, registered_name)
            step.what = "creating the registered model"
            created_model = _create_registered_model(client, registered_name)
            step.what = "creating the version"
            version = client.create_model_version(
                registered_name,
                source=model.model_uri,
                run_id=model.run_id,
                description=description,
                tags={**tags, ONNX_SHA256_TAG: sha256},
                model_id=model.model_id,
            )
        return str(version.version)
    except BaseException:
        _undo_registration(client, registered_name, created_model, version)
        raise


def _check_logged_file(model: ModelInfo, sha256: str, registered_name: str) -> None:
    """Download the logged MLflow Model's ONNX file back and compare it with the bytes that were checked."""
    data = (model.flavors.get("onnx") or {}).get("data", ONNX_FILENAME)
    with tempfile.TemporaryDirectory() as folder:
        path = download_artifacts(artifact_uri=f"{model.artifact_path}/{data}", dst_path=folder)
        stored = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if stored != sha256:
        raise ServiceError(
            ErrorCode.INVALID_MODEL,
            f"The ONNX file MLflow stored for {registered_name} is not the one that passed the parity check "
            f"(sha256 {stored[:12]}..., expected {sha256[:12]}...); no version was registered.",
        )


def _create_registered_model(client: MlflowClient, registered_name: str) -> bool:
    """Create the registered model unless it exists; True when this call created it."""
    try:
        client.create_registered_model(registered_name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
        return False
    return True


def _undo_registration(
    client: MlflowClient, registered_name: str, created_model: bool, version: ModelVersion | None
) -> None:
    """Delete what a failed registration created; when MLflow is down that fails too and is only logged
    (a registered model without versions serves nothing and is reused by the next run)."""
    try:
        if version is not None:
            client.delete_model_version(registered_name, version.version)
        if created_model:
            client.delete_registered_model(registered_name)
    except (MlflowException, requests.RequestException, OSError) as exc:
        logger.warning("could not undo the failed registration of %s: %s", registered_name, exc)


def _test_accuracy(client: MlflowClient, run_id: str | None) -> float:
    if not run_id:
        return -1.0
    return float(client.get_run(run_id).data.metrics.get("test_accuracy", -1.0))


def set_aliases(rows: list[dict[str, Any]], split_sha256: str) -> None:
    """CHAMPION_ALIAS: each family's best version on this test split; BEST_ALIAS: this run's overall winner.

    Runs once every family is registered, so an alias only ever points at a complete version. Each alias move
    is one MLflow call: when MLflow fails midway, the aliases already moved point at new versions and the
    others still at the earlier ones, and the run fails with REGISTRY_UNAVAILABLE saying so.
    """
    step = RegistrationStep("moving the aliases")
    consequence = (
        "every registered version is complete; aliases not moved yet still point at earlier versions. "
        "Set them again with MLflow, or train again, once MLflow is back."
    )
    with _mlflow_failures(f"the run's {len(rows)} families", step, consequence):
        _move_aliases(rows, split_sha256)


def _move_aliases(rows: list[dict[str, Any]], split_sha256: str) -> None:
    client = MlflowClient()
    winners: list[tuple[float, str, str]] = []
    for row in rows:
        if not row.get("version"):
            continue
        name = registered_name(row["family"])
        comparable = [
            version
            for version in client.search_model_versions(f"name='{name}'")
            if version.tags.get("test_files_sha256") == split_sha256
        ]
        champion = max(comparable, key=lambda v: (_test_accuracy(client, v.run_id), int(v.version)))
        client.set_registered_model_alias(name, CHAMPION_ALIAS, champion.version)
        winners.append((float(row["metrics"].get("test_accuracy", -1.0)), name, str(row["version"])))
    if not winners:
        return
    _, best_name, best_version = max(winners)
    # The winner first, then the alias leaves the others: a failure in between leaves two holders, never none.
    client.set_registered_model_alias(best_name, BEST_ALIAS, best_version)
    for _, name, _ in winners:
        if name != best_name:
            try:
                client.delete_registered_model_alias(name, BEST_ALIAS)
            except MlflowException as exc:
                if exc.get_http_status_code() >= 500:  # MLflow failed; a 4xx: that model never held the alias
                    raise
