"""The inference service as it is deployed: a real process, a real prediction, no training stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from deploy.processes import free_port, start_service
from services.inference.lean import UNUSED_BY_SERVING
from shared.kit.schemas import PredictionOut

# Serving installs onnxruntime and mlflow-skinny only; none of these may be loaded.
TRAINING_ONLY_MODULES = {"tensorflow", "keras", "sklearn", "lime", "tf2onnx", "skl2onnx", "tensorboard"}


def test_process_predicts_without_loading_the_training_stack(
    inference_server: Any, sample_images: dict[str, bytes]
) -> None:
    with httpx.Client(base_url=inference_server.url, timeout=30.0) as client:
        for model in ("rf", "snn", "cnn", "mobilenetv2"):
            response = client.post(
                f"/v1/models/{model}/predict",
                files={"file": ("scan.jpg", sample_images["pituitary"], "image/jpeg")},
            )
            assert response.status_code == 200, response.text
            PredictionOut.model_validate(response.json())
        assert client.get("/v1/models").status_code == 200
        # The explainer's batch path too: contract, then raw pixels.
        size = client.get("/v1/models/cnn/contract").json()["contract"]["image_size"]
        batch = client.post(
            "/v1/models/cnn/predict-pixels",
            content=bytes(3 * size * size),
            headers={"x-pixels-shape": f"3,{size},{size}"},
        )
        assert batch.status_code == 200, batch.text

        modules = set(client.get("/debug/modules").json()["modules"])

    assert {"onnxruntime", "mlflow", "services"} <= modules  # the listing is real
    assert not modules & TRAINING_ONLY_MODULES, sorted(modules & TRAINING_ONLY_MODULES)


def test_the_stack_s_workers_serve_without_the_libraries_they_never_use(
    model_zoo: Any, tmp_path: Path, service_logs: Path, sample_images: dict[str, bytes]
) -> None:
    """`python -m services.inference` with two workers (as the stack runs it): every worker answers, and none has
    imported pandas, pyarrow or scipy, which MLflow would import since this environment has them (services/
    inference/lean.py)."""
    env = {
        "BT_INFERENCE_TRACKING_URI": model_zoo.tracking_uri,
        "BT_INFERENCE_CACHE_DIR": str(tmp_path / "cache"),
        "BT_INFERENCE_DEBUG_ENDPOINTS": "true",
        "BT_INFERENCE_WORKERS": "2",
    }
    server = start_service("inference", free_port(), env, service_logs / "inference-workers.log", as_module=True)
    try:
        for _ in range(12):  # a new connection each: the kernel spreads them over both workers
            response = httpx.post(
                f"{server.url}/v1/models/cnn/predict",
                files={"file": ("scan.jpg", sample_images["glioma"], "image/jpeg")},
                timeout=60,
                trust_env=False,
            )
            assert response.status_code == 200, response.text
            listing = httpx.get(f"{server.url}/debug/modules", timeout=10, trust_env=False).json()["modules"]
            kept_out = set(listing) & set(UNUSED_BY_SERVING)
            assert "mlflow" in listing and not kept_out, sorted(kept_out)
    finally:
        server.stop()
