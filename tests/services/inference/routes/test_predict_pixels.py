"""GET /v1/models/{model}/contract and POST /v1/models/{model}/predict-pixels, in process, against the real zoo."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from shared.core.contract import CLASS_NAMES, PreprocessingContract
from shared.core.imaging import decode_to_array, to_model_input
from shared.kit.schemas import ContractOut, PixelsPredictionOut
from tests.error_body import error_body


def _send(client: Any, model: str, pixels: np.ndarray, shape: str | None = None, **params: str) -> Any:
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    header = shape if shape is not None else ",".join(str(n) for n in pixels.shape)
    return client.post(
        f"/v1/models/{model}/predict-pixels",
        params=params,
        content=pixels.tobytes(),
        headers={"content-type": "application/octet-stream", "x-pixels-shape": header},
    )


def _estimator_probabilities(zoo: Any, model: str, version: str, pixels: np.ndarray) -> np.ndarray:
    trained = zoo.version(model, version)
    flat = PreprocessingContract(layout="flat", scaling="unit", image_size=trained.contract.image_size)
    return np.asarray(trained.estimator.predict_proba(to_model_input(pixels, flat)))


@pytest.mark.parametrize(("model", "version", "size"), [("rf", "1", 32), ("cnn", "2", 32), ("mobilenetv2", "1", 24)])
def test_contract_names_the_resolved_version_and_its_size(
    inference_client: Any, model: str, version: str, size: int
) -> None:
    response = inference_client.get(f"/v1/models/{model}/contract")
    assert response.status_code == 200, response.text
    answer = ContractOut.model_validate(response.json())
    assert (answer.model, answer.version) == (model, version)  # rf: champion -> 1; cnn: latest -> 2
    assert answer.contract.image_size == size
    assert answer.contract.class_names == CLASS_NAMES


def test_contract_of_an_alias_and_of_unknown_names(inference_client: Any) -> None:
    assert inference_client.get("/v1/models/rf/contract", params={"version": "latest"}).json()["version"] == "2"
    error = error_body(inference_client.get("/v1/models/vgg16/contract"), 404, "MODEL_NOT_FOUND")
    assert "rf, snn, cnn, mobilenetv2" in error["message"]
    error_body(inference_client.get("/v1/models/cnn/contract", params={"version": "9"}), 404, "VERSION_NOT_FOUND")


@pytest.mark.parametrize("model", ["rf", "snn", "cnn", "mobilenetv2"])
def test_batch_matches_the_estimator_for_every_family(
    inference_client: Any, model_zoo: Any, sample_arrays: Any, model: str
) -> None:
    version = model_zoo.default_version(model)
    size = model_zoo.version(model, version).contract.image_size
    pixels, _ = sample_arrays(size)
    batch = pixels[:37]
    started = time.perf_counter()
    response = _send(inference_client, model, batch)
    wall_ms = (time.perf_counter() - started) * 1000.0
    assert response.status_code == 200, response.text
    answer = PixelsPredictionOut.model_validate(response.json())
    assert (answer.model, answer.version) == (model, version)
    assert answer.class_names == list(CLASS_NAMES)
    got = np.array(answer.probabilities)
    assert got.shape == (37, len(CLASS_NAMES))
    np.testing.assert_allclose(got, _estimator_probabilities(model_zoo, model, version, batch), atol=1e-5)
    assert 0 < answer.latency_ms <= wall_ms  # the model's share of the round trip, in milliseconds


def test_batch_agrees_with_predict_on_the_same_image(inference_client: Any, sample_images: dict[str, bytes]) -> None:
    image = sample_images["glioma"]
    single = inference_client.post("/v1/models/cnn/predict", files={"file": ("scan.jpg", image, "image/jpeg")})
    pixels = decode_to_array(image, 32)[np.newaxis]
    batch = _send(inference_client, "cnn", pixels).json()
    expected = [single.json()["probabilities"][name] for name in CLASS_NAMES]
    np.testing.assert_allclose(batch["probabilities"][0], expected, atol=1e-6)


def test_version_is_honoured(inference_client: Any, model_zoo: Any, sample_arrays: Any) -> None:
    pixels, _ = sample_arrays(32)
    response = _send(inference_client, "cnn", pixels[:5], version="1")
    assert response.json()["version"] == "1"
    np.testing.assert_allclose(
        response.json()["probabilities"], _estimator_probabilities(model_zoo, "cnn", "1", pixels[:5]), atol=1e-5
    )


def test_large_batch_is_split_into_bounded_runs(inference_app_client: Any, model_zoo: Any, sample_arrays: Any) -> None:
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri, pixel_run_batch=7)
    pixels, _ = sample_arrays(32)
    batch = np.concatenate([pixels, pixels[::-1]])[:200]
    answer = _send(client, "snn", batch).json()
    np.testing.assert_allclose(
        answer["probabilities"], _estimator_probabilities(model_zoo, "snn", "1", batch), atol=1e-5
    )


def test_wrong_image_size_is_422_naming_the_contract_size(inference_client: Any) -> None:
    error = error_body(_send(inference_client, "mobilenetv2", np.zeros((3, 32, 32))), 422, "INVALID_REQUEST")
    assert "24x24" in error["message"] and "32x32" in error["message"]
    assert error["details"] == {"image_size": 24}


@pytest.mark.parametrize(
    ("shape", "problem"),
    [
        ("4,32,32", "needs exactly 4096"),  # body holds 2 images, header says 4
        ("1,32,32", "needs exactly 1024"),  # body holds more than declared
        ("0,32,32", "1 <= N"),
        ("2,0,32", "H, W >= 1"),
    ],
)
def test_shape_and_body_must_agree(inference_client: Any, shape: str, problem: str) -> None:
    error = error_body(_send(inference_client, "rf", np.zeros((2, 32, 32)), shape=shape), 422, "INVALID_REQUEST")
    assert problem in error["message"]


@pytest.mark.parametrize("shape", ["", "2x32x32", "2,32", "-2,32,32", "a,b,c", "2,32,32,1"])
def test_malformed_shape_header_is_422(inference_client: Any, shape: str) -> None:
    error = error_body(_send(inference_client, "rf", np.zeros((2, 32, 32)), shape=shape), 422, "INVALID_REQUEST")
    assert "x-pixels-shape" in error["message"]


def test_missing_shape_header_is_422(inference_client: Any) -> None:
    response = inference_client.post("/v1/models/rf/predict-pixels", content=b"\0" * 2048)
    error = error_body(response, 422, "INVALID_REQUEST")
    assert "x-pixels-shape" in error["message"]


def test_batch_bounds_come_from_the_settings(inference_app_client: Any, model_zoo: Any) -> None:
    client = inference_app_client(
        tracking_uri=model_zoo.tracking_uri, max_pixel_batch_images=8, max_pixel_batch_bytes=6 * 32 * 32
    )
    error = error_body(_send(client, "rf", np.zeros((9, 32, 32))), 422, "INVALID_REQUEST")
    assert "N <= 8" in error["message"]
    error = error_body(_send(client, "rf", np.zeros((7, 32, 32))), 413, "FILE_TOO_LARGE")
    assert "send fewer images" in error["message"] and error["details"] == {"max_bytes": 6 * 32 * 32}
    assert _send(client, "rf", np.zeros((6, 32, 32))).status_code == 200


def test_body_over_the_byte_limit_is_413_even_with_a_small_header(inference_app_client: Any, model_zoo: Any) -> None:
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri, max_pixel_batch_bytes=4096)
    response = client.post(
        "/v1/models/rf/predict-pixels",
        content=b"\0" * 50_000,
        headers={"content-type": "application/octet-stream", "x-pixels-shape": "1,32,32"},
    )
    error_body(response, 413, "FILE_TOO_LARGE")


def test_pixel_batches_are_not_held_to_the_image_upload_limit(
    inference_app_client: Any, model_zoo: Any, sample_arrays: Any
) -> None:
    # 100 images of 32x32 are 100 KiB: far over a 1 KiB file limit, well within the batch limit.
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri, max_upload_bytes=1024)
    pixels, _ = sample_arrays(32)
    assert _send(client, "rf", pixels[:100]).status_code == 200
    oversize = client.post("/v1/models/rf/predict", files={"file": ("a.jpg", b"\0" * 200_000, "image/jpeg")})
    error_body(oversize, 413, "FILE_TOO_LARGE")


def test_unknown_model_is_404(inference_client: Any) -> None:
    error = error_body(_send(inference_client, "vgg16", np.zeros((1, 32, 32))), 404, "MODEL_NOT_FOUND")
    assert "Available models" in error["message"]


def test_openapi_documents_the_batch_routes(inference_client: Any) -> None:
    paths = inference_client.get("/openapi.json").json()["paths"]
    batch = paths["/v1/models/{model}/predict-pixels"]["post"]
    assert "x-pixels-shape" in batch["description"]
    assert {"404", "413", "422"} <= set(batch["responses"])
    assert "/v1/models/{model}/contract" in paths
