"""What a user would pick instead of our services, for the serving benchmark: the same CNN behind
`mlflow models serve` (the original study's way) and behind Seldon MLServer with its MLflow runtime.

MLServer 1.7.1 pins versions that clash with ours, so it lives in a virtual environment of its own
(built with pip on first use under the benchmark's state folder). Both are started on free loopback
ports through deploy/processes.py and stopped like our own services.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from deploy.processes import LOOPBACK, ManagedProcess, free_port, loopback_url, start_process

# py-spy (the profiler, a standalone binary) rides along: it imports nothing from either environment.
# uvloop 0.22 and later raise in asyncio.get_event_loop() where MLServer 1.7.1's worker processes call it.
MLSERVER_PACKAGES = [
    "mlserver==1.7.1", "mlserver-mlflow==1.7.1", "uvloop==0.21.0", "onnxruntime==1.31.1", "onnx==1.23.2",
    "py-spy==0.4.3",
]  # fmt: skip
MLFLOW_SERVE_TIMEOUT_S = 180.0


def serving_model_uri(tracking_uri: str, name: str, version: str, scratch: Path) -> tuple[str, str]:
    """A model URI `mlflow models serve` can load for this registered version, and how it was obtained.

    A version registered as a real MLflow Model (an `MLmodel` file beside the ONNX file) is served as
    `models:/name/version`; one in the old layout (a bare ONNX folder) is saved once with
    `mlflow.onnx.save_model`, with a signature, into ``scratch``.
    """
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    source = client.get_model_version(name, version).source
    uri = f"models:/{name}/{version}"
    try:
        mlflow.models.get_model_info(uri)  # reads the version's MLmodel file; the old layout has none
        return uri, "registered MLflow Model"
    except Exception:  # MLflow raises several types for a missing MLmodel, none of them specific
        pass
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(scratch / "download")))
    onnx_file = next(local.rglob("*.onnx"))
    target = scratch / f"{name}-{version}-mlflow"
    if not (target / "MLmodel").exists():
        import numpy as np

        from shared.core.onnx_classifier import OnnxClassifier

        classifier = OnnxClassifier(name, version, onnx_file)
        classifier.load()
        example = np.zeros(classifier.contract.input_shape(1), dtype=np.float32)
        inputs = {classifier.contract.input_name: example}
        signature = infer_signature(inputs, {"probabilities": classifier.predict(example)})
        mlflow.onnx.save_model(onnx.load(str(onnx_file)), str(target), signature=signature)
    return str(target.resolve()), "old layout, saved with mlflow.onnx.save_model"


def local_model_copy(tracking_uri: str, model_uri: str, scratch: Path) -> Path:
    """A folder holding the MLflow Model (for MLServer, which should not need our MLflow server)."""
    if not model_uri.startswith("models:/"):
        return Path(model_uri)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    target = scratch / "mlserver-model"
    if not (target / "MLmodel").exists():
        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(target))
    found = next(target.rglob("MLmodel"))
    return found.parent


def start_mlflow_serve(model_uri: str, tracking_uri: str, logs: Path) -> ManagedProcess:
    """`mlflow models serve -m URI --env-manager local` on a free loopback port, as the study served its model."""
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
        "--host", LOOPBACK, "--port", str(port),
    ]  # fmt: skip
    # MLflow starts its scoring server as `uvicorn` from PATH: ours, beside this interpreter.
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
    return start_process(
        "mlflow-serve", command, env, logs / "mlflow-serve.log", loopback_url(port), "/ping", MLFLOW_SERVE_TIMEOUT_S
    )


def mlserver_venv(venv: Path) -> Path:
    """The MLServer virtual environment's bin folder, built with pip when missing."""
    binary = venv / "bin" / "mlserver"
    if not binary.exists():
        print(f"building MLServer's own virtual environment in {venv} (pip, a few minutes) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *MLSERVER_PACKAGES]
        subprocess.run(pip, check=True, timeout=1800)
    return binary.parent


def start_mlserver(bin_dir: Path, model_dir: Path, model_name: str, work: Path, logs: Path) -> ManagedProcess:
    """MLServer with its MLflow runtime serving ``model_dir`` as ``model_name``, on free loopback ports."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    repository = work / "mlserver-repository"
    (repository / model_name).mkdir(parents=True, exist_ok=True)
    settings = {"host": LOOPBACK, "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port}
    (repository / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": model_name,
        "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": str(model_dir.resolve())},
    }
    (repository / model_name / "model-settings.json").write_text(json.dumps(model_settings))
    command = [str(bin_dir / "mlserver"), "start", str(repository)]
    # Only the MLServer venv on the path: our own environment's packages must not leak into it.
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    return start_process(
        "mlserver", command, env, logs / "mlserver.log", loopback_url(http_port), f"/v2/models/{model_name}/ready", 240
    )
