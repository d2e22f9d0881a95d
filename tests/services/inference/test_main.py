"""The inference service as it is deployed: a real process, a real prediction, no training stack."""

from __future__ import annotations

from typing import Any

import httpx

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
