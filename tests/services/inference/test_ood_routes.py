"""The guard on every inference route that answers a tumour class for an uploaded file, through a real process
(refuse, the default) and an in-process app (flag): compare judges its one image once (refused: one 422 for the
request), predict-batch refuses a non-MRI file as its own entry while an MRI file answers, the Open Inference
Protocol's image input is judged (its FP32 tensor input is not), predict-pixels stays unguarded, and /v1/ood
judges an image alone (the explainer's check).

Its own MLflow server: a registered guard in the session's shared one would refuse other tests' blank images. That
server and the inference processes on it are started once per test session and shared with the gateway's
tests/services/gateway/test_ood_routes.py (``guarded_services``): starting MLflow is most of these tests' time.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from deploy.processes import ManagedProcess, free_port, start_mlflow, start_service
from shared.core.contract import PreprocessingContract
from shared.kit.schemas import PIXELS_SHAPE_HEADER
from tests.conftest import (
    SampleArrays,
    fit_on_sample,
    fit_sample_guard,
    mobilenetv2_weights_path,
    register_onnx_model,
    sklearn_to_onnx,
)

# Two registered models (the same small classifier twice): enough to show one verdict shared by every model.
GUARDED_MODELS = ("rf", "snn")


def photo_like() -> bytes:
    """A bright, textured RGB picture: nothing like a slice on a dark background (the guard refuses it)."""
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:160, 0:160] / 160
    base = np.stack([xx * 200 + 40, yy * 180 + 60, (1 - xx) * 150 + 80], axis=-1)
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def start_guarded_mlflow(folder: Path, sample_arrays: SampleArrays) -> ManagedProcess:
    """An MLflow server holding GUARDED_MODELS and a guard fitted on the sample (its champion)."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from services.training.guard_registration import register_guard_file
    from services.training.ood_guard import guard_onnx
    from services.training.registration import promote_run

    server = start_mlflow(folder / "store", free_port(), folder / "mlflow.log")
    contract = PreprocessingContract(layout="flat", scaling="unit", image_size=32)
    onnx_bytes = sklearn_to_onnx(fit_on_sample(LogisticRegression(max_iter=200), 32, sample_arrays), contract)
    for model in GUARDED_MODELS:
        register_onnx_model(server.url, model, onnx_bytes)
    # Fitted on half the sample, its threshold the highest score of the other half (as tests/.../test_ood.py).
    guard = fit_sample_guard(sample_arrays, mobilenetv2_weights_path())
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server.url)
    try:
        with mlflow.start_run(run_name="guard"):
            promote_run([register_guard_file(guard_onnx(guard), "tests", {})], explicit=True)
    finally:
        mlflow.set_tracking_uri(previous)
    return server


def start_inference(mlflow_url: str, folder: Path, ood_mode: str) -> ManagedProcess:
    env = {
        "MLFLOW_TRACKING_URI": mlflow_url,
        "BT_INFERENCE_TRACKING_URI": mlflow_url,
        "BT_INFERENCE_CACHE_DIR": str(folder / "cache"),
        "BT_INFERENCE_OOD_MODE": ood_mode,
        # A first look at MLflow that times out on a loaded machine must not leave the guard unknown for 30 s.
        "BT_INFERENCE_OOD_REFRESH_S": "2",
    }
    return start_service("inference", free_port(), env, folder / "inference.log")


_GUARDED_SERVICES = pytest.StashKey[dict[str, ManagedProcess]]()


def guarded_services(
    config: pytest.Config, tmp_path_factory: pytest.TempPathFactory, sample_arrays: SampleArrays, *modes: str
) -> dict[str, str]:
    """URLs of the guarded MLflow (``"mlflow"``) and of an inference process per guard mode asked for, each
    started on first use and kept for the test session (stopped at its end, the inference processes first)."""
    services = config.stash.setdefault(_GUARDED_SERVICES, {})
    if "mlflow" not in services:
        services["mlflow"] = start_guarded_mlflow(tmp_path_factory.mktemp("guarded-mlflow"), sample_arrays)
        config.add_cleanup(services["mlflow"].stop)
    for mode in modes:
        if mode not in services:
            folder = tmp_path_factory.mktemp(f"guarded-inference-{mode}")
            services[mode] = start_inference(services["mlflow"].url, folder, mode)
            config.add_cleanup(services[mode].stop)  # cleanups run last-in first-out: before MLflow's
    return {name: server.url for name, server in services.items()}


@pytest.fixture(scope="module")
def guarded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sample_arrays: SampleArrays
) -> dict[str, str]:
    return guarded_services(request.config, tmp_path_factory, sample_arrays, "refuse")


@pytest.fixture
def flagging_client(guarded: dict[str, str], inference_app_client: Callable[..., Any]) -> Any:
    """An in-process inference app in flag mode on the guarded MLflow."""
    return inference_app_client(tracking_uri=guarded["mlflow"], ood_mode="flag")


def _file(data: bytes) -> tuple[str, bytes, str]:
    return ("image.png", data, "application/octet-stream")


def compare(client: Any, data: bytes) -> httpx.Response:
    return client.post("/v1/compare", params=[("models", m) for m in GUARDED_MODELS], files={"file": _file(data)})


def predict_batch(client: Any, files: list[bytes]) -> httpx.Response:
    return client.post("/v1/models/rf/predict-batch", files=[("files", _file(data)) for data in files])


def infer_images(client: Any, files: list[bytes], path: str = "/v2/models/rf/infer") -> httpx.Response:
    """An Open Inference Protocol request with the ``image`` input: the files as base64 BYTES in JSON."""
    encoded = [base64.b64encode(data).decode() for data in files]
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(files)], "data": encoded}]}
    return client.post(path, json=body)


@pytest.fixture(scope="module")
def refusing(guarded: dict[str, str]) -> Iterator[httpx.Client]:
    """A client of the real inference process in refuse mode."""
    with httpx.Client(base_url=guarded["refuse"], timeout=60, trust_env=False) as client:
        yield client


def test_compare_refuses_a_non_mri_image_once_for_the_request(refusing: httpx.Client) -> None:
    response = compare(refusing, photo_like())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "NOT_A_BRAIN_MRI"
    assert "does not look like a brain MRI" in error["message"]
    ood = error["details"]["ood"]
    assert ood["flag"] is True and ood["score"] > ood["threshold"]


def test_compare_answers_an_mri_slice_with_its_one_verdict(refusing: httpx.Client, sample_images: dict) -> None:
    response = compare(refusing, sample_images["glioma"])
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [item["model"] for item in results] == list(GUARDED_MODELS)
    verdicts = [item["result"]["ood"] for item in results]
    assert verdicts[0]["flag"] is False and verdicts[0]["guard_version"] == "1"
    assert all(verdict == verdicts[0] for verdict in verdicts)  # one image, judged once: one verdict


def test_batch_refuses_a_non_mri_file_as_its_own_entry(refusing: httpx.Client, sample_images: dict) -> None:
    response = predict_batch(refusing, [sample_images["glioma"], photo_like(), b"not an image"])
    assert response.status_code == 200, response.text
    first, refused, broken = response.json()["results"]
    assert first["ok"] is True and first["result"]["ood"]["flag"] is False
    assert first["result"]["label"] in sample_images
    assert refused["ok"] is False and refused["result"] is None
    assert refused["error"]["code"] == "NOT_A_BRAIN_MRI" and refused["error"]["status"] == 422
    assert refused["error"]["details"]["ood"]["flag"] is True
    assert broken["error"]["code"] == "INVALID_IMAGE"  # a bad file is still its own 415


def test_oip_refuses_a_non_mri_image_file_naming_the_element(refusing: httpx.Client, sample_images: dict) -> None:
    response = infer_images(refusing, [sample_images["glioma"], photo_like()])
    assert response.status_code == 422, response.text
    message = response.json()["error"]  # the protocol's body: one message
    assert message.startswith("Input 'image' element 1: This image does not look like a brain MRI slice")


def test_oip_answers_an_mri_image_file_with_its_verdict(refusing: httpx.Client, sample_images: dict) -> None:
    response = infer_images(refusing, [sample_images["glioma"], sample_images["pituitary"]])
    assert response.status_code == 200, response.text
    parameters = response.json()["parameters"]
    assert parameters["ood_flag"] == "false,false"
    scores = [float(score) for score in parameters["ood_score"].split(",")]
    assert len(scores) == 2 and max(scores) <= parameters["ood_threshold"]
    assert parameters["ood_guard_version"] == "1"


def test_predict_pixels_is_not_judged(refusing: httpx.Client) -> None:
    """The explainer's perturbations of an already judged scan: a photo's pixels are classified, not refused."""
    pixels = np.asarray(Image.open(io.BytesIO(photo_like())).convert("L").resize((32, 32)), dtype=np.uint8)
    response = refusing.post(
        "/v1/models/rf/predict-pixels", content=pixels.tobytes(), headers={PIXELS_SHAPE_HEADER: "1,32,32"}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["probabilities"]) == 1


def test_flag_mode_answers_compare_batch_and_oip_with_the_flag(flagging_client: Any, sample_images: dict) -> None:
    compared = compare(flagging_client, photo_like())
    assert compared.status_code == 200, compared.text
    assert [item["result"]["ood"]["flag"] for item in compared.json()["results"]] == [True, True]

    batch = predict_batch(flagging_client, [photo_like(), sample_images["meningioma"]])
    assert batch.status_code == 200, batch.text
    assert [item["result"]["ood"]["flag"] for item in batch.json()["results"]] == [True, False]

    inferred = infer_images(flagging_client, [photo_like(), sample_images["meningioma"]])
    assert inferred.status_code == 200, inferred.text
    assert inferred.json()["parameters"]["ood_flag"] == "true,false"
    assert len(inferred.json()["outputs"][0]["data"]) == 2 * 4  # both files answered


def test_oip_tensor_input_carries_no_verdict(flagging_client: Any) -> None:
    tensor = flagging_client.get("/v2/models/rf").json()["inputs"][0]  # the model's FP32 input, flat here
    assert tensor["datatype"] == "FP32" and tensor["shape"] == [-1, 32 * 32]
    body = {"inputs": [{"name": tensor["name"], "datatype": "FP32", "shape": [1, 32 * 32], "data": [0.5] * 1024}]}
    response = flagging_client.post("/v2/models/rf/infer", json=body)
    assert response.status_code == 200, response.text
    # No guard verdict for a tensor; its referral stands on the model's set alone (none: registered before sets).
    assert response.json()["parameters"] == {"referral": "false"}


def test_ood_route_judges_without_a_model(refusing: httpx.Client, sample_images: dict) -> None:
    """POST /v1/ood (what the explainer asks first): the same refusal as predict for a photo, the verdict for a
    slice; no model named, none run."""
    refused = refusing.post("/v1/ood", files={"file": _file(photo_like())})
    predicted = refusing.post("/v1/models/rf/predict", files={"file": _file(photo_like())})
    assert refused.status_code == predicted.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "NOT_A_BRAIN_MRI"
    assert refused.json()["error"]["details"] == predicted.json()["error"]["details"]
    answered = refusing.post("/v1/ood", files={"file": _file(sample_images["glioma"])})
    assert answered.status_code == 200, answered.text
    assert answered.json()["mode"] == "refuse"
    assert answered.json()["ood"]["flag"] is False and answered.json()["ood"]["guard_version"] == "1"
    assert refusing.post("/v1/ood", files={"file": _file(b"not an image")}).status_code == 415


def test_ood_route_flags_in_flag_mode(flagging_client: Any) -> None:
    response = flagging_client.post("/v1/ood", files={"file": _file(photo_like())})
    assert response.status_code == 200, response.text
    assert response.json()["mode"] == "flag" and response.json()["ood"]["flag"] is True


def test_ood_route_decodes_even_with_the_guard_off(guarded: dict[str, str], inference_app_client: Callable) -> None:
    """Off: no verdict, but a file that is not an image is still its 415 (as a prediction would answer)."""
    client = inference_app_client(tracking_uri=guarded["mlflow"], ood_mode="off")
    assert client.post("/v1/ood", files={"file": _file(b"not an image")}).status_code == 415
    answered = client.post("/v1/ood", files={"file": _file(photo_like())})
    assert answered.status_code == 200 and answered.json() == {"mode": "off", "ood": None}


def test_openapi_declares_not_a_brain_mri(refusing: httpx.Client) -> None:
    paths = refusing.get("/openapi.json").json()["paths"]
    assert "NOT_A_BRAIN_MRI" in paths["/v1/compare"]["post"]["responses"]["422"]["description"]
    assert "NOT_A_BRAIN_MRI" in paths["/v1/models/{model}/predict"]["post"]["responses"]["422"]["description"]
    assert "NOT_A_BRAIN_MRI" in paths["/v2/models/{model}/infer"]["post"]["responses"]["422"]["description"]
    assert "NOT_A_BRAIN_MRI" in paths["/v1/ood"]["post"]["responses"]["422"]["description"]
