"""MLflow: logging a family's run, its ONNX file, and registering it as a new model version."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from shared.contract import ONNX_ARTIFACT_DIR, ONNX_FILENAME
from shared.errors import ErrorCode, ServiceError
from shared.schemas import BEST_ALIAS, CHAMPION_ALIAS, registered_name


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
    log_bytes(model_bytes, f"{ONNX_ARTIFACT_DIR}/{ONNX_FILENAME}")


def register_version(registered_name: str, run_id: str, description: str, tags: dict[str, str]) -> str:
    """Register the run's ONNX folder as a new version of registered_name; returns the version."""
    client = MlflowClient()
    try:
        client.create_registered_model(registered_name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri}/{ONNX_ARTIFACT_DIR}"
    version = client.create_model_version(
        registered_name, source=source, run_id=run_id, description=description, tags=tags
    )
    return str(version.version)


def _test_accuracy(client: MlflowClient, run_id: str | None) -> float:
    if not run_id:
        return -1.0
    return float(client.get_run(run_id).data.metrics.get("test_accuracy", -1.0))


def set_aliases(rows: list[dict[str, Any]], split_sha256: str) -> None:
    """CHAMPION_ALIAS: each family's best version on this test split; BEST_ALIAS: this run's overall winner."""
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
        winners.append((float(row["metrics"]["test_accuracy"]), name, str(row["version"])))
    if not winners:
        return
    _, best_name, best_version = max(winners)
    for _, name, _ in winners:
        if name != best_name:
            with contextlib.suppress(MlflowException):  # that model never held the alias
                client.delete_registered_model_alias(name, BEST_ALIAS)
    client.set_registered_model_alias(best_name, BEST_ALIAS, best_version)
