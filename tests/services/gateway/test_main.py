"""The gateway as it is deployed: a real process in front of the real inference process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from shared.kit.schemas import CompareOut, ExplanationOut, PredictionOut

ROOT = Path(__file__).resolve().parents[3]


def test_process_serves_predict_compare_and_docs(gateway_server: Any, sample_images: dict[str, bytes]) -> None:
    with httpx.Client(base_url=gateway_server.url, timeout=30.0) as client:
        files = {"file": ("scan.jpg", sample_images["meningioma"], "image/jpeg")}
        response = client.post("/v1/predict", params={"model": "cnn", "version": "1"}, files=files)
        assert response.status_code == 200, response.text
        prediction = PredictionOut.model_validate(response.json())
        assert (prediction.model, prediction.version) == ("cnn", "1")

        response = client.post("/v1/compare", params={"models": "rf,snn"}, files=files)
        assert response.status_code == 200, response.text
        assert [item.model for item in CompareOut.model_validate(response.json()).results] == ["rf", "snn"]

        assert client.get("/readyz").status_code == 200
        docs = client.get("/docs")
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()
        schema = client.get("/openapi.json").json()

    assert schema["info"]["title"] == "Brain tumour MRI classifier - API"
    assert {"/v1/predict", "/v1/compare", "/v1/models", "/healthz", "/readyz"} <= set(schema["paths"])
    predict = schema["paths"]["/v1/predict"]["post"]
    assert predict["summary"] and predict["description"]
    assert {"404", "413", "415", "422", "503"} <= set(predict["responses"])
    assert {tag["name"] for tag in schema["tags"]} == {"predictions", "explanations", "studies", "models", "health"}
    explain = schema["paths"]["/v1/explain"]["post"]
    assert explain["summary"] and explain["description"]
    assert {"404", "413", "415", "422", "502", "503"} <= set(explain["responses"])
    assert "/" not in schema["paths"]  # the web page is not part of the API


def test_process_explains_through_the_explainer(gateway_server: Any, sample_images: dict[str, bytes]) -> None:
    response = httpx.post(
        gateway_server.url + "/v1/explain",
        params={"model": "mobilenetv2", "method": "lime", "num_samples": "100", "seed": "3"},
        files={"file": ("scan.jpg", sample_images["notumor"], "image/jpeg")},
        timeout=60.0,
    )
    assert response.status_code == 200, response.text
    answer = ExplanationOut.model_validate(response.json())
    assert (answer.model, answer.method, answer.seed, answer.num_samples) == ("mobilenetv2", "lime", 3, 100)


def test_gateway_never_loads_the_training_or_explanation_stack() -> None:
    # The app is built and its routes imported in a fresh interpreter; LIME lives in the explainer only.
    code = (
        "import sys; from services.gateway.main import create_app; create_app(); "
        "print(','.join(sorted({name.partition('.')[0] for name in sys.modules})))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    modules = set(result.stdout.strip().split(","))
    assert {"fastapi", "httpx", "services"} <= modules  # the listing is real
    forbidden = {"sklearn", "lime", "skimage", "tensorflow", "keras", "onnxruntime"}
    assert not modules & forbidden, sorted(modules & forbidden)


def test_oversize_upload_to_the_process_is_413(gateway_server: Any) -> None:
    # Larger than the default 10 MiB: refused from the declared length, before the body is read.
    body = b"\0" * (10 * 1024 * 1024 + 200 * 1024)
    response = httpx.post(
        gateway_server.url + "/v1/predict",
        params={"model": "rf"},
        files={"file": ("big.bin", body, "application/octet-stream")},
        timeout=30.0,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "FILE_TOO_LARGE"
